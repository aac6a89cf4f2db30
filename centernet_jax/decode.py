"""CenterNet decoding (official `models/decode.py`, `detectors/ctdet.py`; PARITY 4.5).

The caller applies the sigmoid (plain, unclamped at test time); these functions
take probabilities. Boxes come out in output-map coordinates; map them back to
the image with `boxes.transform_preds` on the host.
"""

import jax
import jax.numpy as jnp

from centernet_jax.losses import gather_feat


def peaks(heat: jax.Array, kernel: int = 3) -> jax.Array:
  """Keeps local maxima of a heatmap (official `_nms`).

  hmax = max_pool(heat, kernel, stride 1, 'same' padding with -inf); every pixel
  equal to its hmax is kept, so ties (plateaus) all survive.

  Args:
    heat: [B, h, w, C] probabilities.
    kernel: odd pooling window (official 3).

  Returns:
    [B, h, w, C] heat with non-maxima set to 0.
  """
  pad = (kernel - 1) // 2
  hmax = jax.lax.reduce_window(
      heat, jnp.array(-jnp.inf, heat.dtype), jax.lax.max,
      window_dimensions=(1, kernel, kernel, 1), window_strides=(1, 1, 1, 1),
      padding=((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jnp.where(hmax == heat, heat, jnp.zeros_like(heat))


def topk(scores: jax.Array, K: int) -> tuple[jax.Array, ...]:
  """Top-K over all classes and positions.

  The official per-class top-K followed by a top-K over C * K gives the same set
  as one global top-K over h * w * C (up to the order of tied scores).

  Args:
    scores: [B, h, w, C].
    K: number of detections, at most h * w * C.

  Returns:
    scores [B, K] (descending), inds [B, K] int32 (y * w + x),
    classes [B, K] int32, ys [B, K] float32, xs [B, K] float32 (integer pixels).
  """
  b, h, w, c = scores.shape
  if K > h * w * c:
    raise ValueError(f'K={K} exceeds the number of heatmap entries h*w*C={h * w * c}.')
  top_scores, flat = jax.lax.top_k(scores.reshape(b, h * w * c), K)
  flat = flat.astype(jnp.int32)
  inds = flat // c
  classes = flat % c
  ys = (inds // w).astype(jnp.float32)
  xs = (inds % w).astype(jnp.float32)
  return top_scores, inds, classes, ys, xs


def ctdet_decode(
    hm_prob: jax.Array,
    wh: jax.Array,
    reg: jax.Array | None = None,
    K: int = 100,
) -> dict[str, jax.Array]:
  """Decodes CenterNet outputs into the top-K boxes (official `ctdet_decode`).

  Centre = peak pixel + reg (+0.5 without a reg head); box = centre -+ wh / 2.

  Args:
    hm_prob: [B, h, w, C] heatmap probabilities (sigmoid already applied).
    wh: [B, h, w, 2] sizes (w, h) in output pixels.
    reg: [B, h, w, 2] sub-pixel offsets (x, y), or None.
    K: detections per image (official 100).

  Returns:
    dict with boxes [B, K, 4] float32 xyxy in output coordinates,
    scores [B, K] float32, classes [B, K] int32.
  """
  scores, inds, classes, ys, xs = topk(peaks(hm_prob), K)
  if reg is not None:
    off = gather_feat(reg, inds).astype(jnp.float32)
    xs = xs + off[..., 0]
    ys = ys + off[..., 1]
  else:
    xs = xs + 0.5
    ys = ys + 0.5
  size = gather_feat(wh, inds).astype(jnp.float32)
  half_w = size[..., 0] / 2
  half_h = size[..., 1] / 2
  boxes = jnp.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=-1)
  return {'boxes': boxes, 'scores': scores.astype(jnp.float32), 'classes': classes}


def flip_lr(x: jax.Array) -> jax.Array:
  """Mirrors NHWC maps left-right (official `flip_tensor`)."""
  return jnp.flip(x, axis=2)


def merge_flip(
    hm_prob: jax.Array,
    wh: jax.Array,
    reg: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Merges the outputs of a flip-test batch [x; flip_lr(x)] of size 2B.

  Official `--flip_test`: hm = (hm0 + flip(hm1)) / 2 on probabilities (sigmoid
  before averaging), wh = (wh0 + flip(wh1)) / 2, reg from the unflipped pass.

  Args:
    hm_prob: [2B, h, w, C] probabilities; rows B: are the mirrored images.
    wh: [2B, h, w, 2].
    reg: [2B, h, w, 2] or None.

  Returns:
    (hm_prob [B, h, w, C], wh [B, h, w, 2], reg [B, h, w, 2] or None).
  """
  n = hm_prob.shape[0]
  if n % 2:
    raise ValueError(f'flip batch must have an even size, got {n}.')
  b = n // 2
  hm = (hm_prob[:b] + flip_lr(hm_prob[b:])) / 2
  wh = (wh[:b] + flip_lr(wh[b:])) / 2
  return hm, wh, None if reg is None else reg[:b]

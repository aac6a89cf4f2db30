"""Decoding primitives shared by the keypoint tasks: peaks, top-K, gather, flips.

Official CenterNet `models/decode.py` (`_nms`, `_topk`, `flip_tensor`; docs/parity.md 4.5) and
CornerNet `kp_utils.py: _decode` (docs/parity.md 4.9). The task modules decode their heads with
these (`tasks/ctdet.py: ctdet_decode`, `tasks/cornernet.py: corner_decode`); soft-NMS is in
`nms.py`.

The caller applies the sigmoid (plain, unclamped at test time); these functions
take probabilities.
"""

import jax
import jax.numpy as jnp

from centernet_jax.losses import gather_feat

__all__ = ['flip_lr', 'gather_feat', 'peaks', 'topk']


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


def flip_lr(x: jax.Array) -> jax.Array:
  """Mirrors NHWC maps left-right (official `flip_tensor`)."""
  return jnp.flip(x, axis=2)

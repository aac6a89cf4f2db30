"""TensorFlow ops for CenterNet pre-processing, run inside ``tf.data`` (docs/parity.md 4.3 and 4.5).

Training (official ``datasets/sample/ctdet.py``): random scale and centre (or the gaussian
``not_rand_crop`` variant), horizontal flip before the warp, ONE bilinear affine warp onto the
square input canvas (zero border, as ``cv2.warpAffine``), colour jitter + PCA lighting on
[0, 1] floats, channel order, mean/std. Boxes go through the same affine and stay in input
pixels, unclipped: the on-device target code divides by ``down_ratio`` and clips. Person
keypoints (official ``datasets/sample/multi_pose.py``) follow the boxes: mirrored as
``x -> W - 1 - x`` with the left / right joints swapped, then the same affine.

Evaluation (official ``detectors/base_detector.py``): ``keep_res`` centre-pads to
``(H | pad) + 1`` x ``(W | pad) + 1`` with ``c = (W // 2, H // 2)``, ``s = (inp_w, inp_h)``;
``fixed_res`` warps with ``c`` = image centre, ``s = max(H, W)`` onto ``size`` x ``size``.

All randomness is stateless (``tf.random.stateless_*``) and derived from one ``[2]`` int64 seed
per element, so a stream is reproducible whatever the parallelism.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from centernet_jax.data import import_tf
from centernet_jax.keypoints import flip_permutation

tf = import_tf()

# PCA lighting statistics of COCO, BGR channel order (official datasets/dataset/coco.py).
EIGVAL = np.array([0.2141788, 0.01817699, 0.00341571], np.float32)
EIGVEC = np.array([[-0.58752847, -0.69563484, 0.41340352],
                   [-0.5832747, 0.00994535, -0.81221408],
                   [-0.56089297, 0.71832671, 0.41158938]], np.float32)
GRAY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # cv2.COLOR_BGR2GRAY weights
COLOR_VAR = 0.4  # official brightness/contrast/saturation range: alpha = 1 + U(-0.4, 0.4)
LIGHTING_STD = 0.1  # official PCA lighting alpha std
BORDER = 128  # official _get_border(128, size)


# --- Affine maths ----------------------------------------------------------------------------


def get_affine_transform(center, scale, output_size, inv: bool = False):
  """tf twin of ``centernet_jax.boxes.get_affine_transform`` (rot = 0, shift = 0).

  For rot = 0 the official three-point construction is a uniform zoom ``k = out_w / scale[0]``
  about the centre: ``x' = k (x - cx) + out_w / 2`` and ``y' = k (y - cy) + out_h / 2``.

  Args:
    center: [2] (x, y) crop centre in source pixels.
    scale: scalar or [2] (w, h) crop size in source pixels; only ``scale[0]`` sets the zoom.
    output_size: (w, h) of the destination canvas (ints or scalar tensors).
    inv: return the destination -> source map instead.

  Returns:
    [2, 3] float32 affine matrix.
  """
  center = tf.cast(center, tf.float32)
  src_w = tf.reshape(tf.cast(scale, tf.float32), [-1])[0]
  out_w = tf.cast(output_size[0], tf.float32)
  out_h = tf.cast(output_size[1], tf.float32)
  k = out_w / src_w
  zero = tf.zeros([], tf.float32)
  if inv:
    ik = 1.0 / k
    return tf.stack([tf.stack([ik, zero, center[0] - out_w * 0.5 * ik]),
                     tf.stack([zero, ik, center[1] - out_h * 0.5 * ik])])
  return tf.stack([tf.stack([k, zero, out_w * 0.5 - k * center[0]]),
                   tf.stack([zero, k, out_h * 0.5 - k * center[1]])])


def compose_affine(outer, inner):
  """[2, 3] matrix of ``outer(inner(p))``."""
  a = tf.matmul(outer[:, :2], inner[:, :2])
  t = tf.linalg.matvec(outer[:, :2], inner[:, 2]) + outer[:, 2]
  return tf.concat([a, t[:, None]], axis=1)


def invert_affine(trans):
  """Inverse of an invertible [2, 3] affine matrix."""
  a = tf.linalg.inv(trans[:, :2])
  return tf.concat([a, -tf.linalg.matvec(a, trans[:, 2])[:, None]], axis=1)


def hflip_affine(width):
  """[2, 3] matrix of the horizontal mirror x -> W - 1 - x (official ``img[:, ::-1]``)."""
  w = tf.cast(width, tf.float32)
  return tf.stack([tf.stack([-1.0, 0.0, w - 1.0]), tf.constant([0.0, 1.0, 0.0])])


def warp_affine(image, trans, out_hw):
  """Bilinear warp with zero border, ``dst(p) = src(trans^-1 p)`` (``cv2.warpAffine`` maths).

  Pixel centres sit at integer coordinates in both images (cv2 and tf agree on this).

  Args:
    image: [H, W, C] float32.
    trans: [2, 3] source -> destination affine.
    out_hw: (h, w) of the output.

  Returns:
    [h, w, C] float32.
  """
  inv = tf.reshape(invert_affine(tf.cast(trans, tf.float32)), [6])
  transform = tf.concat([inv, tf.zeros([2], tf.float32)], axis=0)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.cast(out_hw, tf.int32),
      fill_value=0.0, interpolation='BILINEAR', fill_mode='CONSTANT')
  return out[0]


def warp_axis_aligned(image, trans, out_hw):
  """``warp_affine`` for an axis-aligned affine (rot = 0, mirror allowed): fast path.

  The same bilinear, zero-border maths as :func:`warp_affine` for a ``trans`` whose
  off-diagonal terms are zero (every training affine: zoom, shift and the optional mirror), but
  computed with ``tf.image.crop_and_resize``, which precomputes the per-row and per-column
  interpolation weights (about 3x faster than ``ImageProjectiveTransformV3`` on one core) and
  reads integer images directly (no float copy of the source). The image gets a one-pixel zero
  frame so that samples within one pixel outside the image blend with zero as in
  ``cv2.warpAffine``; samples further out are zero (``extrapolation_value``). Results agree
  with :func:`warp_affine` to float32 rounding (about 1e-4 on a 0-255 scale).

  Args:
    image: [H, W, C] any real dtype (uint8 in training).
    trans: [2, 3] source -> destination affine with ``trans[0, 1] == trans[1, 0] == 0``.
    out_hw: (h, w) of the output, Python ints.

  Returns:
    [h, w, C] float32.
  """
  inv = invert_affine(tf.cast(trans, tf.float32))
  padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
  # crop_and_resize samples row y at y1 * (Hp - 1) + y * (y2 - y1) * (Hp - 1) / (h - 1) in the
  # padded image, where the source row inv_11 * y + inv_12 sits at +1.
  hp1 = tf.cast(tf.shape(padded)[0] - 1, tf.float32)
  wp1 = tf.cast(tf.shape(padded)[1] - 1, tf.float32)
  h, w = out_hw
  y1 = (inv[1, 2] + 1.0) / hp1
  y2 = (inv[1, 1] * (h - 1) + inv[1, 2] + 1.0) / hp1
  x1 = (inv[0, 2] + 1.0) / wp1
  x2 = (inv[0, 0] * (w - 1) + inv[0, 2] + 1.0) / wp1
  box = tf.stack([y1, x1, y2, x2])[None]
  out = tf.image.crop_and_resize(padded[None], box, tf.zeros([1], tf.int32), [h, w],
                                 method='bilinear', extrapolation_value=0.0)
  return out[0]


def affine_boxes(boxes, trans):
  """Maps xyxy boxes [N, 4] through a [2, 3] affine (corners, then min/max) -> [N, 4]."""
  pts = tf.reshape(boxes, [-1, 2, 2])
  pts = tf.einsum('nkj,ij->nki', pts, trans[:, :2]) + trans[:, 2]
  return tf.concat([tf.reduce_min(pts, axis=1), tf.reduce_max(pts, axis=1)], axis=1)


def hflip_boxes(boxes, width):
  """Official box flip: x1, x2 = W - x2 - 1, W - x1 - 1."""
  w = tf.cast(width, tf.float32)
  return tf.stack([w - boxes[:, 2] - 1, boxes[:, 1], w - boxes[:, 0] - 1, boxes[:, 3]], axis=1)


def affine_keypoints(keypoints, trans):
  """Maps keypoints [N, J, 3] (x, y, v) through a [2, 3] affine; v is kept -> [N, J, 3]."""
  xy = tf.einsum('njk,ik->nji', keypoints[..., :2], trans[:, :2]) + trans[:, 2]
  return tf.concat([xy, keypoints[..., 2:]], axis=-1)


def hflip_keypoints(keypoints, width, flip_pairs: Sequence[Sequence[int]]):
  """Official keypoint flip: ``x -> W - 1 - x``, then the joints of each pair swapped.

  Args:
    keypoints: [N, J, 3] float32 (x, y, v) with a static J.
    width: image width.
    flip_pairs: 0-based (left, right) joint pairs.

  Returns:
    [N, J, 3] float32: joint ``a`` of a pair holds what joint ``b`` held, mirrored.
  """
  w = tf.cast(width, tf.float32)
  mirrored = tf.concat([w - 1 - keypoints[..., :1], keypoints[..., 1:]], axis=-1)
  return tf.gather(mirrored, flip_permutation(keypoints.shape[1], flip_pairs), axis=1)


# --- EXIF orientation --------------------------------------------------------------------------


def exif_orient(image, orientation):
  """Applies an EXIF orientation (tag 274) to decoded pixels, as viewers and PIL's
  ``ImageOps.exif_transpose`` do: the pixels then show what the annotation tool showed.

  Args:
    image: [H, W, C] any dtype, the pixels as stored.
    orientation: [] int, 1 (as stored) .. 8; other values leave the image as stored.

  Returns:
    [H', W', C]: 2 mirrored, 3 rotated 180 degrees, 4 flipped upside down, 5 transposed,
    6 rotated 90 degrees clockwise, 7 transposed across the other diagonal, 8 rotated 90
    degrees counter-clockwise (5 to 8 swap H and W).
  """
  def transpose():
    return tf.transpose(image, [1, 0, 2])

  branches = [
      lambda: image,  # 0: not an orientation
      lambda: image,  # 1: as stored
      lambda: image[:, ::-1],  # 2: mirrored
      lambda: image[::-1, ::-1],  # 3: rotated 180
      lambda: image[::-1],  # 4: flipped upside down
      transpose,  # 5: PIL TRANSPOSE
      lambda: transpose()[:, ::-1],  # 6: PIL ROTATE_270 (90 clockwise)
      lambda: transpose()[::-1, ::-1],  # 7: PIL TRANSVERSE
      lambda: transpose()[::-1],  # 8: PIL ROTATE_90 (90 counter-clockwise)
  ]
  o = tf.cast(orientation, tf.int32)
  o = tf.where((o >= 1) & (o <= 8), o, 1)
  out = tf.switch_case(o, branches)
  out.set_shape([None, None, image.shape[-1]])
  return out


# --- Training ----------------------------------------------------------------------------------


def get_border(size, border: int = BORDER):
  """Official ``_get_border``: halve ``border`` until ``size - b > b``; [] int32."""
  cands = [border >> k for k in range(border.bit_length())] + [0]
  cands = tf.constant(cands, tf.int32)
  ok = tf.cast(size, tf.int32) > 2 * cands
  return tf.gather(cands, tf.argmax(tf.cast(ok, tf.int32)))


def random_crop(seed, height, width, *, scale_choices: Sequence[float], rand_crop: bool,
                shift: float, scale: float, crop_base: int = 0):
  """Random crop centre and size (official ctdet training).

  Args:
    seed: [2] int64 stateless seed.
    height, width: scalar int tensors, image size.
    scale_choices: official ``np.arange(0.6, 1.4, 0.1)``; used when ``rand_crop``.
    rand_crop: True: ``s = max(H, W) * choice``, centre ~ randint(border, size - border);
      False: gaussian ``c += s * clip(N * shift, +-2 shift)``, ``s *= clip(N * scale + 1)``.
    shift, scale: the ``not_rand_crop`` parameters.
    crop_base: 0: the crop side is ``max(H, W) * choice`` (official CenterNet); > 0: it is
      ``crop_base * choice`` whatever the image size (official CornerNet ``random_crop``, which
      cuts a 511 * scale square).

  Returns:
    center [2] float32, s [] float32.
  """
  h = tf.cast(height, tf.int32)
  w = tf.cast(width, tf.int32)
  s = tf.cast(tf.maximum(h, w), tf.float32)
  if crop_base > 0:
    s = tf.constant(float(crop_base), tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  if rand_crop:
    choices = tf.constant(np.asarray(scale_choices, np.float32))
    i = tf.random.stateless_uniform([], seeds[0], 0, tf.shape(choices)[0], dtype=tf.int32)
    s = s * choices[i]
    bw, bh = get_border(w), get_border(h)
    cx = tf.random.stateless_uniform([], seeds[1], bw, w - bw, dtype=tf.int32)
    cy = tf.random.stateless_uniform([], seeds[2], bh, h - bh, dtype=tf.int32)
    return tf.cast(tf.stack([cx, cy]), tf.float32), s
  n = tf.random.stateless_normal([3], seeds[0])
  center = tf.cast(tf.stack([w, h]), tf.float32) / 2.0
  center += s * tf.clip_by_value(n[:2] * shift, -2 * shift, 2 * shift)
  s = s * tf.clip_by_value(n[2] * scale + 1, 1 - scale, 1 + scale)
  return center, s


def color_augment(image, seed, bgr: bool = True):
  """Official ``color_aug``: brightness, contrast, saturation in random order, then PCA lighting.

  Each jitter uses ``alpha = 1 + U(-0.4, 0.4)``; contrast blends with the mean of the grayscale
  image, saturation with the grayscale image (both computed once, before the jitters, as in
  the official code). No clipping (official).

  Args:
    image: [H, W, 3] float32 in [0, 1], channels BGR if ``bgr`` else RGB.
    seed: [2] int64 stateless seed.
    bgr: channel order of ``image``; the grayscale weights and the lighting vector follow it.

  Returns:
    [H, W, 3] float32.
  """
  gray_w = GRAY_BGR if bgr else GRAY_BGR[::-1]
  gs = tf.tensordot(image, tf.constant(gray_w), axes=[[2], [0]])[..., None]
  gs_mean = tf.reduce_mean(gs)
  # Each jitter is image <- a * image + (1 - a) * ref with ref = 0 (brightness), gs_mean
  # (contrast) or gs (saturation); written branch-free.
  for a, w_mean, w_gray in _color_jitters(seed):
    image = a * image + w_mean * gs_mean + w_gray * gs
  return image + _lighting_delta(seed, bgr)


def _color_jitters(seed):
  """The three jitters of ``color_augment`` in their random order: [(a, w_mean, w_gray)] x 3."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  alphas = 1.0 + tf.random.stateless_uniform([3], seeds[0], -COLOR_VAR, COLOR_VAR)
  order = tf.argsort(tf.random.stateless_uniform([3], seeds[1]))
  out = []
  for p in range(3):
    j = order[p]
    a = tf.gather(alphas, j)
    out.append((a, tf.where(tf.equal(j, 1), 1.0 - a, 0.0), tf.where(tf.equal(j, 2), 1.0 - a, 0.0)))
  return out


def _lighting_delta(seed, bgr: bool):
  """PCA lighting offset [3] of ``color_augment`` (in the image's channel order)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  alpha = tf.random.stateless_normal([3], seeds[2]) * LIGHTING_STD
  delta = tf.linalg.matvec(tf.constant(EIGVEC), tf.constant(EIGVAL) * alpha)
  return delta if bgr else delta[::-1]


def color_normalize_affine(pixel_mean, seed, *, color_aug: bool, channel_order: str,
                           mean: Sequence[float], std: Sequence[float]):
  """The per-pixel map ``x -> x @ m + b`` equal to the training colour chain.

  For ``x`` an RGB pixel on the 0-255 scale, ``normalize(color_augment(to_channel_order(x /
  255)))`` is affine in ``x``: channel order and ``/ 255`` are a scaled permutation, each jitter
  is ``a * y + w_mean * gs_mean + w_gray * gs`` with ``gs = y . gray_w`` linear in ``y`` and
  ``gs_mean`` a per-image constant, the lighting is a constant offset and mean/std are a
  diagonal affine. Composing the three jitters gives ``P * y + G * gs + Q * gs_mean`` with
  ``P = a3 a2 a1``, ``G = a3 (a2 wg1 + wg2) + wg3``, ``Q = a3 (a2 wm1 + wm2) + wm3``, hence
  ``m[j, c] = (P [j == c] + G gray_w[j]) / std[c]`` over model channels (rows permuted back to
  RGB, divided by 255) and ``b[c] = (Q gs_mean + delta[c] - mean[c]) / std[c]``. The random
  draws are those of :func:`color_augment` with the same seed.

  Args:
    pixel_mean: [3] float32 mean RGB value (0-255) of the image the map is applied to (only
      read when ``color_aug``: contrast blends with the mean gray level).
    seed: [2] int64 stateless seed (the one ``color_augment`` would get).
    color_aug: apply the jitters and lighting (else channel order and mean/std only).
    channel_order: 'BGR' or 'RGB' (of the model input).
    mean, std: normalisation statistics in the model's channel order.

  Returns:
    m [3, 3] float32 (rows: RGB input channels, columns: model channels), b [3] float32.
  """
  if channel_order not in ('BGR', 'RGB'):
    raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
  bgr = channel_order == 'BGR'
  inv_std = 1.0 / tf.constant(std, tf.float32)
  shift = -tf.constant(mean, tf.float32)
  if color_aug:
    gray_w = tf.constant(GRAY_BGR if bgr else GRAY_BGR[::-1])
    y_mean = to_channel_order(tf.cast(pixel_mean, tf.float32), channel_order) / 255.0
    gs_mean = tf.reduce_sum(y_mean * gray_w)
    p, g, q = tf.ones([]), tf.zeros([]), tf.zeros([])
    for a, w_mean, w_gray in _color_jitters(seed):
      p, g, q = a * p, a * g + w_gray, a * q + w_mean
    shift = shift + q * gs_mean + _lighting_delta(seed, bgr)
    m = p * tf.eye(3) + g * gray_w[:, None]
  else:
    m = tf.eye(3)
  m = m * inv_std[None, :] / 255.0
  if bgr:
    m = m[::-1]
  return m, shift * inv_std


def normalize(image, mean: Sequence[float], std: Sequence[float]):
  """(image - mean) / std over the last axis (statistics in the image's channel order)."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def to_channel_order(image, channel_order: str):
  """RGB [..., 3] -> 'BGR' (reversed) or 'RGB' (unchanged)."""
  if channel_order not in ('BGR', 'RGB'):
    raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
  return image[..., ::-1] if channel_order == 'BGR' else image


MAX_OBJS_POLICIES = ('visible_first', 'first')


def visible_on_canvas(boxes, canvas_hw):
  """[N] bool: the xyxy boxes [N, 4] keep some width and height inside the (h, w) canvas."""
  h = tf.cast(canvas_hw[0], tf.float32)
  w = tf.cast(canvas_hw[1], tf.float32)
  vis_w = tf.minimum(boxes[:, 2], w - 1) - tf.maximum(boxes[:, 0], 0.0)
  vis_h = tf.minimum(boxes[:, 3], h - 1) - tf.maximum(boxes[:, 1], 0.0)
  return (vis_w > 0) & (vis_h > 0)


def count_dropped(boxes, order, canvas_hw):
  """Objects visible on the canvas that ``order`` (:func:`object_order`) leaves out; [] int32.

  Objects the crop removed are not counted: the cap did not lose them.
  """
  visible = tf.cast(visible_on_canvas(boxes, canvas_hw), tf.int32)
  return tf.reduce_sum(visible) - tf.reduce_sum(tf.gather(visible, order))


def object_order(boxes, max_objs: int, canvas_hw, policy: str = 'visible_first'):
  """Which objects survive ``max_objs`` and in what order (docs/parity.md 4.3).

  Args:
    boxes: [N, 4] float32 xyxy on the canvas.
    max_objs: padded length.
    canvas_hw: (h, w) of the canvas.
    policy: 'visible_first' (ours): objects that stay visible on the canvas come first (stable
      order), so truncation drops objects the crop removed before visible ones. 'first'
      (official): the first ``max_objs`` in annotation order, visible or not (the official loop
      reads ``min(len(anns), max_objs)`` annotations, then skips those the crop removed).

  Returns:
    [min(N, max_objs)] int32 indices into the objects.
  """
  if policy == 'visible_first':
    hidden = tf.cast(tf.logical_not(visible_on_canvas(boxes, canvas_hw)), tf.int32)
    return tf.argsort(hidden, stable=True)[:max_objs]
  if policy == 'first':
    return tf.range(tf.minimum(tf.shape(boxes)[0], max_objs))
  raise ValueError(f'config.data.max_objs_policy must be one of {MAX_OBJS_POLICIES}, '
                   f'got {policy!r}')


def pad_rows(values, order, max_objs: int):
  """``values[order]`` zero-padded to ``max_objs`` rows: [N, ...] -> [max_objs, ...]."""
  rows = tf.gather(values, order)
  pad = [[0, max_objs - tf.shape(order)[0]]] + [[0, 0]] * (len(values.shape) - 1)
  rows = tf.pad(rows, pad)
  rows.set_shape([max_objs] + values.shape[1:].as_list())
  return rows


def pad_objects(boxes, labels, max_objs: int, canvas_hw, policy: str = 'visible_first'):
  """Pads / truncates objects to ``max_objs`` with a mask (order: :func:`object_order`).

  Args:
    boxes: [N, 4] float32 xyxy on the canvas.
    labels: [N] int32.
    max_objs: padded length.
    canvas_hw: (h, w) of the canvas.
    policy: which objects survive when N > max_objs (:func:`object_order`).

  Returns:
    boxes [max_objs, 4] float32, labels [max_objs] int32, mask [max_objs] float32.
  """
  order = object_order(boxes, max_objs, canvas_hw, policy)
  mask = tf.sequence_mask(tf.shape(order)[0], max_objs, dtype=tf.float32)
  return (pad_rows(boxes, order, max_objs),
          pad_rows(tf.cast(labels, tf.int32), order, max_objs), mask)


def train_transform(image, boxes, labels, seed, *, input_size: int, max_objs: int,
                    scale_choices: Sequence[float], rand_crop: bool = True, shift: float = 0.1,
                    scale: float = 0.4, flip: float = 0.5, color_aug: bool = True,
                    channel_order: str = 'BGR', mean: Sequence[float] = (0.0, 0.0, 0.0),
                    std: Sequence[float] = (1.0, 1.0, 1.0), crop_base: int = 0,
                    max_objs_policy: str = 'visible_first', keypoints=None,
                    flip_pairs: Sequence[Sequence[int]] = ()) -> dict:
  """Official ctdet (and multi_pose) training pre-processing of one image.

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [N, 4] float32 xyxy pixels.
    labels: [N] int32 contiguous labels.
    seed: [2] int64 stateless seed of this element.
    input_size: side S of the square network input.
    max_objs: objects padded / truncated to this.
    max_objs_policy: which objects survive the truncation (:func:`object_order`).
    keypoints: [N, J, 3] float32 (x, y pixels, v) of the same objects, static J, or None.
    flip_pairs: 0-based (left, right) joint pairs swapped by the flip.
    (others: see ``data.config.data_config``.)

  Returns:
    dict(image [S, S, 3] float32 normalised, boxes [max_objs, 4] float32 xyxy in input pixels
    (unclipped), labels [max_objs] int32, mask [max_objs] float32, dropped_objects [] int32
    (objects visible in the crop that ``max_objs`` left out: :func:`count_dropped`)) and, with
    ``keypoints``,
    keypoints [max_objs, J, 3] float32: x, y in input pixels (unclipped, every joint through
    the affine whatever v), v unchanged, rows in the order of the boxes, padding rows 0.
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  seeds = tf.random.experimental.stateless_split(seed, 3)
  center, s = random_crop(seeds[0], height, width, scale_choices=scale_choices,
                          rand_crop=rand_crop, shift=shift, scale=scale, crop_base=crop_base)
  flipped = tf.random.stateless_uniform([], seeds[1]) < flip
  w_f = tf.cast(width, tf.float32)
  center = tf.where(flipped, tf.stack([w_f - center[0] - 1, center[1]]), center)
  trans = get_affine_transform(center, s, (input_size, input_size))
  # The official code mirrors the image, then warps: one resample with trans o mirror.
  trans_img = tf.where(flipped, compose_affine(trans, hflip_affine(width)), trans)
  boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
  boxes = tf.where(flipped, hflip_boxes(boxes, width), boxes)

  # One resample, rounded as the official uint8 warp output; then the whole colour chain
  # (/ 255, channel order, colour_augment, mean/std) as one per-pixel affine map (a 1x1 conv):
  # the same maths as warp_affine -> color_augment -> normalize in two passes instead of ten.
  inp = tf.round(warp_axis_aligned(image, trans_img, (input_size, input_size)))
  pixel_mean = tf.reduce_mean(inp, axis=[0, 1]) if color_aug else tf.zeros([3], tf.float32)
  m, b = color_normalize_affine(pixel_mean, seeds[2], color_aug=color_aug,
                                channel_order=channel_order, mean=mean, std=std)
  inp = tf.nn.bias_add(tf.nn.conv2d(inp[None], m[None, None], 1, 'VALID'), b)[0]
  inp.set_shape([input_size, input_size, 3])

  boxes = affine_boxes(boxes, trans)
  order = object_order(boxes, max_objs, (input_size, input_size), max_objs_policy)
  out = {'image': inp, 'boxes': pad_rows(boxes, order, max_objs),
         'labels': pad_rows(tf.cast(labels, tf.int32), order, max_objs),
         'mask': tf.sequence_mask(tf.shape(order)[0], max_objs, dtype=tf.float32),
         'dropped_objects': count_dropped(boxes, order, (input_size, input_size))}
  if keypoints is not None:
    keypoints = tf.cast(keypoints, tf.float32)
    keypoints = tf.cond(flipped, lambda: hflip_keypoints(keypoints, width, flip_pairs),
                        lambda: keypoints)
    out['keypoints'] = pad_rows(affine_keypoints(keypoints, trans), order, max_objs)
  return out


def ddd_center_scale(seed, height, width, *, ddd_aug: float, scale: float, shift: float):
  """The official ddd training crop (``datasets/sample/ddd.py``, docs/parity.md 4.13).

  c = (W / 2, H / 2), s = W (official ``s = [W, H]``; the affine reads only s[0]); with
  probability ``ddd_aug``: s *= clip(N * scale + 1, 1 - scale, 1 + scale) and
  c += (W, H) * clip(N * shift, -2 shift, 2 shift) (three normal draws in that order).

  Args:
    seed: [2] int64 stateless seed.
    height, width: scalar int tensors, image size.
    ddd_aug, scale, shift: ``data.ddd_aug``, ``data.scale``, ``data.shift``.

  Returns:
    center [2] float32, s [] float32, aug [] bool.
  """
  hw = tf.cast(tf.stack([width, height]), tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  aug = tf.random.stateless_uniform([], seeds[0]) < ddd_aug
  n = tf.random.stateless_normal([3], seeds[1])
  s_aug = hw[0] * tf.clip_by_value(n[0] * scale + 1, 1 - scale, 1 + scale)
  c_aug = hw / 2.0 + hw * tf.clip_by_value(n[1:] * shift, -2 * shift, 2 * shift)
  return tf.where(aug, c_aug, hw / 2.0), tf.where(aug, s_aug, hw[0]), aug


def ddd_train_transform(image, boxes, labels, depth, dims, alpha, seed, *,
                        input_hw: Sequence[int], max_objs: int, center3d=None,
                        ddd_aug: float = 0.5, crop_width: int = 0,
                        scale: float = 0.4, shift: float = 0.1, channel_order: str = 'BGR',
                        mean: Sequence[float] = (0.0, 0.0, 0.0),
                        std: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
  """Official ddd training pre-processing of one KITTI image (docs/parity.md 4.13).

  :func:`ddd_center_scale`, one bilinear warp onto the ``input_hw`` canvas (zero border, rounded
  as the official uint8 ``cv2.warpAffine``), no flip and no colour augmentation (official), then
  / 255, channel order, mean/std. Objects: the first ``max_objs`` of the label file in file
  order (official ``num_objs = min(len(anns), max_objs)``), every type kept with its code.

  ``crop_width`` > 0 (not official; ``data.ddd_crop_width``) keeps the output to a window of that
  many columns of the canvas, at a uniformly random horizontal offset: the image keeps the
  canvas's scale (the one evaluation uses), so depth stays supervised, and a step costs
  ``crop_width / w`` of the whole canvas. Rows are untouched: on a ground plane an object's row
  is its depth cue, its column is not.

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [N, 4] float32 xyxy pixels; labels: [N] int32 official codes (``kitti.CLASS_CODES``);
    depth: [N] float32 (location z); dims: [N, 3] float32 (h, w, l); alpha: [N] float32.
    seed: [2] int64 stateless seed of this element.
    input_hw: (h, w) of the canvas (Python ints).
    max_objs: objects padded / truncated to this.
    crop_width: 0 (official: the whole canvas) or the width of a random window of it.
    center3d: [N, 2] float32 pixels of the projected 3D centres, or None.
    (others: see ``data.config.data_config``.)

  Returns:
    dict(image [h, w, 3] float32 normalised (w = ``crop_width`` when set), boxes [max_objs, 4]
    float32 xyxy in input pixels (unclipped), labels [max_objs] int32, mask [max_objs] float32,
    depth [max_objs], dims [max_objs, 3], alpha [max_objs] float32, aug [] float32 (1: scaled /
    shifted), dropped_objects [] int32 (objects visible on the canvas beyond ``max_objs``); with
    ``center3d``, also center3d [max_objs, 2] in input pixels (the same affine as the boxes)).
  """
  in_h, in_w = int(input_hw[0]), int(input_hw[1])
  shape = tf.shape(image)
  center, s, aug = ddd_center_scale(seed, shape[0], shape[1], ddd_aug=ddd_aug, scale=scale,
                                    shift=shift)
  trans = get_affine_transform(center, s, (in_w, in_h))
  if crop_width:
    if not 0 < int(crop_width) <= in_w:
      raise ValueError(f'crop_width must be in [1, {in_w}] (the canvas width), got {crop_width}')
    x0 = tf.floor(tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(seed, 2)) * (in_w - int(crop_width) + 1))
    one, zero = tf.ones([]), tf.zeros([])
    shift_left = tf.stack([tf.stack([one, zero, -x0]), tf.stack([zero, one, zero])])
    trans = compose_affine(shift_left, trans)
    in_w = int(crop_width)
  inp = tf.round(warp_axis_aligned(image, trans, (in_h, in_w)))
  inp = normalize(to_channel_order(inp / 255.0, channel_order), mean, std)
  inp.set_shape([in_h, in_w, 3])
  boxes = affine_boxes(tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), trans)
  order = object_order(boxes, max_objs, (in_h, in_w), 'first')
  extra = {}
  if center3d is not None:
    c = tf.reshape(tf.cast(center3d, tf.float32), [-1, 2])
    extra['center3d'] = pad_rows(affine_boxes(tf.concat([c, c], -1), trans)[:, :2], order,
                                 max_objs)
  return {**extra, 'image': inp, 'boxes': pad_rows(boxes, order, max_objs),
          'labels': pad_rows(tf.cast(labels, tf.int32), order, max_objs),
          'mask': tf.sequence_mask(tf.shape(order)[0], max_objs, dtype=tf.float32),
          'depth': pad_rows(tf.cast(depth, tf.float32), order, max_objs),
          'dims': pad_rows(tf.reshape(tf.cast(dims, tf.float32), [-1, 3]), order, max_objs),
          'alpha': pad_rows(tf.cast(alpha, tf.float32), order, max_objs),
          'aug': tf.cast(aug, tf.float32),
          'dropped_objects': count_dropped(boxes, order, (in_h, in_w))}


# --- Evaluation ----------------------------------------------------------------------------
# The letterbox geometry is owned by ``centernet_jax/boxes.py`` (numpy: ``canvas_hw``,
# ``letterbox_center_scale``, ``letterbox``); these are its tf twins for tf.data, where the image
# size is only known inside the graph (tests/data_transforms_test.py checks they agree).


def _size_hw(size):
  """A canvas size given as a side (square) or as (h, w) -> (h, w) Python ints."""
  if np.ndim(size) == 0:
    return int(size), int(size)
  return int(size[0]), int(size[1])


def canvas_hw(height, width, *, mode: str, pad: int, size):
  """tf twin of ``boxes.canvas_hw``: (H, W) int32 scalars of the evaluation canvas.

  ``size``: the 'fixed_res' / 'fit_width' canvas, a side or (h, w).
  """
  if mode == 'keep_res':
    return tf.bitwise.bitwise_or(height, pad) + 1, tf.bitwise.bitwise_or(width, pad) + 1
  if mode in ('fixed_res', 'fit_width'):
    h, w = _size_hw(size)
    return tf.constant(h, tf.int32), tf.constant(w, tf.int32)
  raise ValueError(f"eval_mode must be 'fit_width', 'keep_res' or 'fixed_res', got {mode!r}")


def letterbox_center_scale(height, width, inp_h, inp_w, *, mode: str):
  """tf twin of ``boxes.letterbox_center_scale``.

  Returns:
    center [2] float32 (x, y), scale [2] float32 (w, h), in image pixels.
  """
  if mode == 'keep_res':
    return (tf.cast(tf.stack([width // 2, height // 2]), tf.float32),
            tf.cast(tf.stack([inp_w, inp_h]), tf.float32))
  hw = tf.cast(tf.stack([width, height]), tf.float32)
  if mode == 'fit_width':  # official DddDetector.pre_process: s = (w, h) (docs/parity.md 4.13)
    return hw / 2.0, hw
  s = tf.maximum(hw[0], hw[1] * tf.cast(inp_w, tf.float32) / tf.cast(inp_h, tf.float32))
  return hw / 2.0, tf.stack([s, s])


def eval_transform(image, *, mode: str = 'keep_res', pad: int = 31,
                   size: int | Sequence[int] = 512, channel_order: str = 'BGR',
                   test_scale: float = 1.0) -> dict:
  """Official test pre-processing of one image, before mean/std (applied after batching).

  Args:
    image: [H, W, 3] uint8 RGB.
    mode: 'keep_res' (centre-pad to (H | pad) + 1, (W | pad) + 1), 'fixed_res' (warp to
      size x size with s = max(H, W)) or 'fit_width' (official ddd: warp onto the ``size``
      canvas with c = image centre, s = W: scaled to the canvas width).
    pad: the official ``--pad`` (31; 127 for hourglass).
    size: the 'fixed_res' / 'fit_width' canvas, a side or (h, w)
      (``data.config.eval_canvas_size``).
    channel_order: 'BGR' or 'RGB'.
    test_scale: multi-scale testing (official ``--test_scales``): the image is first resized
      to ``(int(H * s), int(W * s))`` (bilinear, as ``cv2.resize``); ``center`` and ``scale``
      are returned in ORIGINAL image pixels (divided by ``s``), so ``boxes.transform_preds``
      maps detections straight back to the original image (the official code divides by the
      scale afterwards: the same maths).

  Returns:
    dict(image [h, w, 3] float32 in [0, 1] (zero border), center [2] float32, scale [2]
    float32, input_hw [2] int32, orig_hw [2] int32).
  """
  shape = tf.shape(image)
  orig_hw = tf.stack([shape[0], shape[1]])
  if test_scale != 1.0:
    new_hw = tf.cast(tf.cast(orig_hw, tf.float32) * test_scale, tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), new_hw, method='bilinear',
                            antialias=False)
    shape = tf.shape(image)
  height, width = shape[0], shape[1]
  inp_h, inp_w = canvas_hw(height, width, mode=mode, pad=pad, size=size)
  center, scale = letterbox_center_scale(height, width, inp_h, inp_w, mode=mode)
  if mode == 'keep_res':
    # s = input size, so the affine is the integer translation inp/2 - c: an exact pad.
    top = inp_h // 2 - height // 2
    left = inp_w // 2 - width // 2
    inp = tf.pad(tf.cast(image, tf.float32),
                 [[top, inp_h - height - top], [left, inp_w - width - left], [0, 0]])
  else:
    out_h, out_w = _size_hw(size)
    trans = get_affine_transform(center, scale, (out_w, out_h))
    inp = tf.round(warp_affine(tf.cast(image, tf.float32), trans, (out_h, out_w)))
  inp = to_channel_order(inp / 255.0, channel_order)
  if test_scale != 1.0:
    center, scale = center / test_scale, scale / test_scale
  return {'image': inp, 'center': center, 'scale': scale,
          'input_hw': tf.stack([inp_h, inp_w]), 'orig_hw': orig_hw}

"""Host-side box and affine utilities (numpy): the one owner of the letterbox geometry.

The affine construction mirrors the official CenterNet `utils/image.py` for
rot = 0: three source points (centre, centre + [0, -0.5 * src_w], and a third
point at a right angle) are mapped onto the matching points of the output
canvas. The 2x3 matrix is solved with numpy instead of
`cv2.getAffineTransform`. The letterbox functions place an image on the network's input
canvas as evaluation does and map points back; inference, predict and serving use them, and the
tf pipeline's twin is tested against them.
"""

from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[float] | float


def _get_3rd_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Point c such that (c - b) is (a - b) rotated by +90 degrees."""
  direct = a - b
  return b + np.array([-direct[1], direct[0]], dtype=np.float32)


def solve_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Solves the affine map sending three points onto three points.

  Numpy replacement for `cv2.getAffineTransform` (which solves in float64).

  Args:
    src: [3, 2] source points (x, y).
    dst: [3, 2] destination points (x, y).

  Returns:
    [2, 3] float64 matrix M with M @ [x, y, 1] = dst for each source point.
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  a = np.concatenate([src, np.ones((3, 1), np.float64)], axis=1)  # [3, 3]
  return np.linalg.solve(a, dst).T


def get_affine_transform(
    center: ArrayLike,
    scale: ArrayLike,
    output_size: Sequence[int],
    inv: bool = False,
    shift: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
  """Affine map from an image crop to the network canvas (official, rot = 0).

  Args:
    center: [2] crop centre (x, y) in source pixels.
    scale: crop size in source pixels, a float (square) or [2] (w, h). Only
      scale[0] sets the zoom (dst_w / scale[0]); both components scale `shift`.
    output_size: (w, h) of the destination canvas.
    inv: if True return the inverse map (destination -> source).
    shift: [2] centre shift as a fraction of `scale`.

  Returns:
    [2, 3] float32 affine matrix.
  """
  center = np.asarray(center, np.float32)
  scale = np.asarray(scale, np.float32)
  if scale.ndim == 0:
    scale = np.array([scale, scale], np.float32)
  shift = np.asarray(shift, np.float32)
  src_w = scale[0]
  dst_w, dst_h = float(output_size[0]), float(output_size[1])

  src_dir = np.array([0.0, src_w * -0.5], np.float32)
  dst_dir = np.array([0.0, dst_w * -0.5], np.float32)

  src = np.zeros((3, 2), np.float32)
  dst = np.zeros((3, 2), np.float32)
  src[0] = center + scale * shift
  src[1] = center + src_dir + scale * shift
  dst[0] = [dst_w * 0.5, dst_h * 0.5]
  dst[1] = np.array([dst_w * 0.5, dst_h * 0.5], np.float32) + dst_dir
  src[2] = _get_3rd_point(src[0], src[1])
  dst[2] = _get_3rd_point(dst[0], dst[1])

  trans = solve_affine(dst, src) if inv else solve_affine(src, dst)
  return trans.astype(np.float32)


def affine_transform(points: np.ndarray, trans: np.ndarray) -> np.ndarray:
  """Applies a 2x3 affine matrix to points.

  Args:
    points: [..., 2] (x, y).
    trans: [2, 3] affine matrix.

  Returns:
    [..., 2] transformed points, float32.
  """
  points = np.asarray(points, np.float64)
  trans = np.asarray(trans, np.float64)
  out = points @ trans[:, :2].T + trans[:, 2]
  return out.astype(np.float32)


def transform_preds(
    boxes: np.ndarray,
    center: ArrayLike,
    scale: ArrayLike,
    output_size: Sequence[int],
) -> np.ndarray:
  """Maps boxes from output-map coordinates back to original image pixels.

  Args:
    boxes: [N, 4] (or [..., 4]) xyxy in output-map coordinates.
    center: [2] crop centre used in pre-processing.
    scale: float or [2] crop scale used in pre-processing.
    output_size: (w, h) of the output map.

  Returns:
    [N, 4] (same leading shape) xyxy float32 in original image pixels.
  """
  boxes = np.asarray(boxes, np.float32)
  trans = get_affine_transform(center, scale, output_size, inv=True)
  corners = boxes.reshape(boxes.shape[:-1] + (2, 2))
  return affine_transform(corners, trans).reshape(boxes.shape)


def box_area(boxes: np.ndarray) -> np.ndarray:
  """Area of xyxy boxes [..., 4] -> [...] (negative sizes count as 0)."""
  boxes = np.asarray(boxes)
  w = np.maximum(boxes[..., 2] - boxes[..., 0], 0)
  h = np.maximum(boxes[..., 3] - boxes[..., 1], 0)
  return w * h


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of xyxy boxes (continuous coordinates, no +1).

  Args:
    a: [N, 4] xyxy.
    b: [M, 4] xyxy.

  Returns:
    [N, M] IoU in float32; 0 where the union is empty.
  """
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
  """[..., 4] (x1, y1, x2, y2) -> [..., 4] (x, y, w, h) (COCO layout)."""
  boxes = np.asarray(boxes)
  return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
  """[..., 4] (x, y, w, h) (COCO layout) -> [..., 4] (x1, y1, x2, y2)."""
  boxes = np.asarray(boxes)
  return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


# --- Letterbox: an image on the network's input canvas and back -------------------------------
# The evaluation pre-processing (official ``pre_process`` of the detectors, rot = 0). The tf
# version in ``data/transforms.eval_transform`` is tested against these functions.

LETTERBOX_MODES = ('keep_res', 'fixed_res', 'fit_width')


def _check_mode(mode: str) -> None:
  if mode not in LETTERBOX_MODES:
    raise ValueError(f"letterbox mode must be 'fit_width', 'keep_res' or 'fixed_res', got {mode!r}")


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
  """A canvas size given as a side (square) or as (h, w)."""
  if np.ndim(size) == 0:
    return int(size), int(size)
  h, w = (int(v) for v in size)
  return h, w


def canvas_hw(orig_hw: Sequence[int], mode: str, *, pad: int = 31,
              size: int | Sequence[int] = 512) -> tuple[int, int]:
  """The input canvas of an h x w image.

  Args:
    orig_hw: (h, w) of the image.
    mode: 'keep_res' (pad each side to a multiple of pad + 1: official ``--keep_res --pad``),
      'fixed_res' (a size x size canvas) or 'fit_width' (the official ddd test: the canvas
      ``size``, whatever the image).
    pad: 2^n - 1 (31; 127 for the hourglass models).
    size: the fixed_res / fit_width canvas: a side (square) or (H, W)
      (``data.config.eval_canvas_size``).

  Returns:
    (H, W) of the canvas.
  """
  _check_mode(mode)
  if mode in ('fixed_res', 'fit_width'):
    return _size_hw(size)
  return (int(orig_hw[0]) | pad) + 1, (int(orig_hw[1]) | pad) + 1


def letterbox_center_scale(orig_hw: Sequence[int], canvas: Sequence[int], mode: str
                           ) -> tuple[np.ndarray, np.ndarray]:
  """The (center, scale) of :func:`get_affine_transform` that letterboxes an image.

  'keep_res' is a centred pad: c = (w // 2, h // 2), s = (W, H), so the affine is the integer
  translation (W // 2 - w // 2, H // 2 - h // 2). 'fixed_res' a centred resize keeping the aspect
  ratio: c = (w / 2, h / 2), s = max(h, w) on a square canvas (for H != W, s is widened so that
  the whole image fits). 'fit_width' (official ``DddDetector.pre_process``, docs/parity.md
  4.13): c = (w / 2, h / 2), s = (w, h), so the image is scaled by W / w to the canvas width,
  centred; rows beyond the canvas are cropped, missing ones zero border.

  Args:
    orig_hw: (h, w) of the image.
    canvas: (H, W) of the input canvas.
    mode: 'keep_res', 'fixed_res' or 'fit_width'.

  Returns:
    (center [2] float32 (x, y), scale [2] float32 (w, h)) in image pixels.
  """
  _check_mode(mode)
  h, w = (int(v) for v in orig_hw)
  in_h, in_w = (int(v) for v in canvas)
  if mode == 'keep_res':
    return np.array([w // 2, h // 2], np.float32), np.array([in_w, in_h], np.float32)
  if mode == 'fit_width':
    return np.array([w / 2, h / 2], np.float32), np.array([w, h], np.float32)
  s = max(float(w), h * in_w / in_h)
  return np.array([w / 2, h / 2], np.float32), np.array([s, s], np.float32)


def letterbox_affine(orig_hw: Sequence[int], canvas: Sequence[int], mode: str,
                     inv: bool = False) -> np.ndarray:
  """[2, 3] affine from image to canvas pixels (``inv``: canvas -> image)."""
  center, scale = letterbox_center_scale(orig_hw, canvas, mode)
  return get_affine_transform(center, scale, (canvas[1], canvas[0]), inv=inv)


def warp_affine(image: np.ndarray, trans: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
  """Bilinear warp with a zero border: ``out(p) = image(trans^-1 p)`` (``cv2.warpAffine``).

  Pixel centres sit on integer coordinates; each of the four neighbours of a sample outside the
  image reads 0, so the image's outermost pixels blend with the border as in cv2 and tf.

  Args:
    image: [h, w, C] any real dtype.
    trans: [2, 3] image -> output affine.
    out_hw: (H, W) of the output.

  Returns:
    [H, W, C] float32.
  """
  h, w = image.shape[:2]
  inv = np.linalg.inv(np.vstack([np.asarray(trans, np.float64), [0.0, 0.0, 1.0]]))[:2]
  inv = inv.astype(np.float32)
  ys, xs = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float32)
  sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  x0, y0 = np.floor(sx), np.floor(sy)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
  src = np.asarray(image, np.float32)

  def read(y, x):
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    return np.where(inside[..., None], src[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0.0)

  top = (1 - fx) * read(y0, x0) + fx * read(y0, x0 + 1)
  bottom = (1 - fx) * read(y0 + 1, x0) + fx * read(y0 + 1, x0 + 1)
  return ((1 - fy) * top + fy * bottom).astype(np.float32)


def letterbox(image: np.ndarray, canvas: Sequence[int], mode: str = 'keep_res'
              ) -> tuple[np.ndarray, np.ndarray]:
  """Places a uint8 [h, w, C] image on the H x W canvas (zero border), as evaluation does.

  Args:
    image: [h, w, C] uint8.
    canvas: (H, W); :func:`canvas_hw` gives the evaluation canvas.
    mode: 'keep_res' (an exact centred pad; the image must fit), 'fixed_res' (a centred
      bilinear resize keeping the aspect ratio, rounded to uint8 like the official cv2 warp) or
      'fit_width' (the same resize to the canvas width, cropped or bordered above and below).

  Returns:
    (canvas [H, W, C] uint8, [2, 3] inverse affine: canvas -> image pixels).
  """
  h, w = image.shape[:2]
  in_h, in_w = (int(v) for v in canvas)
  inverse = letterbox_affine((h, w), (in_h, in_w), mode, inv=True)
  if mode == 'keep_res':
    if h > in_h or w > in_w:
      raise ValueError(f'a {h}x{w} image does not fit the {in_h}x{in_w} canvas with '
                       "mode='keep_res' (pad only): use mode='fixed_res' or a larger canvas")
    top, left = in_h // 2 - h // 2, in_w // 2 - w // 2  # the translation of the affine
    out = np.zeros((in_h, in_w) + image.shape[2:], np.uint8)
    out[top:top + h, left:left + w] = image
    return out, inverse
  trans = letterbox_affine((h, w), (in_h, in_w), mode)
  warped = warp_affine(image, trans, (in_h, in_w))
  return np.clip(np.round(warped), 0, 255).astype(np.uint8), inverse


def points_to_original(points: np.ndarray, inverse_affine: np.ndarray,
                       orig_hw: Sequence[int] | None = None) -> np.ndarray:
  """Maps x, y pairs from canvas to image pixels.

  Args:
    points: [..., 2 * n] float, the last axis x, y pairs (boxes: x1, y1, x2, y2).
    inverse_affine: [2, 3] canvas -> image (from :func:`letterbox` or
      ``get_affine_transform(..., inv=True)``).
    orig_hw: (h, w) of the image: clip x to [0, w] and y to [0, h]; None: no clipping.

  Returns:
    [..., 2 * n] float32 in image pixels.
  """
  points = np.asarray(points, np.float32)
  pairs = affine_transform(points.reshape(points.shape[:-1] + (-1, 2)), inverse_affine)
  if orig_hw is not None:
    pairs = np.clip(pairs, 0, [orig_hw[1], orig_hw[0]])
  return pairs.reshape(points.shape).astype(np.float32)


def boxes_to_original(boxes: np.ndarray, inverse_affine: np.ndarray,
                      orig_hw: Sequence[int]) -> np.ndarray:
  """[..., 4] canvas boxes -> image pixels (affine, then clipped to the image)."""
  return points_to_original(boxes, inverse_affine, orig_hw)

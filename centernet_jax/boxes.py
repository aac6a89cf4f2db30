"""Host-side box and affine utilities (numpy).

The affine construction mirrors the official CenterNet `utils/image.py` for
rot = 0: three source points (centre, centre + [0, -0.5 * src_w], and a third
point at a right angle) are mapped onto the matching points of the output
canvas. The 2x3 matrix is solved with numpy instead of
`cv2.getAffineTransform`.
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

"""Drawing detections (boxes, and for pose skeletons) on images and writing image montages.

Monocular 3D (ddd) detections are drawn as their projected 3D boxes (:func:`draw_boxes_3d`) with
a bird's-eye view panel beside the image (:func:`draw_birds_eye_view`, :func:`draw_ddd`).
PIL + numpy only.
"""

from __future__ import annotations

import colorsys
import os
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from centernet_jax.keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON

# Joint sides and their colours: a limb between two joints of one side takes that side's colour,
# any other limb the centre colour.
LEFT, RIGHT, CENTRE = 0, 1, 2
SIDE_COLORS = {LEFT: (0, 170, 255), RIGHT: (255, 60, 60), CENTRE: (255, 215, 0)}


def keypoint_layout(num_joints: int | None, keypoint_names: Sequence[str] | None = None,
                    skeleton: Sequence[Sequence[int]] | None = None
                    ) -> tuple[list[str] | None, list[tuple[int, int]] | None]:
  """The joint names and 0-based limbs to draw, checked against J.

  Args:
    num_joints: J (``config.data.num_joints``); None: not a keypoint model.
    keypoint_names, skeleton: from a checkpoint's meta; None: COCO's when J = 17.

  Returns:
    (names or None when unknown, limbs) with J; (None, None) when ``num_joints`` is None.

  Raises:
    ValueError: names or limbs that do not fit J.
  """
  if num_joints is None:
    return None, None
  num_joints = int(num_joints)
  coco = num_joints == len(COCO_KEYPOINT_NAMES)
  if keypoint_names is None and coco:
    keypoint_names = COCO_KEYPOINT_NAMES
  if skeleton is None:
    skeleton = COCO_SKELETON if coco else ()
  limbs = [(int(a), int(b)) for a, b in skeleton]
  if keypoint_names is not None and len(keypoint_names) != num_joints:
    raise ValueError(f'{len(keypoint_names)} keypoint names for num_joints={num_joints}')
  bad = [limb for limb in limbs if not all(0 <= j < num_joints for j in limb)]
  if bad:
    raise ValueError(f'skeleton limbs {bad} name joints outside [0, {num_joints}) (0-based)')
  return (list(keypoint_names) if keypoint_names is not None else None), limbs


def joint_sides(num_joints: int, keypoint_names: Sequence[str] | None = None,
                flip_pairs: Sequence[Sequence[int]] | None = None) -> np.ndarray:
  """Side of each joint: LEFT, RIGHT or CENTRE.

  Args:
    num_joints: J.
    keypoint_names: [J] names; 'left*' and 'right*' (any case) give the side. Used when given.
    flip_pairs: 0-based (left, right) joint pairs a mirror swaps (``config.data.flip_pairs``):
      the first of each pair is taken as left. Used without names.

  Returns:
    [J] int.
  """
  sides = np.full(num_joints, CENTRE, np.int64)
  if keypoint_names is not None:
    if len(keypoint_names) != num_joints:
      raise ValueError(f'{len(keypoint_names)} keypoint names for {num_joints} joints')
    for j, name in enumerate(keypoint_names):
      lower = str(name).lower()
      if lower.startswith('left'):
        sides[j] = LEFT
      elif lower.startswith('right'):
        sides[j] = RIGHT
  elif flip_pairs is not None:
    for a, b in flip_pairs:
      if not (0 <= a < num_joints and 0 <= b < num_joints):
        raise ValueError(f'flip pair ({a}, {b}) out of range for {num_joints} joints')
      sides[a], sides[b] = LEFT, RIGHT
  return sides


def class_color(label: int) -> tuple[int, int, int]:
  """A fixed, well-spread RGB colour for a class label (golden-ratio hue steps)."""
  hue = (int(label) * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected an image [H, W, 3], got shape {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  if image.dtype != np.uint8:
    if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
      image = image * 255.0
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.3,
    keypoints: np.ndarray | None = None,
    keypoint_scores: np.ndarray | None = None,
    skeleton: Sequence[Sequence[int]] | None = None,
    keypoint_threshold: float = 0.0,
    keypoint_names: Sequence[str] | None = None,
    flip_pairs: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
  """Draws boxes with "name score" captions, one colour per class, and pose skeletons.

  Args:
    image: [H, W, 3] uint8 RGB (float in [0, 1] or [0, 255] and greyscale are converted).
    boxes: [N, 4] xyxy in the image's pixels.
    scores: [N] scores; only those >= score_threshold are drawn (lowest first, so the best box
      ends on top).
    labels: [N] int contiguous labels.
    class_names: label -> name, as a list or a dict; None (or a missing label) prints the label.
    score_threshold: minimum score to draw.
    keypoints: optional [N, J, 2] x, y of each detection's joints in the image's pixels: the
      joints (dots) and limbs of every drawn detection are drawn, coloured by side
      (:func:`joint_sides`, :data:`SIDE_COLORS`).
    keypoint_scores: optional [N, J]; joints scoring below ``keypoint_threshold`` (and their
      limbs) are not drawn. None: every joint is drawn.
    skeleton: 0-based (joint, joint) limbs; None: joints only.
    keypoint_threshold: minimum joint score to draw (0: every joint, as the official debugger).
    keypoint_names, flip_pairs: give the joints' sides (names first).

  Returns:
    [H, W, 3] uint8 RGB copy of the image with the detections drawn.
  """
  image = _to_rgb_uint8(image)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if not len(boxes) == len(scores) == len(labels):
    raise ValueError(
      f'boxes, scores and labels disagree in length: {len(boxes)}, {len(scores)}, {len(labels)}')
  pose = _check_pose(len(boxes), keypoints, keypoint_scores, skeleton)
  if pose is not None:
    sides = joint_sides(pose[0].shape[1], keypoint_names, flip_pairs)
  pil = Image.fromarray(image)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default()
  height, width = image.shape[:2]
  line = max(1, round(min(height, width) / 200))
  for i in np.argsort(scores, kind='stable'):
    if scores[i] < score_threshold:
      continue
    label = int(labels[i])
    if isinstance(class_names, Mapping):
      name = class_names.get(label, str(label))
    elif class_names is not None and 0 <= label < len(class_names):
      name = class_names[label]
    else:
      name = str(label)
    color = class_color(label)
    x1, y1, x2, y2 = boxes[i].tolist()
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
    if pose is not None:
      kps, kp_scores, limbs = pose
      _draw_skeleton(draw, kps[i], kp_scores[i] >= keypoint_threshold, limbs, sides, line)
    text = f'{name} {scores[i]:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    # Caption above the box, or inside it when the box touches the top edge.
    ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1
    tx = min(max(x1, 0), max(width - tw - 2, 0))
    draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
    draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
  return np.asarray(pil)


def _check_pose(n: int, keypoints, keypoint_scores, skeleton):
  """(keypoints [N, J, 2], scores [N, J], limbs [L, 2]) as arrays, or None without keypoints."""
  if keypoints is None:
    return None
  kps = np.asarray(keypoints, np.float64)
  if kps.ndim != 3 or kps.shape[0] != n or kps.shape[2] != 2:
    raise ValueError(f'keypoints must be [N={n}, J, 2], got shape {kps.shape}')
  j = kps.shape[1]
  if keypoint_scores is None:
    scores = np.ones((n, j))
  else:
    scores = np.asarray(keypoint_scores, np.float64)
    if scores.shape != (n, j):
      raise ValueError(f'keypoint_scores must be [N={n}, J={j}], got shape {scores.shape}')
  limbs = np.asarray(skeleton if skeleton is not None else [], np.int64).reshape(-1, 2)
  if limbs.size and (limbs.min() < 0 or limbs.max() >= j):
    raise ValueError(f'skeleton limbs {limbs.tolist()} name joints outside [0, {j})')
  return kps, scores, limbs


def _draw_skeleton(draw: ImageDraw.ImageDraw, kps: np.ndarray, shown: np.ndarray,
                   limbs: np.ndarray, sides: np.ndarray, line: int) -> None:
  """Limbs (between shown joints), then joints as dots, coloured by side."""
  for a, b in limbs:
    if shown[a] and shown[b]:
      side = sides[a] if sides[a] == sides[b] else CENTRE
      draw.line([tuple(kps[a]), tuple(kps[b])], fill=SIDE_COLORS[int(side)], width=line + 1)
  radius = line + 1
  for (x, y), side, show in zip(kps.tolist(), sides, shown, strict=True):
    if show:
      draw.ellipse([x - radius, y - radius, x + radius, y + radius],
                   fill=SIDE_COLORS[int(side)])


# Edges of a KITTI 3D box (corners as data/kitti.box3d_corners: 0-3 bottom, 4-7 above them, 0, 1,
# 4, 5 the front face): the bottom and top rectangles and the four verticals, then the front
# face's two diagonals, the mark the official debugger's draw_box_3d puts on the heading side
# (docs/parity.md 4.13).
BOX3D_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4),
               (0, 4), (1, 5), (2, 6), (3, 7))
BOX3D_FRONT_CROSS = ((0, 5), (1, 4))
MIN_DRAW_DEPTH = 0.1  # boxes with a corner closer than this (metres, camera z) are not projected
BEV_BACKGROUND = (24, 24, 24)
BEV_GRID = (90, 90, 90)


def _caption(draw: ImageDraw.ImageDraw, font, text: str, x: float, y: float,
             color: tuple[int, int, int], width: int) -> None:
  """A filled caption whose bottom-left is near (x, y), kept inside the image horizontally."""
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  tw, th = right - left, bottom - top
  ty = y - th - 2 if y - th - 2 >= 0 else max(y, 0)
  tx = min(max(x, 0), max(width - tw - 2, 0))
  draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
  draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)


def _label_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
  if isinstance(class_names, Mapping):
    return class_names.get(label, str(label))
  if class_names is not None and 0 <= label < len(class_names):
    return class_names[label]
  return str(label)


def _check_3d(corners_3d, scores, labels, corners_2d=None):
  """(corners_3d [N, 8, 3], scores [N], labels [N], corners_2d [N, 8, 2] or None) as arrays."""
  c3 = np.asarray(corners_3d, np.float64).reshape(-1, 8, 3)
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  c2 = None if corners_2d is None else np.asarray(corners_2d, np.float64).reshape(-1, 8, 2)
  lengths = {len(c3), len(scores), len(labels)} | ({len(c2)} if c2 is not None else set())
  if len(lengths) != 1:
    raise ValueError(f'corners, scores and labels disagree in length: {len(c3)} corners_3d, '
                     f'{len(scores)} scores, {len(labels)} labels'
                     + (f', {len(c2)} corners_2d' if c2 is not None else ''))
  return c3, scores, labels, c2


def draw_boxes_3d(
    image: np.ndarray,
    corners_2d: np.ndarray,
    corners_3d: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.3,
) -> np.ndarray:
  """Draws 3D boxes projected into the image, front face crossed, with "name score" captions.

  Args:
    image: [H, W, 3] uint8 RGB (converted as :func:`draw_detections` does).
    corners_2d: [N, 8, 2] the corners projected to the image's pixels (``kitti.project``).
    corners_3d: [N, 8, 3] the corners in camera coordinates (``kitti.box3d_corners`` order):
      a box with a corner less than ``MIN_DRAW_DEPTH`` in front of the camera is not drawn (its
      projection is meaningless).
    scores: [N]; only those >= score_threshold are drawn, lowest first.
    labels: [N] contiguous labels (colour and name).
    class_names: label -> name, as a list or a dict.
    score_threshold: minimum score to draw.

  Returns:
    [H, W, 3] uint8 RGB copy of the image.
  """
  image = _to_rgb_uint8(image)
  c3, scores, labels, c2 = _check_3d(corners_3d, scores, labels, corners_2d)
  pil = Image.fromarray(image)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default()
  height, width = image.shape[:2]
  line = max(1, round(min(height, width) / 250))
  for i in np.argsort(scores, kind='stable'):
    if scores[i] < score_threshold or not np.all(c3[i, :, 2] >= MIN_DRAW_DEPTH):
      continue
    if not np.all(np.isfinite(c2[i])):
      continue
    color = class_color(int(labels[i]))
    pts = [tuple(p) for p in c2[i].tolist()]
    for a, b in BOX3D_EDGES + BOX3D_FRONT_CROSS:
      draw.line([pts[a], pts[b]], fill=color, width=line)
    _caption(draw, font, f'{_label_name(int(labels[i]), class_names)} {scores[i]:.2f}',
             float(c2[i, :, 0].min()), float(c2[i, :, 1].min()), color, width)
  return np.asarray(pil)


def draw_birds_eye_view(
    corners_3d: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    score_threshold: float = 0.3,
    size: int = 384,
    max_depth: float = 60.0,
    ring_step: float = 10.0,
) -> np.ndarray:
  """A bird's-eye view of 3D boxes: x to the right, z (forward) up, the camera at the bottom
  centre, distance rings every ``ring_step`` metres, each box's footprint in its class colour
  with its front edge (the heading, corners 0-1) drawn thick.

  Args:
    corners_3d: [N, 8, 3] corners in camera coordinates (``kitti.box3d_corners`` order).
    scores: [N]; only those >= score_threshold are drawn, lowest first.
    labels: [N] contiguous labels (colour).
    score_threshold: minimum score to draw.
    size: the panel's side in pixels.
    max_depth: metres from the camera to the panel's top edge (the panel spans x in
      [-max_depth / 2, max_depth / 2]).
    ring_step: metres between distance rings (labelled).

  Returns:
    [size, size, 3] uint8 RGB.
  """
  c3, scores, labels, _ = _check_3d(corners_3d, scores, labels)
  if size < 16 or max_depth <= 0 or ring_step <= 0:
    raise ValueError(f'size={size} (>= 16), max_depth={max_depth} and ring_step={ring_step} '
                     '(> 0) make no panel')
  pil = Image.new('RGB', (size, size), BEV_BACKGROUND)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default()
  ppm = (size - 1) / max_depth  # pixels per metre
  cx, cy = (size - 1) / 2, size - 1

  def to_pixels(x, z):
    return cx + np.asarray(x) * ppm, cy - np.asarray(z) * ppm

  draw.line([(cx, 0), (cx, cy)], fill=BEV_GRID, width=1)
  for k in range(1, int(max_depth / ring_step + 1e-9) + 1):
    r = k * ring_step * ppm
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=BEV_GRID, width=1)
    draw.text((cx + 3, cy - r + 1), f'{k * ring_step:g} m', fill=BEV_GRID, font=font)
  draw.polygon([(cx, cy - 6), (cx - 4, cy), (cx + 4, cy)], fill=(255, 255, 255))  # the camera
  line = max(1, round(size / 250))
  for i in np.argsort(scores, kind='stable'):
    if scores[i] < score_threshold or not np.all(np.isfinite(c3[i])):
      continue
    xs, ys = to_pixels(c3[i, :4, 0], c3[i, :4, 2])  # the bottom face
    pts = list(zip(xs.tolist(), ys.tolist(), strict=True))
    color = class_color(int(labels[i]))
    draw.polygon(pts, outline=color, width=line)
    draw.line([pts[0], pts[1]], fill=color, width=line + 2)
  return np.asarray(pil)


def draw_ddd(
    image: np.ndarray,
    corners_2d: np.ndarray,
    corners_3d: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.3,
    max_depth: float = 60.0,
    min_panel: int = 256,
) -> np.ndarray:
  """The image with its projected 3D boxes (:func:`draw_boxes_3d`) and, to its right, the
  bird's-eye view of the same boxes (:func:`draw_birds_eye_view`), as the official debugger
  shows ddd results side by side (docs/parity.md 4.13).

  Args:
    image, corners_2d, corners_3d, scores, labels, class_names, score_threshold: as
      :func:`draw_boxes_3d`.
    max_depth: metres the bird's-eye view spans forward.
    min_panel: the bird's-eye view is a square of the image's height, at least this many pixels
      (the picture is padded below with black when the panel is taller than the image).

  Returns:
    [max(H, S), W + S, 3] uint8 RGB with S = max(H, min_panel).
  """
  drawn = draw_boxes_3d(image, corners_2d, corners_3d, scores, labels, class_names,
                        score_threshold)
  height, width = drawn.shape[:2]
  side = max(height, int(min_panel))
  panel = draw_birds_eye_view(corners_3d, scores, labels, score_threshold, size=side,
                              max_depth=max_depth)
  out = np.zeros((max(height, side), width + side, 3), np.uint8)
  out[:height, :width] = drawn
  out[:side, width:] = panel
  return out


def save_grid(
    images: Sequence[np.ndarray],
    path: str | os.PathLike,
    cols: int = 4,
    pad: int = 2,
) -> np.ndarray:
  """Writes a PNG montage of images (row-major), each top-left aligned in a max-size cell.

  Args:
    images: list of [H_i, W_i, 3] uint8 RGB images (sizes may differ).
    path: output file; parent folders are created; written atomically.
    cols: images per row.
    pad: black pixels between cells.

  Returns:
    The montage, [rows * (H + pad) - pad, cols * (W + pad) - pad, 3] uint8.
  """
  if not images:
    raise ValueError('save_grid needs at least one image')
  images = [_to_rgb_uint8(im) for im in images]
  cols = max(1, min(int(cols), len(images)))
  rows = -(-len(images) // cols)
  cell_h = max(im.shape[0] for im in images)
  cell_w = max(im.shape[1] for im in images)
  grid = np.zeros((rows * (cell_h + pad) - pad, cols * (cell_w + pad) - pad, 3), np.uint8)
  for k, im in enumerate(images):
    r, c = divmod(k, cols)
    y, x = r * (cell_h + pad), c * (cell_w + pad)
    grid[y:y + im.shape[0], x:x + im.shape[1]] = im
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    Image.fromarray(grid).save(tmp, format='PNG')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return grid

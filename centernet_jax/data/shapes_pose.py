"""The built-in shapes_pose data set: stick figures with the 17 COCO joints, in COCO format.

A small person keypoints set for the multi_pose task, generated with numpy + PIL like
:mod:`.shapes` (same textured backgrounds). Each image holds 1 to 3 stick figures 31% to 86% of
the image side tall (40 to 110 px at 128 px), each a torso, a neck, a head with two eyes and
four two-segment limbs at random angles, tilted up to 15 degrees and up to 20% wider or
narrower; figures may overlap (box intersection < 40% of the smaller box) and hang up to 15% of
their size out of the image; 30% of the images have a bar drawn across them, which may hide
joints. Edges are anti-aliased (4x supersampling); JPEG quality 90.

Every figure faces the camera (the eyes say so), so its left joints lie on the image's right:
left and right are told apart by where a joint sits relative to the body, which a horizontal
mirror keeps once the left / right joint labels are swapped (the training flip). Left and right
limbs share the figure's colour on purpose: a colour per side would move with the mirror while
the labels swap, so it would contradict the swapped labels in half of the flipped images (and
it would make a flip that forgets the swap look right).

Annotations (``annotations/person_keypoints_<split>.json``, as COCO writes them): one category
'person' with the 17 COCO joint names and COCO's 19-limb 1-based skeleton; per figure
'keypoints' [x1, y1, v1, ...] in pixels (pixel centres at integer coordinates), v = 2 visible,
1 hidden under a figure drawn later or the bar, 0 outside the image (written as 0, 0, 0);
'num_keypoints' = joints with v > 0; 'bbox' = the joints' box widened by 8% of the figure's
height (the head and feet) and clipped to the image; 'area' = the bbox area; 'iscrowd' 0.

    python -m centernet_jax.data.shapes_pose --out data/shapes_pose [--num_train 600 ...]
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from centernet_jax.data import generated, shapes
from centernet_jax.keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON

VERSION = 1  # bump when the images change, so cached folders are regenerated

HEIGHT_RANGE = (0.31, 0.86)  # figure height / image side
MAX_FIGURES = 3
MAX_OVERLAP = 0.4  # box intersection / smaller box area
OUTSIDE = 0.15  # a figure's box may pass the image border by this fraction of its size
OCCLUDER_FRACTION = 0.3  # images with a bar drawn over the figures
BOX_MARGIN = 0.08  # bbox = joints' box widened by this fraction of the figure height
SUPERSAMPLE = 4
_SPLITS = {'train': 0, 'val': 1}

# Body proportions in units of the figure height; x to the figure's left (the image's right:
# it faces the camera), y down, origin between the hips.
_HEAD = (0.0, -0.44, 0.075)  # centre x, y and radius
_FACE = np.array([[0.0, -0.425], [0.03, -0.455], [-0.03, -0.455], [0.07, -0.44],
                  [-0.07, -0.44]])  # nose, eyes, ears (left first)
_SHOULDER = (0.12, -0.30)
_HIP = (0.075, 0.0)
_ARM = (0.16, 0.15)  # upper arm, forearm
_LEG = (0.23, 0.22)  # thigh, shin
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16))


def _segment(start: np.ndarray, length: float, angle: float, side: int) -> np.ndarray:
  """End of a segment from ``start``; ``angle`` from straight down, positive outwards."""
  return start + length * np.array([side * np.sin(angle), np.cos(angle)])


def figure_joints(rng: np.random.Generator) -> np.ndarray:
  """[17, 2] joints of one figure in units of its height (COCO order), random pose."""
  pts = np.zeros((17, 2))
  pts[:5] = _FACE
  for side, (shoulder, elbow, wrist, hip, knee, ankle) in (
      (1, (5, 7, 9, 11, 13, 15)), (-1, (6, 8, 10, 12, 14, 16))):
    pts[shoulder] = (side * _SHOULDER[0], _SHOULDER[1])
    pts[hip] = (side * _HIP[0], _HIP[1])
    upper = np.deg2rad(rng.uniform(10, 150))
    fore = np.clip(upper + np.deg2rad(rng.uniform(-70, 70)), 0, np.deg2rad(175))
    pts[elbow] = _segment(pts[shoulder], _ARM[0], upper, side)
    pts[wrist] = _segment(pts[elbow], _ARM[1], fore, side)
    thigh = np.deg2rad(rng.uniform(-5, 35))
    pts[knee] = _segment(pts[hip], _LEG[0], thigh, side)
    pts[ankle] = _segment(pts[knee], _LEG[1], thigh + np.deg2rad(rng.uniform(-25, 25)), side)
  return pts


def _pose(rng: np.random.Generator, height: float) -> tuple[np.ndarray, np.ndarray]:
  """Joints [17, 2] and head centre [2] in pixels about the hips: widened and tilted."""
  tilt = np.deg2rad(rng.uniform(-15, 15))
  rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
  shape = np.array([rng.uniform(0.8, 1.2), 1.0]) * height
  joints = (figure_joints(rng) * shape) @ rot.T
  head = (np.array(_HEAD[:2]) * shape) @ rot.T
  return joints, head


def _mask(draw_fn, size: int) -> np.ndarray:
  """[size, size] coverage in [0, 1] of what ``draw_fn(draw, k)`` draws at k x resolution."""
  k = SUPERSAMPLE
  mask = Image.new('L', (size * k, size * k))
  draw_fn(ImageDraw.Draw(mask), k)
  return np.asarray(mask.resize((size, size), Image.BOX), np.float64) / 255.0


def _dot(draw, center, radius: float, k: int) -> None:
  x, y = (np.asarray(center) + 0.5) * k  # pixel centres at integer coordinates
  r = radius * k
  draw.ellipse([x - r, y - r, x + r, y + r], fill=255)


def _body_mask(joints: np.ndarray, head: np.ndarray, height: float, size: int) -> np.ndarray:
  width = max(2.0, 0.045 * height)

  def draw_fn(draw, k):
    pk = lambda p: tuple((np.asarray(p) + 0.5) * k)
    draw.polygon([pk(joints[j]) for j in (5, 6, 12, 11)], fill=255)
    neck = (joints[5] + joints[6]) / 2
    segments = [(neck, head)] + [(joints[a], joints[b]) for a, b in _LIMBS]
    for a, b in segments:
      draw.line([pk(a), pk(b)], fill=255, width=int(round(width * k)))
    for p in joints[5:]:
      _dot(draw, p, width / 2, k)  # round joints
    _dot(draw, head, _HEAD[2] * height, k)

  return _mask(draw_fn, size)


def _eyes_mask(joints: np.ndarray, height: float, size: int) -> np.ndarray:
  def draw_fn(draw, k):
    for p in joints[1:3]:
      _dot(draw, p, max(0.9, 0.02 * height), k)

  return _mask(draw_fn, size)


def _occluder_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """A tilted bar 20% to 40% of the image long across a random place (hides joints: v = 1)."""
  center = rng.uniform(0.2, 0.8, 2) * size
  half = np.array([rng.uniform(0.1, 0.2), rng.uniform(0.03, 0.08)]) * size
  angle = rng.uniform(0, np.pi)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  corners = (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half) @ rot.T + center

  def draw_fn(draw, k):
    draw.polygon([tuple((p + 0.5) * k) for p in corners], fill=255)

  return _mask(draw_fn, size)


def _box(joints: np.ndarray, height: float) -> np.ndarray:
  m = BOX_MARGIN * height
  return np.concatenate([joints.min(0) - m, joints.max(0) + m])


def _place(rng: np.random.Generator, size: int, boxes: list) -> tuple | None:
  """(joints [17, 2] px, head [2] px, height) of a new figure, or None if no room was found."""
  height = size * rng.uniform(*HEIGHT_RANGE)
  joints, head = _pose(rng, height)
  box = _box(joints, height)
  extent = box[2:] - box[:2]
  lo = -box[:2] - OUTSIDE * extent
  hi = size - box[2:] + OUTSIDE * extent
  for _ in range(30):
    shift = rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))
    if not boxes or shapes._overlap(box + np.tile(shift, 2), np.array(boxes)).max() < MAX_OVERLAP:
      boxes.append(box + np.tile(shift, 2))
      return joints + shift, head + shift, height
  return None


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
  """One image [size, size, 3] uint8 RGB and its people (bbox xywh, area, keypoints [17, 3])."""
  img = shapes._background(rng, size)
  figures, boxes = [], []
  for _ in range(int(rng.integers(1, MAX_FIGURES + 1))):
    placed = _place(rng, size, boxes)
    if placed is None:
      continue
    joints, head, height = placed
    body = _body_mask(joints, head, height, size)
    if (body >= 0.5).sum() == 0:
      continue
    col = shapes._object_color(rng, img[body >= 0.5].mean(0))
    eye_col = np.zeros(3) if shapes._luma(col) > 127 else np.full(3, 255.0)
    eyes = _eyes_mask(joints, height, size) * body
    img = img * (1 - body[..., None]) + col * body[..., None]
    img = img * (1 - eyes[..., None]) + eye_col * eyes[..., None]
    figures.append((joints, height, body))
  if figures and rng.random() < OCCLUDER_FRACTION:
    occluder = _occluder_mask(rng, size)
    col = shapes._object_color(rng, img[occluder >= 0.5].mean(0))
    img = img * (1 - occluder[..., None]) + col * occluder[..., None]
    figures.append((None, 0.0, occluder))

  people = []
  for i, (joints, height, _) in enumerate(figures):
    if joints is None:
      continue
    inside = np.all((joints >= 0) & (joints <= size - 1), axis=1)
    ij = np.clip(np.round(joints).astype(int), 0, size - 1)
    hidden = np.zeros(17, bool)
    for _, _, later in figures[i + 1:]:
      hidden |= later[ij[:, 1], ij[:, 0]] >= 0.5
    v = np.where(inside, np.where(hidden, 1, 2), 0)
    x1, y1, x2, y2 = (round(float(c), 2) for c in np.clip(_box(joints, height), 0, size))
    w, h = round(x2 - x1, 2), round(y2 - y1, 2)
    if w < 2 or h < 2 or not v.any():
      continue
    xy = np.where(inside[:, None], np.round(joints, 2), 0.0)
    people.append({'bbox': [x1, y1, w, h], 'area': round(w * h, 2),
                   'keypoints': np.concatenate([xy, v[:, None]], axis=1)})
  img += rng.normal(0, rng.uniform(2, 8), img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8), people


def _write_split(out_dir: str, split: str, num: int, size: int, seed: int) -> str:
  img_dir = os.path.join(out_dir, split)
  os.makedirs(img_dir, exist_ok=True)
  images, annotations = [], []
  for i in range(num):
    rng = np.random.default_rng([seed, _SPLITS[split], i])
    pixels, people = render_image(rng, size)
    file_name = f'{i:06d}.jpg'
    Image.fromarray(pixels).save(os.path.join(img_dir, file_name), quality=90)
    images.append({'id': i + 1, 'file_name': file_name, 'width': size, 'height': size})
    for person in people:
      kps = person['keypoints']
      flat = [float(x) if j % 3 < 2 else int(x) for j, x in enumerate(kps.reshape(-1))]
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': 1,
                          'bbox': person['bbox'], 'area': person['area'], 'iscrowd': 0,
                          'keypoints': flat, 'num_keypoints': int((kps[:, 2] > 0).sum())})
  data = {'info': {'description': f'centernet_jax shapes_pose v{VERSION}, seed {seed}'},
          'images': images, 'annotations': annotations,
          'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person',
                          'keypoints': list(COCO_KEYPOINT_NAMES),
                          'skeleton': [[a + 1, b + 1] for a, b in COCO_SKELETON]}]}
  ann_file = os.path.join(out_dir, 'annotations', f'person_keypoints_{split}.json')
  os.makedirs(os.path.dirname(ann_file), exist_ok=True)
  with open(ann_file, 'w') as f:
    json.dump(data, f)
  return ann_file


def paths(out_dir: str) -> dict:
  """The four data.* paths of a shapes_pose folder."""
  return {f'{s}_{k}': v for s in _SPLITS for k, v in (
      ('annotations', os.path.join(out_dir, 'annotations', f'person_keypoints_{s}.json')),
      ('images', os.path.join(out_dir, s)))}


def generate(out_dir: str, num_train: int = 600, num_val: int = 100, image_size: int = 128,
             seed: int = 0) -> dict:
  """Writes the data set into ``out_dir`` (overwriting files of the same name).

  Returns:
    dict with train_annotations, train_images, val_annotations, val_images paths.
  """
  for split, num in (('train', num_train), ('val', num_val)):
    _write_split(out_dir, split, num, image_size, seed)
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(_meta(num_train, num_val, image_size, seed), f)
  return paths(out_dir)


def _meta(num_train: int, num_val: int, image_size: int, seed: int) -> dict:
  return {'name': 'shapes_pose', 'version': VERSION, 'num_train': num_train, 'num_val': num_val,
          'image_size': image_size, 'seed': seed}


def ensure(out_dir: str, num_train: int, num_val: int, image_size: int, seed: int) -> dict:
  """Generates the data set into ``out_dir`` unless it is already there; returns the paths.

  :func:`centernet_jax.data.generated.ensure`: atomic, and a folder made with other parameters
  (or another data set) is an error: it is never overwritten.
  """
  generated.ensure(out_dir, _meta(num_train, num_val, image_size, seed),
                   lambda d: generate(d, num_train, num_val, image_size, seed), 'shapes_pose')
  return paths(out_dir)



def main(argv: list[str] | None = None) -> None:
  generated.command_line(__doc__, generate, argv)


if __name__ == '__main__':
  main()

"""A second built-in detection set, unlike ``shapes``: for checking that a recipe generalises.

A recipe tuned on :mod:`centernet_jax.data.shapes` may owe its numbers to that set. This one
differs on purpose in everything the first one fixes:

- five other classes (star, hexagon, ring, arrow, ell), told apart by shape;
- grayscale JPEGs (one channel; the loader makes them RGB), objects that differ from the
  background under them by as little as 35 grey levels (the first set: 60 luminance levels);
- objects 4% to 50% of the image side, stretched up to 5:3, rotated up to 45 degrees, 1 to 9
  per image, overlapping up to 40% of the smaller box;
- crowds: 20% of the images hold a cluster of 5 to 12 small objects of one class, annotated as
  one ``iscrowd`` box (as COCO annotates crowds: no instance boxes inside);
- 15% of the images have no object.

Pure function of its parameters, like ``shapes`` (image i comes from the generator seeded by
(seed, split, i)); the same COCO layout, so it is used through the config's paths only:

    python -m centernet_jax.data.shapes_alt --out data/shapes_alt
    python -m centernet_jax.train --config shapes_cornernet --workdir W \\
        --config.data.source=coco_json \\
        --config.data.train_annotations=data/shapes_alt/annotations/instances_train.json \\
        --config.data.train_images=data/shapes_alt/train \\
        --config.data.val_annotations=data/shapes_alt/annotations/instances_val.json \\
        --config.data.val_images=data/shapes_alt/val
"""

from __future__ import annotations

import json
import os

import numpy as np

from centernet_jax.data import generated, shapes

CLASS_NAMES = ('star', 'hexagon', 'ring', 'arrow', 'ell')
VERSION = 1
SIZE_RANGE = (0.04, 0.5)
MAX_OBJECTS = 9
EMPTY_FRACTION = 0.15
CROWD_FRACTION = 0.2
CROWD_SIZE = (5, 12)  # objects in a crowd
CROWD_OBJECT_SIZE = (0.035, 0.07)
MAX_OVERLAP = 0.4
MIN_CONTRAST = 35.0


def _outline(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
  """(outer [K, 2], hole [M, 2] or None) of the class shape in [-0.5, 0.5]^2."""
  name = CLASS_NAMES[cls]
  if name in ('star', 'hexagon', 'ring'):
    k = {'star': 10, 'hexagon': 6, 'ring': 48}[name]
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) - np.pi / 2
    r = np.where(np.arange(k) % 2, 0.2, 0.5) if name == 'star' else np.full(k, 0.5)
    outer = r[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return outer, (outer * rng.uniform(0.45, 0.65) if name == 'ring' else None)
  if name == 'arrow':  # pointing right; mirrored at random
    pts = np.array([[-0.5, -0.15], [0.05, -0.15], [0.05, -0.5], [0.5, 0.0], [0.05, 0.5],
                    [0.05, 0.15], [-0.5, 0.15]])
  else:  # ell
    pts = np.array([[-0.5, -0.5], [-0.1, -0.5], [-0.1, 0.1], [0.5, 0.1], [0.5, 0.5],
                    [-0.5, 0.5]])
  return (pts * [-1, 1] if rng.random() < 0.5 else pts), None


def _shape(rng: np.random.Generator, cls: int, side: float, center: np.ndarray | None,
           size: int, boxes: list) -> tuple[np.ndarray, np.ndarray | None] | None:
  """The shape's polygons in pixels, placed at ``center`` or somewhere its box has room."""
  outer, hole = _outline(cls, rng)
  aspect = np.exp(rng.uniform(np.log(0.6), np.log(5 / 3)))
  angle = np.deg2rad(rng.uniform(-45, 45))
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  scale = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
  outer = (outer * scale) @ rot.T
  k = side / (outer.max(0) - outer.min(0)).max()
  outer = outer * k
  hole = None if hole is None else ((hole * scale) @ rot.T) * k
  lo, hi = outer.min(0), outer.max(0)
  for _ in range(1 if center is not None else 30):
    c = center if center is not None else rng.uniform(1 - lo, size - 1 - hi)
    box = np.concatenate([lo + c, hi + c])
    if not boxes or shapes._overlap(box, np.array(boxes)).max() < MAX_OVERLAP:
      return outer + c, (None if hole is None else hole + c)
  return None


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size] float64 grey levels: a gradient, texture and faint lines."""
  rgb = shapes._background(rng, size)
  return rgb @ np.array([0.299, 0.587, 0.114])


def _paint(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """``img`` with the shape of coverage ``alpha`` painted at a level >= MIN_CONTRAST from it."""
  under = float(img[alpha >= 0.5].mean())
  levels = [v for v in rng.uniform(0, 255, 20) if abs(v - under) >= MIN_CONTRAST]
  level = levels[0] if levels else (0.0 if under > 127 else 255.0)
  shade = rng.uniform(-15, 15) * np.linspace(-1, 1, img.shape[0])[:, None]
  return img * (1 - alpha) + np.clip(level + shade, 0, 255) * alpha


def _coverage(outer: np.ndarray, hole: np.ndarray | None, size: int) -> np.ndarray:
  alpha = shapes._alpha(outer, size)
  return alpha if hole is None else np.clip(alpha - shapes._alpha(hole, size), 0, 1)


def _box(alpha: np.ndarray) -> list[int] | None:
  ys, xs = np.nonzero(alpha >= 0.5)
  if len(xs) == 0:
    return None
  return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
  """One grayscale image [size, size] uint8 and its objects (crowds with 'iscrowd' 1)."""
  img = _background(rng, size)
  objects, boxes = [], []
  if rng.random() < CROWD_FRACTION:  # a crowd first, so that it has room
    cls = int(rng.integers(len(CLASS_NAMES)))
    region = size * rng.uniform(0.2, 0.4)
    origin = rng.uniform(0, size - region, 2)
    alpha = np.zeros((size, size))
    for _ in range(int(rng.integers(CROWD_SIZE[0], CROWD_SIZE[1] + 1))):
      side = size * rng.uniform(*CROWD_OBJECT_SIZE)
      shape = _shape(rng, cls, side, origin + rng.uniform(side / 2, region - side / 2, 2),
                     size, [])
      one = _coverage(*shape, size)
      img = _paint(rng, img, one) if one.max() > 0 else img
      alpha = np.maximum(alpha, one)
    box = _box(alpha)
    if box is not None:
      boxes.append(np.array(box, np.float64))
      objects.append({'category': cls, 'bbox': [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                      'area': round(float(alpha.sum()), 2), 'iscrowd': 1})
  num = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
  for _ in range(num):
    cls = int(rng.integers(len(CLASS_NAMES)))
    side = size * np.exp(rng.uniform(*np.log(SIZE_RANGE)))
    shape = _shape(rng, cls, side, None, size, boxes)
    if shape is None:
      continue
    alpha = _coverage(*shape, size)
    box = _box(alpha)
    if box is None:
      continue
    img = _paint(rng, img, alpha)
    boxes.append(np.array(box, np.float64))
    objects.append({'category': cls, 'bbox': [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    'area': round(float(alpha.sum()), 2), 'iscrowd': 0})
  img += rng.normal(0, rng.uniform(2, 10), img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def generate(out_dir: str, num_train: int = 600, num_val: int = 100, image_size: int = 128,
             seed: int = 0) -> dict:
  """Writes the data set into ``out_dir``; returns the four data.* paths (as shapes.paths)."""
  for split, num in (('train', num_train), ('val', num_val)):
    shapes.write_split(out_dir, split, num, seed, lambda rng: render_image(rng, image_size),
                       CLASS_NAMES, f'centernet_jax shapes_alt v{VERSION}, seed {seed}')
  meta = {'version': VERSION, 'num_train': num_train, 'num_val': num_val,
          'image_size': image_size, 'seed': seed}
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return shapes.paths(out_dir)


def main(argv: list[str] | None = None) -> None:
  generated.command_line(__doc__, generate, argv)


if __name__ == '__main__':
  main()

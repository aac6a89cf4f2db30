"""The built-in shapes data set: a small COCO-format detection set generated with numpy + PIL.

Four classes told apart by shape only (every class takes every colour): circle, square,
triangle, cross. Objects span 6% to 60% of the image side (log-uniform, so most are small or
medium), are stretched up to 4:3 and rotated up to 20 degrees, 1 to 6 per image with limited
overlap (box intersection < 25% of the smaller box); 8% of the images have no object.
Backgrounds are colour gradients with low-frequency texture, faint lines and pixel noise;
every object differs from the background under it in luminance, so the shapes stay clear at
small sizes. Edges are anti-aliased (4x supersampling); images are saved as JPEG (quality 90).

Every image comes from its own generator seeded by (seed, split, index), so the data set is a
pure function of the parameters (and image i does not depend on how many images are made).

    python -m centernet_jax.data.shapes --out data/shapes [--num_train 600 --num_val 100]
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from centernet_jax.data import generated

CLASS_NAMES = ('circle', 'square', 'triangle', 'cross')
VERSION = 1  # bump when the images change, so cached folders are regenerated
SIZE_RANGE = (0.06, 0.6)  # object side / image side
MAX_OBJECTS = 6
EMPTY_FRACTION = 0.08
MAX_OVERLAP = 0.25  # box intersection / smaller box area: no object hides another
SUPERSAMPLE = 4
_SPLITS = {'train': 0, 'val': 1}


def _unit_polygon(cls: int, rng: np.random.Generator) -> np.ndarray:
  """[K, 2] vertices of the class shape in [-0.5, 0.5]^2 (x right, y down)."""
  name = CLASS_NAMES[cls]
  if name == 'circle':
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
  if name == 'square':
    return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
  if name == 'triangle':
    tri = np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    return tri * [1, -1] if rng.random() < 0.5 else tri  # pointing up or down
  a = 1 / 6  # cross: arms one third of the side thick
  return np.array([[-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a], [a, 0.5],
                   [-a, 0.5], [-a, a], [-0.5, a], [-0.5, -a], [-a, -a]])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
  return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _luma(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114])


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
  """[size, size, 3] in [-1, 1], a bilinearly upsampled random grid."""
  g = rng.uniform(0, 255, (grid, grid, 3)).astype(np.uint8)
  up = Image.fromarray(g).resize((size, size), Image.BILINEAR)
  return np.asarray(up, np.float64) / 127.5 - 1.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size, 3] float64 in [0, 255]: gradient + texture + faint lines."""
  c0 = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.1, 0.95)) * 255
  c1 = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.1, 0.95)) * 255
  theta = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
  t = (xx * np.cos(theta) + yy * np.sin(theta))
  t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
  img = c0 * (1 - t[..., None]) + c1 * t[..., None]
  img += rng.uniform(5, 25) * _smooth_noise(rng, size, int(rng.integers(3, 9)))
  canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  layer = Image.new('RGB', (size, size))
  draw = ImageDraw.Draw(layer)
  for _ in range(int(rng.integers(0, 5))):
    pts = rng.uniform(0, size, 4)
    draw.line(list(pts), fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
              width=int(rng.integers(1, 3)))
  lines = np.asarray(layer, np.float64)
  on = lines.sum(-1, keepdims=True) > 0
  return np.where(on, 0.7 * np.asarray(canvas, np.float64) + 0.3 * lines,
                  np.asarray(canvas, np.float64))


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection of box ``a`` [4] with boxes ``b`` [N, 4] over the smaller area -> [N]."""
  lt = np.maximum(a[:2], b[:, :2])
  rb = np.minimum(a[2:], b[:, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return inter / np.minimum(area(a), area(b))


def _place(rng: np.random.Generator, cls: int, size: int, boxes: list) -> np.ndarray | None:
  """Vertices [K, 2] in image pixels of a new object, or None if no room was found."""
  side = size * np.exp(rng.uniform(*np.log(SIZE_RANGE)))
  aspect = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
  wh = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
  angle = np.deg2rad(rng.uniform(-20, 20))
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  pts = (_unit_polygon(cls, rng) * wh) @ rot.T
  pts *= side / (pts.max(0) - pts.min(0)).max()
  lo, hi = pts.min(0), pts.max(0)
  for _ in range(30):
    center = rng.uniform(1 - lo, size - 1 - hi)
    box = np.concatenate([lo + center, hi + center])
    if not boxes or _overlap(box, np.array(boxes)).max() < MAX_OVERLAP:
      return pts + center
  return None


def _alpha(pts: np.ndarray, size: int) -> np.ndarray:
  """[size, size] coverage in [0, 1] of the polygon (pixel i spans [i, i + 1))."""
  k = SUPERSAMPLE
  mask = Image.new('L', (size * k, size * k))
  ImageDraw.Draw(mask).polygon([tuple(p) for p in pts * k], fill=255)
  return np.asarray(mask.resize((size, size), Image.BOX), np.float64) / 255.0


def _object_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
  """A saturated colour whose luminance differs from ``under`` (RGB 0-255) by >= 60."""
  for _ in range(50):
    col = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.25, 1.0)) * 255
    if abs(_luma(col) - _luma(under)) >= 60:
      return col
  return np.zeros(3) if _luma(under) > 127 else np.full(3, 255.0)


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
  """One image [size, size, 3] uint8 RGB and its objects (category index, xywh box, area)."""
  img = _background(rng, size)
  num = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
  objects, boxes = [], []
  for _ in range(num):
    cls = int(rng.integers(len(CLASS_NAMES)))
    pts = _place(rng, cls, size, boxes)
    if pts is None:
      continue
    alpha = _alpha(pts, size)
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
      continue
    col = _object_color(rng, img[alpha >= 0.5].mean(0))
    shade = 1 + rng.uniform(-0.12, 0.12) * np.linspace(-1, 1, size)[None, :, None]
    img = img * (1 - alpha[..., None]) + np.clip(col * shade, 0, 255) * alpha[..., None]
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    boxes.append(np.array([x1, y1, x2, y2], np.float64))
    objects.append({'category': cls, 'bbox': [x1, y1, x2 - x1, y2 - y1],
                    'area': round(float(alpha.sum()), 2)})
  img += rng.normal(0, rng.uniform(2, 8), img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def write_split(out_dir: str, split: str, num: int, seed: int, render, class_names, description: str
                ) -> str:
  """Renders ``num`` images of one split and writes them with their COCO instances json.

  ``render(rng)`` -> (pixels uint8 [H, W, 3] or [H, W], objects with 'category' (0-based),
  'bbox' xywh, 'area' and optionally 'iscrowd'); image ``i`` uses the generator seeded by
  (seed, split, i). Returns the annotation file's path.
  """
  img_dir = os.path.join(out_dir, split)
  os.makedirs(img_dir, exist_ok=True)
  images, annotations = [], []
  for i in range(num):
    pixels, objects = render(np.random.default_rng([seed, _SPLITS[split], i]))
    file_name = f'{i:06d}.jpg'
    Image.fromarray(pixels).save(os.path.join(img_dir, file_name), quality=90)
    images.append({'id': i + 1, 'file_name': file_name, 'width': pixels.shape[1],
                   'height': pixels.shape[0]})
    for obj in objects:
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1,
                          'category_id': obj['category'] + 1, 'bbox': obj['bbox'],
                          'area': obj['area'], 'iscrowd': int(obj.get('iscrowd', 0))})
  data = {'info': {'description': description}, 'images': images, 'annotations': annotations,
          'categories': [{'id': k + 1, 'name': n, 'supercategory': 'shape'}
                         for k, n in enumerate(class_names)]}
  ann_file = os.path.join(out_dir, 'annotations', f'instances_{split}.json')
  os.makedirs(os.path.dirname(ann_file), exist_ok=True)
  with open(ann_file, 'w') as f:
    json.dump(data, f)
  return ann_file


def paths(out_dir: str) -> dict:
  """The four data.* paths of a shapes folder."""
  return {f'{s}_{k}': v for s in _SPLITS for k, v in (
      ('annotations', os.path.join(out_dir, 'annotations', f'instances_{s}.json')),
      ('images', os.path.join(out_dir, s)))}


def generate(out_dir: str, num_train: int = 600, num_val: int = 100, image_size: int = 128,
             seed: int = 0) -> dict:
  """Writes the data set into ``out_dir`` (overwriting files of the same name).

  Returns:
    dict with train_annotations, train_images, val_annotations, val_images paths.
  """
  for split, num in (('train', num_train), ('val', num_val)):
    write_split(out_dir, split, num, seed, lambda rng: render_image(rng, image_size), CLASS_NAMES,
                f'centernet_jax shapes v{VERSION}, seed {seed}')
  meta = {'version': VERSION, 'num_train': num_train, 'num_val': num_val,
          'image_size': image_size, 'seed': seed}
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return paths(out_dir)


def ensure(out_dir: str, num_train: int, num_val: int, image_size: int, seed: int) -> dict:
  """Generates the data set into ``out_dir`` unless it is already there; returns the paths.

  :func:`centernet_jax.data.generated.ensure`: atomic, and a folder made with other parameters
  is an error (it is never overwritten).
  """
  meta = {'version': VERSION, 'num_train': num_train, 'num_val': num_val,
          'image_size': image_size, 'seed': seed}
  generated.ensure(out_dir, meta,
                   lambda d: generate(d, **{k: v for k, v in meta.items() if k != 'version'}),
                   'shapes', require_meta=False)
  return paths(out_dir)



def main(argv: list[str] | None = None) -> None:
  generated.command_line(__doc__, generate, argv)


if __name__ == '__main__':
  main()

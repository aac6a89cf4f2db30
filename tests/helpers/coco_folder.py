"""A tiny COCO-format folder for the data tests, and a cv2.warpAffine oracle.

Non-contiguous, unsorted category ids; a grayscale JPEG; a PNG in a sub-folder; an image without
objects; a crowd box; a box partly outside its image.
"""

import json
import os

import numpy as np
from PIL import Image

from centernet_jax.data.config import data_config

CATEGORIES = [{'id': 12, 'name': 'zebra'}, {'id': 3, 'name': 'car'}, {'id': 7, 'name': 'train'}]
IMAGES = [  # id, file_name, (H, W), mode
    (1, 'a.jpg', (40, 48), 'RGB'), (2, 'gray.jpg', (44, 36), 'L'),
    (3, 'sub/c.png', (40, 40), 'RGB'), (4, 'empty.jpg', (32, 32), 'RGB')]
ANNOTATIONS = [  # id, image_id, category_id, bbox xywh, iscrowd
    (1, 1, 7, [4, 5, 10, 8], 0), (2, 1, 3, [0, 0, 48, 40], 1), (3, 1, 12, [40, 30, 20, 20], 0),
    (4, 2, 12, [2.5, 3.5, 20, 30], 0), (5, 3, 3, [10, 10, 15, 5], 0)]
LABEL = {3: 0, 7: 1, 12: 2}

# Training without augmentation: the affine is the plain centred resize.
NO_AUG = dict(rand_crop=False, shift=0.0, scale=0.0, flip=0.0, color_aug=False,
              mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def pixels(h: int, w: int, mode: str, seed: int) -> Image.Image:
  """A smooth random image (JPEG keeps it close)."""
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8))
  img = img.resize((w, h), Image.BILINEAR)
  return img.convert(mode)


def write_coco(root: str, images=IMAGES, anns=ANNOTATIONS, name: str = 'instances.json',
               raw: dict | None = None, categories=CATEGORIES) -> str:
  """Writes the images (if absent) and the json; ``raw`` replaces top-level json entries."""
  os.makedirs(root, exist_ok=True)
  for image_id, file_name, (h, w), mode in images:
    path = os.path.join(root, file_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
      pixels(h, w, mode, image_id).save(path)
  data = {'images': [{'id': i, 'file_name': f, 'height': h, 'width': w}
                     for i, f, (h, w), _ in images],
          'annotations': [{'id': a, 'image_id': i, 'category_id': c, 'bbox': b, 'iscrowd': z,
                           'area': b[2] * b[3]} for a, i, c, b, z in anns],
          'categories': categories}
  data.update(raw or {})
  ann_file = os.path.join(root, name)
  with open(ann_file, 'w') as f:
    json.dump(data, f)
  return ann_file


def coco_cfg(root: str, ann_file: str, **kw):
  """``config.data`` reading the folder as both splits: 64 px input, max_objs 4."""
  cfg = data_config()
  cfg.source = 'coco_json'
  cfg.train_annotations = cfg.val_annotations = ann_file
  cfg.train_images = cfg.val_images = root
  cfg.input_size = 64
  cfg.max_objs = 4
  cfg.num_parallel_calls = 2
  cfg.update(kw)
  return cfg


def np_warp(img: np.ndarray, trans: np.ndarray, out_hw) -> np.ndarray:
  """cv2.warpAffine oracle: bilinear, zero border, integer pixel centres."""
  inv = np.linalg.inv(np.vstack([trans, [0, 0, 1]]))[:2]
  ys, xs = np.mgrid[0:out_hw[0], 0:out_hw[1]]
  sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  h, w = img.shape[:2]

  def at(y, x):
    ok = ((y >= 0) & (y < h) & (x >= 0) & (x < w))[..., None]
    return np.where(ok, img[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0.0)

  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
          fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))

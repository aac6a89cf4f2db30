"""Drawing detections on images and writing image montages (PIL + numpy only)."""

from __future__ import annotations

import colorsys
import os
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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
) -> np.ndarray:
  """Draws boxes with "name score" captions, one colour per class.

  Args:
    image: [H, W, 3] uint8 RGB (float in [0, 1] or [0, 255] and greyscale are converted).
    boxes: [N, 4] xyxy in the image's pixels.
    scores: [N] scores; only those >= score_threshold are drawn (lowest first, so the best box
      ends on top).
    labels: [N] int contiguous labels.
    class_names: label -> name, as a list or a dict; None (or a missing label) prints the label.
    score_threshold: minimum score to draw.

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
    text = f'{name} {scores[i]:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    # Caption above the box, or inside it when the box touches the top edge.
    ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1
    tx = min(max(x1, 0), max(width - tw - 2, 0))
    draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
    draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
  return np.asarray(pil)


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

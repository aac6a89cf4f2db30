"""The built-in synthetic KITTI set: cuboids on a ground plane seen by a KITTI-like camera.

Cars, pedestrians and cyclists are cuboids of their class's typical size (KITTI's mean h, w, l
with jitter) standing on a flat ground plane 1.65 m below the camera (KITTI's camera height), at
depths of 5-25 m, anywhere across the view (some leave the image: truncation), turned by a
random rotation_y. They are rendered through the KITTI P2 of the left colour camera scaled to the
image (default 384 x 128, KITTI's aspect): filled faces in the class's colour family, shaded by a
fixed light, the front face (the heading, +l/2) near white and the back face near black so the
heading shows; objects are painted far to near (back faces culled), over a ground with
perspective texture (2 m tiles and dashed lane lines, fading with distance) and a sky with a
skyline. Edges are anti-aliased (2x supersampling), pixel noise is added.

The labels are computed from the geometry: the 3D values are drawn and rounded to the label
files' 2 decimals first, and everything else follows from the rounded values. The 2D box is the
bounds of the 8 projected corners clipped to the image ([0, W - 1] x [0, H - 1], as KITTI);
alpha = rotation_y - atan2(x, z) wrapped to [-pi, pi); truncation = 1 - clipped box area / full
box area; occlusion level from the fraction of the object's silhouette that nearer objects cover
(< 0.1: 0, < 0.5: 1, else 2). Objects that are mostly hidden (covered >= 0.8 or truncated > 0.75)
or smaller than 2 px are labelled DontCare over their clipped 2D box, as KITTI does for objects
it does not label; objects that leave no pixel are not labelled.

Written in the official layout (read by :func:`centernet_jax.data.kitti.load_kitti`)::

    <out>/training/{image_2/<id>.png, label_2/<id>.txt, calib/<id>.txt}
    <out>/ImageSets/train.txt, val.txt     ids 000000.. (train first, then val)
    <out>/meta.json                        the parameters

The KITTI difficulty rules' pixel heights select only near objects on small images: scale them
by :func:`pixel_scale` to compare with KITTI depths.

Every image comes from its own generator seeded by (seed, split, index): the set is a pure
function of the parameters and image i does not depend on how many images are made.

    python -m centernet_jax.data.shapes_ddd --out data/shapes_ddd [--num_train 300 --num_val 50]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from centernet_jax.data import generated, kitti

VERSION = 2  # bump when the images or labels change, so cached folders are regenerated
# P2 of KITTI object training image 000000 (1242 x 375), the left colour camera.
KITTI_P2 = np.array([[721.5377, 0.0, 609.5593, 44.85728],
                     [0.0, 721.5377, 172.854, 0.2163791],
                     [0.0, 0.0, 1.0, 0.002745884]])
KITTI_SIZE = (1242, 375)  # width, height
CAMERA_HEIGHT = 1.65  # metres above the ground (KITTI's setup)
# 5-25 m here: a 384-px-wide image sees 3.2x coarser than KITTI's 1242 px, so a car at 25 m covers
# the pixels of one at 80 m on KITTI, about the end of KITTI's labelled range (experiments/ddd.md).
DEPTH_RANGE = (5.0, 25.0)
MAX_OBJECTS = 8
CLASS_PROBS = {'Car': 0.6, 'Pedestrian': 0.25, 'Cyclist': 0.15}
# (h, w, l) mean and standard deviation in metres, about KITTI's per-class statistics.
CLASS_DIMS = {'Car': ((1.53, 1.63, 3.88), (0.10, 0.08, 0.30)),
              'Pedestrian': ((1.76, 0.66, 0.84), (0.11, 0.07, 0.15)),
              'Cyclist': ((1.74, 0.60, 1.76), (0.09, 0.08, 0.15))}
CLASS_HUES = {'Car': (0.55, 0.72), 'Pedestrian': (0.95, 1.08), 'Cyclist': (0.22, 0.40)}
SUPERSAMPLE = 2
DONT_CARE_COVERED = 0.8  # silhouette fraction covered by nearer objects -> DontCare
DONT_CARE_TRUNCATED = 0.75
_SPLITS = {'train': 0, 'val': 1}
# Faces as corner indices (kitti.box3d_corners order) and their normals in the object frame.
_FACES = ((0, 1, 5, 4), (2, 3, 7, 6), (3, 0, 4, 7), (1, 2, 6, 5), (4, 5, 6, 7), (0, 1, 2, 3))
_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, -1, 0], [0, 1, 0]], float)
_LIGHT = np.array([-0.3, -1.0, -0.4]) / np.linalg.norm([-0.3, -1.0, -0.4])  # towards the light
_DONT_CARE = {'type': 'DontCare', 'truncated': -1.0, 'occluded': -1, 'alpha': -10.0,
              'dimensions': [-1.0, -1.0, -1.0], 'location': [-1000.0, -1000.0, -1000.0],
              'rotation_y': -10.0}


def pixel_scale(width: int) -> float:
  """Image pixels per KITTI pixel, width / 1242 (the scale of :func:`camera_p2`).

  The KITTI difficulty rules' minimum box heights (40 / 25 / 25 px on 1242 x 375 images) keep
  only near objects on a small image (at 384 x 128, moderate cars are those within ~13 m);
  multiplied by this scale they select the same depths as on KITTI.
  """
  return width / KITTI_SIZE[0]


def camera_p2(width: int, height: int) -> np.ndarray:
  """KITTI's P2 for a ``width`` x ``height`` image: scaled by width / 1242, centred vertically.

  Returns:
    [3, 4] float64 P2 = A @ KITTI_P2 with A = [[s, 0, 0], [0, s, dy], [0, 0, 1]], s = width / 1242
    and dy = (height - 375 s) / 2: the projection of the KITTI camera's image scaled and padded.
  """
  s = pixel_scale(width)
  a = np.array([[s, 0, 0], [0, s, (height - KITTI_SIZE[1] * s) / 2], [0, 0, 1]])
  return a @ KITTI_P2


def _camera_centre(P2: np.ndarray) -> np.ndarray:
  """The camera centre C with P2 @ [C; 1] = 0."""
  return -np.linalg.solve(P2[:, :3], P2[:, 3])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  k = (np.array([5.0, 3.0, 1.0]) + (h % 1.0) * 6) % 6
  return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grid: tuple[int, int]):
  """[h, w] in [-1, 1], a bilinearly upsampled random grid."""
  g = rng.uniform(0, 255, grid).astype(np.uint8)
  return np.asarray(Image.fromarray(g).resize(shape[::-1], Image.BILINEAR), float) / 127.5 - 1


def _background(rng: np.random.Generator, P2: np.ndarray, width: int, height: int) -> np.ndarray:
  """[H * SS, W * SS, 3] float in [0, 255]: textured ground below the horizon, sky above."""
  ss = SUPERSAMPLE
  h, w = height * ss, width * ss
  v, u = (np.mgrid[0:h, 0:w] + 0.5) / ss - 0.5  # image coordinates of the sub-pixel centres
  rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(P2[:, :3]).T
  centre = _camera_centre(P2)
  t = np.where(rays[..., 1] > 1e-6, (CAMERA_HEIGHT - centre[1]) / np.maximum(rays[..., 1], 1e-6),
               np.inf)
  ground = np.isfinite(t) & (t * rays[..., 2] < 400)
  gx = np.where(ground, centre[0] + t * rays[..., 0], 0)
  gz = np.where(ground, centre[2] + t * rays[..., 2], 400)
  fade = np.exp(-gz / 25)
  road = _hsv_to_rgb(rng.uniform(0.05, 0.15), rng.uniform(0, 0.25), rng.uniform(0.3, 0.5)) * 255
  tiles = np.sign(np.sin(np.pi * gx / 2) * np.sin(np.pi * gz / 2))
  lane = rng.uniform(1.5, 2.2)
  marks = (np.minimum(np.abs(gx - lane), np.abs(gx + lane)) < 0.08) & ((gz % 6) < 3)
  shade = 1 + fade * (0.08 * tiles + 0.06 * _smooth_noise(rng, (h, w), (6, 16)))
  ground_rgb = road * shade[..., None]
  ground_rgb = np.where((marks & ground)[..., None], 0.4 * ground_rgb + 0.6 * 235, ground_rgb)
  haze = (1 - fade)[..., None] * 0.35
  sky_hi = _hsv_to_rgb(rng.uniform(0.55, 0.62), rng.uniform(0.2, 0.6), rng.uniform(0.7, 1)) * 255
  sky_lo = _hsv_to_rgb(rng.uniform(0.1, 0.6), rng.uniform(0, 0.2), rng.uniform(0.75, 1)) * 255
  r = np.clip(v / max(P2[1, 2], 1), 0, 1)[..., None]
  sky = sky_hi * (1 - r) + sky_lo * r + 10 * _smooth_noise(rng, (h, w), (4, 10))[..., None]
  img = np.where(ground[..., None], ground_rgb * (1 - haze) + sky_lo * haze, sky)
  horizon = P2[1, 2] * ss
  for _ in range(int(rng.integers(0, 7))):  # skyline: flat blocks standing on the horizon
    x0 = rng.uniform(-0.1, 1) * w
    bw, bh = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.3) * h
    col = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.35, 0.8)) * 255
    rows = slice(max(int(horizon - bh), 0), max(int(horizon), 0))
    img[rows, max(int(x0), 0):max(int(x0 + bw), 0)] = col
  return img


def _sample_objects(rng: np.random.Generator, P2: np.ndarray, width: int) -> list[dict]:
  """3D objects (type, dimensions, location, rotation_y; rounded to 2 decimals), apart in BEV."""
  names = list(CLASS_PROBS)
  probs = np.array([CLASS_PROBS[n] for n in names])
  placed: list[tuple[float, float, float]] = []  # (x, z, radius)
  objects = []
  for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
    kind = names[int(rng.choice(len(names), p=probs))]
    mean, std = CLASS_DIMS[kind]
    dims = np.round(np.asarray(mean) + np.asarray(std) * np.clip(rng.normal(size=3), -2, 2), 2)
    radius = 0.5 * float(np.hypot(dims[1], dims[2])) + 0.3
    for _ in range(30):
      z = rng.uniform(*DEPTH_RANGE)
      lo, hi = ((m - P2[0, 2]) * z / P2[0, 0] for m in (-0.1 * width, 1.1 * width))
      x = rng.uniform(lo, hi)
      if all(np.hypot(x - px, z - pz) > radius + pr for px, pz, pr in placed):
        break
    else:
      continue
    placed.append((x, z, radius))
    y = CAMERA_HEIGHT + rng.uniform(-0.05, 0.05)
    objects.append({'type': kind, 'dimensions': dims.tolist(),
                    'location': np.round([x, y, z], 2).tolist(),
                    'rotation_y': round(float(rng.uniform(-np.pi, np.pi)), 2)})
  return objects


def _faces(obj: dict, centre: np.ndarray) -> list[tuple[int, np.ndarray]]:
  """(face index, [4, 3] corners) of the faces turned towards the camera centre."""
  corners = kitti.box3d_corners(np.array(obj['dimensions']), np.array(obj['location']),
                                np.array(obj['rotation_y']))
  c, s = np.cos(obj['rotation_y']), np.sin(obj['rotation_y'])
  normals = _NORMALS @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
  out = []
  for k, face in enumerate(_FACES):
    pts = corners[list(face)]
    if normals[k] @ (centre - pts.mean(0)) > 0:
      out.append((k, pts))
  return out


def _face_colour(base: np.ndarray, k: int, normal: np.ndarray) -> tuple[int, ...]:
  """The colour of face ``k`` (``_FACES`` order) with world normal ``normal``.

  Sides and top are the base colour shaded by the fixed light; the front (the heading, +l/2) is
  near white and the back near black whatever the light, so a heading and its reverse look apart.
  """
  col = base * (0.55 + 0.45 * max(0.0, float(normal @ _LIGHT)))
  if k == 0:  # front face (heading)
    col = 0.2 * col + 0.8 * 245
  elif k == 1:  # back face
    col = 0.25 * col
  return tuple(int(x) for x in np.clip(np.round(col), 0, 255))


def render_scene(rng: np.random.Generator, width: int = 384, height: int = 128,
                 P2: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
  """One random scene: its image and its labels.

  Args:
    rng: the image's generator.
    width, height: image size in pixels.
    P2: [3, 4] projection; default :func:`camera_p2`.

  Returns:
    ([height, width, 3] uint8 RGB, objects in the label form of
    :func:`centernet_jax.data.kitti.parse_label_line`, in sampling order).
  """
  P2 = camera_p2(width, height) if P2 is None else np.asarray(P2, float)
  background = _background(rng, P2, width, height)
  return render(rng, _sample_objects(rng, P2, width), background, P2)


def render(rng: np.random.Generator, objects: list[dict], background: np.ndarray,
           P2: np.ndarray) -> tuple[np.ndarray, list[dict]]:
  """Paints cuboids over a background and labels them.

  Args:
    rng: draws the colours and the noise.
    objects: dicts with type, dimensions (h, w, l), location (bottom centre), rotation_y.
    background: [H * SUPERSAMPLE, W * SUPERSAMPLE, 3] float RGB in [0, 255].
    P2: [3, 4] projection.

  Returns:
    ([H, W, 3] uint8 RGB, the labels: see the module docstring; objects that leave no visible
    pixel are left out).
  """
  ss, centre = SUPERSAMPLE, _camera_centre(P2)
  height, width = background.shape[0] // ss, background.shape[1] // ss
  canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  order = sorted(range(len(objects)), key=lambda i: -np.hypot(objects[i]['location'][0],
                                                              objects[i]['location'][2]))
  masks = {}
  for i in order:  # far to near: the painter's order
    obj = objects[i]
    lo, hi = CLASS_HUES[obj['type']]
    base = _hsv_to_rgb(rng.uniform(lo, hi), rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.95)) * 255
    mask = Image.new('1', (width, height))
    mask_draw = ImageDraw.Draw(mask)
    c, s = np.cos(obj['rotation_y']), np.sin(obj['rotation_y'])
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    for k, pts in _faces(obj, centre):
      uv = kitti.project(pts, P2)
      # PIL pixel k is centred on k: image pixel j spans sub-pixels ss*j .. ss*j + ss - 1.
      draw.polygon([tuple(p) for p in uv * ss + (ss - 1) / 2],
                   fill=_face_colour(base, k, rot @ _NORMALS[k]))
      mask_draw.polygon([tuple(p) for p in uv], fill=1)
    masks[i] = np.asarray(mask, bool)
  image = np.asarray(canvas.resize((width, height), Image.BOX), float)
  image += rng.normal(0, rng.uniform(1, 3), image.shape)
  labels = _labels(objects, order, masks, P2, width, height)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), labels


def _area(box: np.ndarray) -> float:
  return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def _labels(objects: list[dict], order: list[int], masks: dict, P2: np.ndarray, width: int,
            height: int) -> list[dict]:
  """Label dicts from the geometry and the silhouettes (``masks``, drawn in ``order``)."""
  labels = []
  for i, obj in enumerate(objects):
    uv = kitti.project(kitti.box3d_corners(np.array(obj['dimensions']),
                                           np.array(obj['location']),
                                           np.array(obj['rotation_y'])), P2)
    full = np.concatenate([uv.min(0), uv.max(0)])
    box = np.clip(full, 0, [width - 1, height - 1, width - 1, height - 1])
    nearer = np.zeros((height, width), bool)
    for j in order[order.index(i) + 1:]:
      nearer |= masks[j]
    own = masks[i].sum()
    visible = int((masks[i] & ~nearer).sum())
    if visible == 0 or box[2] - box[0] < 1 or box[3] - box[1] < 1:
      continue
    covered = 1 - visible / own
    truncated = 1 - _area(box) / _area(full)
    if covered >= DONT_CARE_COVERED or truncated > DONT_CARE_TRUNCATED or min(
        box[2] - box[0], box[3] - box[1]) < 2:
      labels.append(dict(_DONT_CARE, bbox=box.tolist()))
      continue
    alpha = kitti.alpha_from_rotation_y(obj['rotation_y'], np.array(obj['location']))
    labels.append({'type': obj['type'], 'truncated': round(float(truncated), 2),
                   'occluded': 0 if covered < 0.1 else 1 if covered < 0.5 else 2,
                   'alpha': float(alpha), 'bbox': box.tolist(), **obj})
  return labels


def paths(out_dir: str) -> dict:
  """The data.* paths of a folder: kitti_root, train_split, val_split."""
  return {'kitti_root': out_dir,
          **{f'{s}_split': os.path.join(out_dir, 'ImageSets', f'{s}.txt') for s in _SPLITS}}


def generate(out_dir: str, num_train: int = 300, num_val: int = 50, width: int = 384,
             height: int = 128, seed: int = 0) -> dict:
  """Writes the data set into ``out_dir`` (overwriting files of the same name).

  Returns:
    :func:`paths` of ``out_dir``.
  """
  base = os.path.join(out_dir, 'training')
  for d in ('image_2', 'label_2', 'calib'):
    os.makedirs(os.path.join(base, d), exist_ok=True)
  os.makedirs(os.path.join(out_dir, 'ImageSets'), exist_ok=True)
  P2 = camera_p2(width, height)
  image_id = 0
  for split, num in (('train', num_train), ('val', num_val)):
    names = []
    for i in range(num):
      pixels, objects = render_scene(np.random.default_rng([seed, _SPLITS[split], i]), width,
                                     height, P2)
      name = f'{image_id:06d}'
      Image.fromarray(pixels).save(os.path.join(base, 'image_2', name + '.png'), compress_level=1)
      kitti.write_label_file(os.path.join(base, 'label_2', name + '.txt'), objects)
      kitti.write_calib(os.path.join(base, 'calib', name + '.txt'), P2)
      names.append(name)
      image_id += 1
    with open(paths(out_dir)[f'{split}_split'], 'w') as f:
      f.writelines(n + '\n' for n in names)
  meta = {'version': VERSION, 'num_train': num_train, 'num_val': num_val, 'width': width,
          'height': height, 'seed': seed}
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return paths(out_dir)


def ensure(out_dir: str, num_train: int = 300, num_val: int = 50, width: int = 384,
           height: int = 128, seed: int = 0) -> dict:
  """Generates the data set into ``out_dir`` unless it is already there; returns the paths.

  :func:`centernet_jax.data.generated.ensure`: atomic, and a folder made with other parameters
  is an error.
  """
  meta = {'version': VERSION, 'num_train': num_train, 'num_val': num_val, 'width': width,
          'height': height, 'seed': seed}
  generated.ensure(out_dir, meta,
                   lambda d: generate(d, **{k: v for k, v in meta.items() if k != 'version'}),
                   'shapes_ddd')
  return paths(out_dir)



def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--num_train', type=int, default=300)
  parser.add_argument('--num_val', type=int, default=50)
  parser.add_argument('--width', type=int, default=384)
  parser.add_argument('--height', type=int, default=128)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  print(json.dumps(generate(args.out, args.num_train, args.num_val, args.width, args.height,
                            args.seed), indent=2))


if __name__ == '__main__':
  main()

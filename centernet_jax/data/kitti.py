"""KITTI object data in the official layout -> checked per-image records; 3D box geometry.

The layout of the KITTI object benchmark (what the official CenterNet converter reads)::

    <root>/training/image_2/<id>.png   images
    <root>/training/label_2/<id>.txt   one object per line (below)
    <root>/training/calib/<id>.txt     'P2: 12 numbers' (the left colour camera, rectified)
    <split file>                       image ids ('000123'), one per line

A label line has 15 fields, 16 in result files (the score)::

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]

with the 2D box in 0-based pixels, the dimensions (height, width, length) in metres, the location
the bottom centre of the 3D box in rectified camera coordinates (x right, y down, z forward) and
the angles in radians. Labels use the official codes (``CLASS_CODES``, docs/parity.md 4.13):
Pedestrian 0, Car 1, Cyclist 2; Van and Truck -3 (ignored in the Car channel), Person_sitting -2
(ignored in the Pedestrian channel), DontCare -1 (every channel), Tram and Misc -99 (skipped, but
they keep their slot: the object order of the label file is kept).

Bad input is a :class:`~centernet_jax.data.errors.DataError` naming the file and the line:
malformed lines, wrong field counts, non-numbers, unknown classes, out-of-range truncation or
occlusion, a missing calib file, a P2 that is not 12 numbers, an image whose principal point
(from its calib) lies outside it, split ids without files. With ``max_bad_fraction`` set
(training), bad label lines and bad images are skipped instead, each logged and counted, and the
load fails only past that fraction (of the label lines, of the images).

No TensorFlow here. :func:`box3d_corners` and :func:`project` (numpy or jax arrays) are the
geometry shared by the synthetic set (``shapes_ddd``), the ddd task and the evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from centernet_jax.data.errors import MAX_WARNINGS, DataError, InvalidAnnotations

CLASS_NAMES = ('Pedestrian', 'Car', 'Cyclist')  # label 0, 1, 2 (the official class order)
# The official converter's category -> training label (docs/parity.md 4.13).
CLASS_CODES = {'Pedestrian': 0, 'Car': 1, 'Cyclist': 2, 'Van': -3, 'Truck': -3,
               'Person_sitting': -2, 'Tram': -99, 'Misc': -99, 'DontCare': -1}
DONT_CARE = -1
NUM_FIELDS = 15  # a ground-truth line; result lines add the score
_FIELDS = ('type', 'truncated', 'occluded', 'alpha', 'x1', 'y1', 'x2', 'y2', 'h', 'w', 'l',
           'x', 'y', 'z', 'rotation_y', 'score')


# ---------------------------------------------------------------------------------------------
# Geometry


def _xp(*arrays):
  """jax.numpy if any argument is a jax array, else numpy (the maths is the same)."""
  for a in arrays:
    if type(a).__module__.startswith('jax'):
      import jax.numpy as jnp
      return jnp
  return np


def box3d_corners(dims, location, rotation_y):
  """The 8 corners of KITTI 3D boxes, in camera coordinates.

  The box has its length along the object's x axis, its width along z and its height upwards
  (-y) from the bottom centre ``location``, turned by ``rotation_y`` about the camera's y axis:
  corner = R(ry) @ offset + location with R = [[c, 0, s], [0, 1, 0], [-s, 0, c]]. Corners 0-3
  are the bottom face, 4-7 the top face above them; 0, 1, 4, 5 is the front face (+l/2, the
  heading), in the order of the KITTI devkit and the official ``compute_box_3d``.

  Args:
    dims: [..., 3] (h, w, l) metres.
    location: [..., 3] (x, y, z) bottom centre.
    rotation_y: [...] radians.

  Returns:
    [..., 8, 3] corners (numpy or jax, as the inputs), float32 for float32 inputs.
  """
  xp = _xp(dims, location, rotation_y)
  dims, location, rotation_y = xp.asarray(dims), xp.asarray(location), xp.asarray(rotation_y)
  height, width, length = dims[..., 0:1], dims[..., 1:2], dims[..., 2:3]
  sx = xp.asarray([1, 1, -1, -1, 1, 1, -1, -1], dims.dtype) / 2
  sz = xp.asarray([1, -1, -1, 1, 1, -1, -1, 1], dims.dtype) / 2
  top = xp.asarray([0, 0, 0, 0, 1, 1, 1, 1], dims.dtype)
  ox, oy, oz = length * sx, -height * top, width * sz  # [..., 8] offsets in the object frame
  c, s = xp.cos(rotation_y)[..., None], xp.sin(rotation_y)[..., None]
  x = c * ox + s * oz + location[..., 0:1]
  y = oy + location[..., 1:2]
  z = -s * ox + c * oz + location[..., 2:3]
  return xp.stack([x, y, z], axis=-1)


def project(points, P2):
  """Projects camera points to pixels: (u, v) = (P2 @ [p; 1])[:2] / (P2 @ [p; 1])[2].

  Args:
    points: [..., 3] (x, y, z); points at or behind the camera (homogeneous depth <= 0) give
      meaningless pixels: callers keep z > 0.
    P2: [3, 4] projection matrix.

  Returns:
    [..., 2] pixels (numpy or jax, as the inputs).
  """
  xp = _xp(points, P2)
  points, P2 = xp.asarray(points), xp.asarray(P2)
  hom = points @ P2[:, :3].T + P2[:, 3]
  return hom[..., :2] / hom[..., 2:3]


def wrap_angle(angle):
  """Angles wrapped to [-pi, pi)."""
  xp = _xp(angle)
  return (xp.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def alpha_from_rotation_y(rotation_y, location):
  """The observation angle alpha = rotation_y - atan2(x, z), wrapped to [-pi, pi).

  Args:
    rotation_y: [...] radians.
    location: [..., 3] (x, y, z).
  """
  xp = _xp(rotation_y, location)
  location = xp.asarray(location)
  return wrap_angle(xp.asarray(rotation_y) - xp.arctan2(location[..., 0], location[..., 2]))


# ---------------------------------------------------------------------------------------------
# Label and calib files


def _number(text: str, where: str, field: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise DataError(f'{where}: {field} is {text!r}, not a number') from None
  if not math.isfinite(value):
    raise DataError(f'{where}: {field} is {text!r}, not a finite number')
  return value


def parse_label_line(line: str, where: str) -> dict:
  """One KITTI label line -> an object dict (the form :mod:`centernet_jax.evaluation.kitti`
  takes): type, truncated, occluded, alpha, bbox [x1, y1, x2, y2], dimensions [h, w, l],
  location [x, y, z], rotation_y, and score (result lines only).

  Args:
    line: the text, without the newline.
    where: 'file:line' for the messages.

  Raises:
    DataError: wrong field count, a non-number, an unknown type, truncation outside [0, 1] or
      occlusion not in 0..3, or a dimension <= 0 (these three only for ground-truth lines that
      are not DontCare), x2 < x1 or y2 < y1.
  """
  parts = line.split()
  if len(parts) not in (NUM_FIELDS, NUM_FIELDS + 1):
    raise DataError(f'{where}: {len(parts)} fields, expected {NUM_FIELDS} (type truncated '
                    'occluded alpha x1 y1 x2 y2 h w l x y z rotation_y) or 16 (with a score)')
  kind = parts[0]
  if kind not in CLASS_CODES:
    raise DataError(f'{where}: unknown type {kind!r}; KITTI types are {sorted(CLASS_CODES)}')
  v = [_number(t, where, f) for t, f in zip(parts[1:], _FIELDS[1:], strict=False)]
  obj = {'type': kind, 'truncated': v[0], 'occluded': v[1], 'alpha': v[2], 'bbox': v[3:7],
         'dimensions': v[7:10], 'location': v[10:13], 'rotation_y': v[13]}
  if len(v) == 15:
    obj['score'] = v[14]
  x1, y1, x2, y2 = obj['bbox']
  if x2 < x1 or y2 < y1:
    raise DataError(f'{where}: box x1 y1 x2 y2 = {parts[4:8]} has x2 < x1 or y2 < y1')
  if kind != 'DontCare' and 'score' not in obj:  # result files may write -1 -1 for these
    if not 0 <= obj['truncated'] <= 1:
      raise DataError(f'{where}: truncated is {parts[1]}, expected 0..1')
    if obj['occluded'] not in (0, 1, 2, 3):
      raise DataError(f'{where}: occluded is {parts[2]}, expected 0, 1, 2 or 3')
    if min(obj['dimensions']) <= 0:
      raise DataError(f'{where}: dimensions h w l = {parts[8:11]} must be > 0')
  obj['occluded'] = int(obj['occluded'])
  return obj


def format_label_line(obj: dict) -> str:
  """An object dict (:func:`parse_label_line`'s form) -> a label line, 2 decimals as KITTI."""
  nums = [obj['alpha'], *obj['bbox'], *obj['dimensions'], *obj['location'], obj['rotation_y']]
  if 'score' in obj:
    nums.append(obj['score'])
  return (f"{obj['type']} {obj['truncated']:.2f} {int(obj['occluded'])} "
          + ' '.join(f'{float(x):.2f}' for x in nums))


def read_label_file(path: str, invalid: InvalidAnnotations | None = None) -> list[dict]:
  """Reads one label (or result) file; blank lines are ignored.

  Args:
    path: the file.
    invalid: collects bad lines instead of raising (its budget decides); None raises.

  Returns:
    the objects in file order (bad lines left out when ``invalid`` collects them).
  """
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f'label file not found: {path}') from None
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text (byte {e.start})') from None
  objects = []
  for k, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      objects.append(parse_label_line(line, f'{path}:{k + 1}'))
    except DataError as e:
      if invalid is None:
        raise
      invalid.add(e)
  return objects


def write_label_file(path: str, objects: Sequence[dict]) -> None:
  """Writes objects (:func:`parse_label_line`'s form) as a label file, one line each."""
  with open(path, 'w') as f:
    f.writelines(format_label_line(o) + '\n' for o in objects)


def read_calib(path: str) -> np.ndarray:
  """The P2 matrix [3, 4] float32 of a KITTI calib file (the line 'P2: 12 numbers').

  Raises:
    DataError: no file, no P2 line (or two), not 12 numbers, or focal lengths <= 0.
  """
  if not os.path.isfile(path):
    raise DataError(f'calib file not found: {path}')
  with open(path, encoding='utf-8', errors='replace') as f:
    found = [(k, line) for k, line in enumerate(f.read().splitlines())
             if line.split(':')[0].strip() == 'P2']
  if len(found) != 1:
    raise DataError(f"{path}: {len(found)} lines start with 'P2:', expected one "
                    "('P2: 12 numbers', the 3 x 4 projection matrix of the left colour camera)")
  k, line = found[0]
  where = f'{path}:{k + 1}'
  values = line.split(':', 1)[1].split()
  if len(values) != 12:
    raise DataError(f'{where}: P2 has {len(values)} numbers, expected 12 (a 3 x 4 matrix)')
  P2 = np.array([_number(t, where, f'P2[{i // 4},{i % 4}]') for i, t in enumerate(values)],
                np.float64).reshape(3, 4)
  if P2[0, 0] <= 0 or P2[1, 1] <= 0:
    raise DataError(f'{where}: P2 focal lengths fx={P2[0, 0]:g} fy={P2[1, 1]:g} must be > 0')
  return P2.astype(np.float32)


def write_calib(path: str, P2: np.ndarray) -> None:
  """Writes a calib file in the KITTI form (P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo),
  P2 given, P0, P1, P3 = P2, R0_rect the identity, the transforms [I | 0]; P2 on line 3 as the
  official converter expects."""
  P2 = np.asarray(P2, np.float64).reshape(3, 4)
  eye = np.eye(3, 4)
  fmt = lambda m: ' '.join(f'{x:.12e}' for x in np.ravel(m))
  rows = [('P0', P2), ('P1', P2), ('P2', P2), ('P3', P2), ('R0_rect', np.eye(3)),
          ('Tr_velo_to_cam', eye), ('Tr_imu_to_velo', eye)]
  with open(path, 'w') as f:
    f.writelines(f'{name}: {fmt(m)}\n' for name, m in rows)


def read_split(path: str) -> list[str]:
  """The image ids of a split file (one per line, digits; blank lines ignored), in order.

  Raises:
    DataError: no file, an id that is not digits, an id twice, or no id at all.
  """
  if not os.path.isfile(path):
    raise DataError(f'split file not found: {path}')
  ids, seen = [], {}
  with open(path, encoding='utf-8', errors='replace') as f:
    for k, line in enumerate(f.read().splitlines()):
      name = line.strip()
      if not name:
        continue
      if not name.isdigit():
        raise DataError(f'{path}:{k + 1}: image id {name!r} is not a number like 000123')
      if int(name) in seen:
        raise DataError(f'{path}:{k + 1}: image id {name} already on line {seen[int(name)]}')
      seen[int(name)] = k + 1
      ids.append(name)
  if not ids:
    raise DataError(f'{path}: no image id')
  return ids


# ---------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass
class KittiRecord:
  """One image, its calibration and its objects in label-file order (every type kept)."""
  image_id: int
  file_name: str  # '<id>.png'
  path: str
  width: int
  height: int
  calib: np.ndarray  # [3, 4] float32 P2
  types: list[str]  # [N] KITTI type names (Van and Truck share a code; evaluation tells them)
  boxes: np.ndarray  # [N, 4] float32 xyxy pixels
  labels: np.ndarray  # [N] int32 official codes (CLASS_CODES)
  alpha: np.ndarray  # [N] float32
  dims: np.ndarray  # [N, 3] float32 (h, w, l)
  locations: np.ndarray  # [N, 3] float32 (x, y, z) bottom centre
  rotation_y: np.ndarray  # [N] float32
  truncated: np.ndarray  # [N] float32
  occluded: np.ndarray  # [N] int32

  @property
  def depth(self) -> np.ndarray:
    """[N] float32 location z (the depth target)."""
    return self.locations[:, 2]

  @property
  def center3d(self) -> np.ndarray:
    """[N, 2] float32 pixels where the 3D box's middle projects (the ``loss.amodel_offset``
    target); the 2D box centre for objects without a 3D box in front of the camera
    (DontCare, z <= 0.1)."""
    middle = self.locations - np.stack([np.zeros_like(self.dims[:, 0]), self.dims[:, 0] / 2,
                                        np.zeros_like(self.dims[:, 0])], -1)
    box_centre = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
    in_front = middle[:, 2] > 0.1
    safe = np.where(in_front[:, None], middle, [0.0, 0.0, 1.0])
    return np.where(in_front[:, None], project(safe, self.calib),
                    box_centre).astype(np.float32).reshape(-1, 2)

  def objects(self) -> list[dict]:
    """The objects in the evaluation form (:func:`parse_label_line`'s dicts).

    Numbers come back as the file's decimals (the shortest decimal of each float32, e.g. 0.15,
    not 0.15000000596), so the difficulty rules' comparisons (truncation <= 0.15, height >= 25)
    see the values the devkit reads from the file.
    """
    def dec(values) -> list[float]:
      return [float(str(np.float32(v))) for v in np.ravel(values)]

    return [{'type': t, 'truncated': dec(self.truncated[i])[0],
             'occluded': int(self.occluded[i]), 'alpha': dec(self.alpha[i])[0],
             'bbox': dec(self.boxes[i]), 'dimensions': dec(self.dims[i]),
             'location': dec(self.locations[i]), 'rotation_y': dec(self.rotation_y[i])[0]}
            for i, t in enumerate(self.types)]


def make_record(image_id: int, file_name: str, path: str, width: int, height: int,
                calib: np.ndarray, objects: Sequence[dict]) -> KittiRecord:
  """A record from objects in :func:`parse_label_line`'s form (order kept)."""
  f32 = lambda key, shape: np.array([o[key] for o in objects], np.float32).reshape(shape)
  return KittiRecord(
      image_id=int(image_id), file_name=file_name, path=path, width=int(width),
      height=int(height), calib=np.asarray(calib, np.float32).reshape(3, 4),
      types=[o['type'] for o in objects], boxes=f32('bbox', (-1, 4)),
      labels=np.array([CLASS_CODES[o['type']] for o in objects], np.int32),
      alpha=f32('alpha', (-1,)), dims=f32('dimensions', (-1, 3)),
      locations=f32('location', (-1, 3)), rotation_y=f32('rotation_y', (-1,)),
      truncated=f32('truncated', (-1,)),
      occluded=np.array([int(o['occluded']) for o in objects], np.int32))


@dataclasses.dataclass
class KittiData:
  """A checked KITTI split."""
  root: str
  split_file: str
  records: list[KittiRecord]
  num_invalid_lines: int = 0  # label lines skipped (max_bad_fraction set)
  num_skipped_images: int = 0  # split ids skipped for a missing or bad file (idem)

  def ground_truth(self) -> dict[int, list[dict]]:
    """image id -> objects in the evaluation form (every type, DontCare included)."""
    return {r.image_id: r.objects() for r in self.records}


def image_size(path: str) -> tuple[int, int]:
  """(width, height) from an image file's header (no decoding)."""
  try:
    with Image.open(path) as im:
      return im.size
  except FileNotFoundError:
    raise DataError(f'image file not found: {path}') from None
  except OSError as e:
    raise DataError(f'{path}: not a readable image ({e})') from None


def check_calib_fits(calib: np.ndarray, width: int, height: int, calib_path: str,
                     image_path: str) -> None:
  """Raises a DataError unless P2's principal point (cx, cy) lies inside the image."""
  cx, cy = float(calib[0, 2]), float(calib[1, 2])
  if not (0 <= cx <= width and 0 <= cy <= height):
    raise DataError(f'{calib_path}: principal point (cx, cy) = ({cx:g}, {cy:g}) lies outside '
                    f'the {width} x {height} image {image_path}: the calib does not belong to '
                    'this image (or the image was resized without scaling P2)')


def _check_files(root: str, subset: str, ids: list[str], split_file: str,
                 with_labels: bool) -> None:
  """Raises one DataError naming every split id whose image, calib or label file is missing."""
  kinds = [('image_2', '.png'), ('calib', '.txt')] + ([('label_2', '.txt')] if with_labels else [])
  missing = []
  for name in ids:
    gone = [d for d, ext in kinds if not os.path.isfile(os.path.join(root, subset, d, name + ext))]
    if gone:
      missing.append(f'{name} (no {" / ".join(gone)} file)')
  if missing:
    raise DataError(f'{split_file}: {len(missing)} of {len(ids)} image ids have no files under '
                    f'{os.path.join(root, subset)}: ' + ', '.join(missing[:10])
                    + (' ...' if len(missing) > 10 else ''))


def _load_one(root: str, subset: str, name: str, invalid: InvalidAnnotations,
              with_labels: bool) -> KittiRecord:
  base = os.path.join(root, subset)
  path = os.path.join(base, 'image_2', f'{name}.png')
  calib_path = os.path.join(base, 'calib', f'{name}.txt')
  width, height = image_size(path)
  calib = read_calib(calib_path)
  check_calib_fits(calib, width, height, calib_path, path)
  objects = (read_label_file(os.path.join(base, 'label_2', f'{name}.txt'), invalid)
             if with_labels else [])
  return make_record(int(name), f'{name}.png', path, width, height, calib, objects)


def load_kitti(root: str, split_file: str, *, subset: str = 'training', with_labels: bool = True,
               max_bad_fraction: float | None = None) -> KittiData:
  """Reads and checks the images of a split.

  Args:
    root: the KITTI object folder (holding ``training/``; ``config.data.kitti_root``).
    split_file: the ids to read (``config.data.train_split`` / ``val_split``).
    subset: 'training' (labelled) or 'testing'.
    with_labels: read ``label_2`` (False for the test subset: records without objects).
    max_bad_fraction: None: the first problem is an error. A number: a bad label line is
      skipped (logged, counted in ``num_invalid_lines``) and so is an image with a missing or
      bad image, calib or label file (``num_skipped_images``); more than this fraction of the
      lines, or of the split's images, is an error.

  Returns:
    KittiData with one record per kept id, in split-file order.

  Raises:
    DataError: naming the file and line (bad lines, bad calibs) or the ids without files.
  """
  ids = read_split(split_file)
  if max_bad_fraction is None:
    _check_files(root, subset, ids, split_file, with_labels)
  label_dir = os.path.join(root, subset, 'label_2')
  lines = InvalidAnnotations(label_dir, max_bad_fraction)
  total_lines = 0
  records, bad_images = [], []
  for name in ids:
    try:
      record = _load_one(root, subset, name, lines, with_labels)
    except DataError as e:
      if max_bad_fraction is None:
        raise DataError(f'{e} (image id {name} of {split_file})') from None
      bad_images.append(f'{name}: {e}')
      if len(bad_images) <= MAX_WARNINGS:
        logging.warning('skipping image id %s of %s: %s', name, split_file, e)
      continue
    records.append(record)
    total_lines += len(record.types)
  skipped_lines = lines.finish(total_lines + len(lines.messages))
  if bad_images:
    logging.warning('%s: skipped %d of %d images', split_file, len(bad_images), len(ids))
    if len(bad_images) > max_bad_fraction * len(ids):
      raise DataError(f'{split_file}: {len(bad_images)} of {len(ids)} image ids have a missing '
                      f'or bad file, more than max_bad_fraction={max_bad_fraction:g}; the '
                      'first:\n  ' + '\n  '.join(bad_images[:10]))
  return KittiData(root=root, split_file=split_file, records=records,
                   num_invalid_lines=skipped_lines, num_skipped_images=len(bad_images))

"""COCO-format data: instances json + image folder -> checked records; COCO as TFDS stores it.

Labels are contiguous (0..C-1) in the order of sorted category ids; ``category_ids[label]``
gives the original id back (for COCO 2017: the official 80 -> 90-id ``_valid_ids``).

Malformed files, unknown categories, unknown images and missing image files are errors
(:class:`~centernet_jax.data.errors.DataError`, a ``ValueError``). Boxes with zero or negative
width or height cannot be trained on or matched, and boxes entirely outside their image (the
file's width and height) hold nothing, so both are skipped, each with one warning naming the
annotation id and the image file, and counted (``CocoData.num_degenerate`` and
``CocoData.num_outside``); evaluation leaves out the same boxes
(:func:`~centernet_jax.data.errors.bbox_problem`). One image file listed under two image ids is
read once per id: a warning names both ids. With
``max_bad_fraction`` set (training data), an annotation that fails validation (unknown image or
category, malformed bbox, missing field, repeated id) is skipped the same way and counted
(``CocoData.num_invalid``) instead, and the load fails only if more than that fraction of the
annotations is bad (:class:`~centernet_jax.data.errors.InvalidAnnotations`).

Person keypoints (``num_joints`` set: the multi_pose task): every category used must list
``num_joints`` joint names in 'keypoints' (its 1-based 'skeleton' becomes 0-based pairs), and
every annotation must carry 'keypoints' = [x1, y1, v1, ...], 3 * ``num_joints`` finite numbers
with visibility v in {0, 1, 2}; an annotation that does not is invalid (skipped within the
budget in training, an error otherwise).

EXIF orientation (``exif_orientation='apply'``, the default; ``config.data.exif_orientation``):
phone cameras store pixels unrotated with an EXIF tag saying how to show them, and annotation
tools draw boxes on the image as shown. The tag of every JPEG or PNG file is read from its
header when the file is loaded (``ImageRecord.orientation``); the pipeline rotates / mirrors the
decoded pixels to it (``transforms.exif_orient``), for training, evaluation and prediction alike,
as PIL's ``ImageOps.exif_transpose`` (and so detectron2 and mmdetection) do. A file whose
oriented size disagrees with the json's width and height is a DataError naming it (the boxes
then follow the stored pixels: ``'ignore'`` reads the pixels as stored).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import struct

import numpy as np

from centernet_jax.data import import_tf
from centernet_jax.data.errors import MAX_WARNINGS, DataError, InvalidAnnotations, bbox_problem

# DataError stays importable from here: callers catch data.coco.DataError.

tf = import_tf()

# The 80 categories of COCO 2014/2017 instances files, (id, name), sorted by id.
COCO_2017_CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'), (6, 'bus'),
    (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'), (11, 'fire hydrant'),
    (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'), (16, 'bird'), (17, 'cat'),
    (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'), (22, 'elephant'), (23, 'bear'),
    (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'), (28, 'umbrella'), (31, 'handbag'),
    (32, 'tie'), (33, 'suitcase'), (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'),
    (37, 'sports ball'), (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'), (44, 'bottle'),
    (46, 'wine glass'), (47, 'cup'), (48, 'fork'), (49, 'knife'), (50, 'spoon'), (51, 'bowl'),
    (52, 'banana'), (53, 'apple'), (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'),
    (57, 'carrot'), (58, 'hot dog'), (59, 'pizza'), (60, 'donut'), (61, 'cake'), (62, 'chair'),
    (63, 'couch'), (64, 'potted plant'), (65, 'bed'), (67, 'dining table'), (70, 'toilet'),
    (72, 'tv'), (73, 'laptop'), (74, 'mouse'), (75, 'remote'), (76, 'keyboard'),
    (77, 'cell phone'), (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'),
    (82, 'refrigerator'), (84, 'book'), (85, 'clock'), (86, 'vase'), (87, 'scissors'),
    (88, 'teddy bear'), (89, 'hair drier'), (90, 'toothbrush'))


@dataclasses.dataclass
class ImageRecord:
  """One image and its objects (boxes xyxy float32 pixels, contiguous labels)."""
  image_id: int
  file_name: str
  path: str
  width: int
  height: int
  boxes: np.ndarray  # [N, 4] float32 xyxy
  labels: np.ndarray  # [N] int32
  iscrowd: np.ndarray  # [N] bool
  keypoints: np.ndarray | None = None  # [N, J, 3] float32 (x, y, v); None without num_joints
  orientation: int = 1  # EXIF orientation applied to the decoded pixels (1: as stored)


@dataclasses.dataclass
class CocoData:
  """A checked COCO instances file with its images."""
  ann_file: str
  image_dir: str
  category_ids: list[int]  # label -> original category id (sorted)
  class_names: list[str]
  images: list[ImageRecord]
  num_degenerate: int = 0
  num_invalid: int = 0  # annotations skipped for failing validation (max_bad_fraction set)
  keypoint_names: list[str] | None = None  # J joint names (num_joints set), else None
  skeleton: list[tuple[int, int]] | None = None  # 0-based joint pairs (num_joints set)
  num_empty_skipped: int = 0  # images left out for having no object (skip_empty)
  num_outside: int = 0  # boxes skipped for lying entirely outside their image
  num_duplicate_files: int = 0  # image entries naming a file an earlier entry names
  num_oriented: int = 0  # images whose EXIF orientation is applied (not 1)

  def num_objects(self, with_crowd: bool = True) -> int:
    """Objects kept over all images (crowd boxes only if ``with_crowd``)."""
    return int(sum(len(r.labels) if with_crowd else int(np.sum(~r.iscrowd))
                   for r in self.images))


def read_json(path: str) -> dict:
  """Reads a COCO instances json; errors name the file (and the position for bad JSON)."""
  if not os.path.isfile(path):
    raise DataError(f'annotation file not found: {path}')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    data = json.loads(raw)
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: invalid JSON at line {e.lineno} column {e.colno} '
                    f'(char {e.pos}): {e.msg}') from None
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text (byte {e.start}): {e.reason}') from None
  if not isinstance(data, dict):
    raise DataError(f'{path}: top level is a {type(data).__name__}, expected an object with '
                    "'images', 'annotations' and 'categories'")
  missing = [k for k in ('images', 'annotations', 'categories') if k not in data]
  if missing:
    raise DataError(f'{path}: missing top-level key(s) {missing}; a COCO instances file has '
                    "'images', 'annotations' and 'categories'")
  for key in ('images', 'annotations', 'categories'):
    if not isinstance(data[key], list):
      raise DataError(f"{path}: '{key}' is a {type(data[key]).__name__}, expected a list")
  return data


def _field(path: str, what: str, rec, key: str, types):
  if not isinstance(rec, dict):
    raise DataError(f'{path}: {what} is a {type(rec).__name__}, expected an object')
  if key not in rec:
    raise DataError(f"{path}: {what} has no '{key}' field")
  value = rec[key]
  if not isinstance(value, types) or isinstance(value, bool):
    raise DataError(f"{path}: {what} has '{key}' = {value!r} of type {type(value).__name__}")
  return value


def check_categories(path: str, data: dict) -> tuple[list[int], list[str]]:
  """Category ids (sorted) and names; duplicate or malformed categories are errors."""
  names = {}
  for k, cat in enumerate(data['categories']):
    cid = _field(path, f'categories[{k}]', cat, 'id', int)
    name = _field(path, f'categories[{k}] (id {cid})', cat, 'name', str)
    if cid in names:
      raise DataError(f'{path}: category id {cid} appears twice in categories')
    names[cid] = name
  if not names:
    raise DataError(f"{path}: 'categories' is empty")
  ids = sorted(names)
  return ids, [names[i] for i in ids]


def load_coco(ann_file: str, image_dir: str, *, category_ids: list[int] | None = None,
              check_files: bool = True, max_bad_fraction: float | None = None,
              num_joints: int | None = None, skip_empty: bool = False,
              exif_orientation: str = 'apply') -> CocoData:
  """Loads and checks a COCO instances (or person keypoints) file.

  Args:
    ann_file: path of the instances json.
    image_dir: folder that ``images[*].file_name`` is relative to.
    category_ids: label -> category id table to use (e.g. the training file's); the file's
      own categories must be a subset. Default: this file's categories, sorted by id.
    check_files: check up front that every image file exists.
    max_bad_fraction: None: an annotation failing validation is an error. A number: such
      annotations are skipped, each logged with the file and the annotation, and counted; a
      DataError only if more than this fraction of the annotations is bad.
    num_joints: J, the joints of a person keypoints file (``config.data.num_joints``); None:
      boxes only (keypoints in the file are ignored, with one warning).
    skip_empty: leave out the images without any object (the official multi_pose training
      set; ``config.data.skip_empty_train_images``), logged with the count.
    exif_orientation: 'apply' (read each existing image file's EXIF orientation: see the module
      docstring) or 'ignore' (pixels as stored; no header is read).

  Returns:
    CocoData with one ImageRecord per entry of 'images' (same order; images without objects
    are kept unless ``skip_empty``, as in the official code). Evaluation reads ``ann_file``
    itself with pycocotools (leaving out the boxes skipped here).
  """
  if exif_orientation not in EXIF_ORIENTATION_MODES:
    raise DataError(f'config.data.exif_orientation must be one of {EXIF_ORIENTATION_MODES}, '
                    f'got {exif_orientation!r}')
  data = read_json(ann_file)
  file_ids, file_names = check_categories(ann_file, data)
  if category_ids is None:
    category_ids, class_names = file_ids, file_names
  else:
    unknown = sorted(set(file_ids) - set(category_ids))
    if unknown:
      raise DataError(f'{ann_file}: category ids {unknown} are not among the training '
                      f'categories {list(category_ids)}')
    class_names = None
  label_of = {cid: i for i, cid in enumerate(category_ids)}
  keypoint_names = skeleton = None
  if num_joints is not None:
    keypoint_names, skeleton = check_keypoint_categories(ann_file, data, num_joints)
  elif any(isinstance(a, dict) and 'keypoints' in a for a in data['annotations']):
    logging.warning("%s: the annotations carry 'keypoints' but config.data has no num_joints, "
                    'so this task trains boxes only; for keypoints use a multi_pose config '
                    "(config_lib.base_config('multi_pose'))", ann_file)

  images, by_id, by_path, duplicates = [], {}, {}, []
  for k, img in enumerate(data['images']):
    image_id = _field(ann_file, f'images[{k}]', img, 'id', int)
    what = f'images[{k}] (id {image_id})'
    file_name = _field(ann_file, what, img, 'file_name', str)
    width, height = img.get('width', 0), img.get('height', 0)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (width, height)):
      raise DataError(f"{ann_file}: {what} ({file_name}) has 'width'/'height' = "
                      f'{width!r}/{height!r}; expected numbers')
    if image_id in by_id:
      raise DataError(f'{ann_file}: image id {image_id} appears twice ({file_name})')
    rec = ImageRecord(image_id, file_name, os.path.join(image_dir, file_name), int(width),
                      int(height), [], [], [], None if num_joints is None else [])
    by_id[image_id] = rec
    images.append(rec)
    first = by_path.setdefault(os.path.normpath(rec.path), rec)
    if first is not rec:
      duplicates.append((first, rec))
  _warn_duplicates(ann_file, duplicates)

  skipped = {'degenerate': 0, 'outside': 0}
  seen_ann_ids = set()
  invalid = InvalidAnnotations(ann_file, max_bad_fraction)
  for k, ann in enumerate(data['annotations']):
    try:
      problem = _add_annotation(ann_file, k, ann, by_id, label_of, category_ids, seen_ann_ids,
                                skipped, num_joints)
    except DataError as e:
      invalid.add(e)
      continue
    if problem is not None:
      skipped[problem] += 1
  num_invalid = invalid.finish(len(data['annotations']))
  for problem, text in _SKIP_TEXT.items():
    if skipped[problem] > MAX_WARNINGS:
      logging.warning('%s: skipped %d annotations %s in all (the first %d are listed above)',
                      ann_file, skipped[problem], text, MAX_WARNINGS)

  for rec in images:
    rec.boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
    rec.labels = np.asarray(rec.labels, np.int32)
    rec.iscrowd = np.asarray(rec.iscrowd, bool)
    if num_joints is not None:
      rec.keypoints = np.asarray(rec.keypoints, np.float32).reshape(-1, num_joints, 3)
  num_empty = 0
  if skip_empty:
    kept = [rec for rec in images if len(rec.labels)]
    num_empty = len(images) - len(kept)
    images = kept
    logging.info('%s: left out %d images without objects, training on %d '
                 '(config.data.skip_empty_train_images)', ann_file, num_empty, len(images))
  if check_files:
    check_image_files(ann_file, images)
  num_oriented = read_orientations(ann_file, images) if exif_orientation == 'apply' else 0

  if class_names is None:
    names = dict(zip(file_ids, file_names, strict=True))
    class_names = [names.get(cid, str(cid)) for cid in category_ids]
  return CocoData(ann_file, image_dir, list(category_ids), class_names, images,
                  skipped['degenerate'], num_invalid, keypoint_names, skeleton, num_empty,
                  skipped['outside'], len(duplicates), num_oriented)


def _warn_duplicates(ann_file: str, duplicates: list[tuple[ImageRecord, ImageRecord]]) -> None:
  """One warning per image file listed under two image ids (the first MAX_WARNINGS)."""
  for first, rec in duplicates[:MAX_WARNINGS]:
    logging.warning('%s: image ids %d and %d both name the file %s; it is read once for each id '
                    '(its objects count twice in training, and evaluation scores both ids)',
                    ann_file, first.image_id, rec.image_id, rec.path)
  if len(duplicates) > MAX_WARNINGS:
    logging.warning('%s: %d image entries name a file an earlier entry names (the first %d '
                    'are listed above)', ann_file, len(duplicates), MAX_WARNINGS)


def check_keypoint_categories(path: str, data: dict, num_joints: int
                              ) -> tuple[list[str], list[tuple[int, int]]]:
  """Checks the joint names and skeleton of the categories a keypoints file uses.

  The categories used are those the annotations refer to (all of them if there is no
  annotation). Each must list ``num_joints`` joint names in 'keypoints'.

  Returns:
    The joint names and the skeleton as 0-based pairs (empty without 'skeleton') of the first
    category used.

  Raises:
    DataError: naming the file and the category id.
  """
  cats = {c['id']: c for c in data['categories']}
  used = sorted({a.get('category_id') for a in data['annotations']
                 if isinstance(a, dict) and a.get('category_id') in cats}) or sorted(cats)
  hint = (f'config.data.num_joints={num_joints} needs a person keypoints file (e.g. '
          'person_keypoints_train2017.json) whose categories list their joints')
  for cid in used:
    names = cats[cid].get('keypoints')
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
      raise DataError(f"{path}: category id {cid} has no 'keypoints' list of joint names; "
                      f'{hint}')
    if len(names) != num_joints:
      raise DataError(f'{path}: category id {cid} lists {len(names)} joints in '
                      f"'keypoints', but config.data.num_joints={num_joints}")
  first = cats[used[0]]
  pairs = first.get('skeleton', [])
  if not isinstance(pairs, list) or not all(
      isinstance(p, list) and len(p) == 2 and all(
          isinstance(j, int) and not isinstance(j, bool) and 1 <= j <= num_joints for j in p)
      for p in pairs):
    raise DataError(f"{path}: category id {used[0]} has 'skeleton' = {pairs!r}; expected "
                    f'pairs of 1-based joint numbers in 1..{num_joints}')
  return list(first['keypoints']), [(a - 1, b - 1) for a, b in pairs]


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _keypoints(ann_file: str, what: str, ann: dict, num_joints: int) -> list[list[float]]:
  """The [J, 3] keypoints of one annotation, checked (DataError naming it otherwise)."""
  kps = _field(ann_file, what, ann, 'keypoints', list)
  expected = (f'expected 3 * config.data.num_joints = {3 * num_joints} finite numbers '
              '[x1, y1, v1, ...]')
  if len(kps) != 3 * num_joints:
    raise DataError(f"{ann_file}: {what} has {len(kps)} numbers in 'keypoints'; {expected}")
  bad = [v for v in kps if not _finite(v)]
  if bad:
    raise DataError(f"{ann_file}: {what} has {bad[0]!r} in 'keypoints'; {expected}")
  joints = [[float(v) for v in kps[3 * j:3 * j + 3]] for j in range(num_joints)]
  bad_v = [v for _, _, v in joints if v not in (0.0, 1.0, 2.0)]
  if bad_v:
    raise DataError(f"{ann_file}: {what} has visibility {bad_v[0]!r} in 'keypoints'; "
                    'expected 0 (not labelled), 1 (labelled, hidden) or 2 (visible)')
  return joints


_SKIP_TEXT = {'degenerate': 'with zero or negative width or height',
              'outside': 'entirely outside their image'}


def _add_annotation(ann_file, k, ann, by_id, label_of, category_ids, seen_ann_ids, skipped,
                    num_joints=None) -> str | None:
  """Checks annotation k and appends it to its image.

  Returns:
    None, or why its box was skipped (:func:`~centernet_jax.data.errors.bbox_problem`), logged
    while ``skipped`` (counts so far) is under MAX_WARNINGS.
  """
  ann_id = _field(ann_file, f'annotations[{k}]', ann, 'id', int)
  what = f'annotation id {ann_id}'
  if ann_id in seen_ann_ids:
    raise DataError(f'{ann_file}: annotation id {ann_id} appears twice')
  seen_ann_ids.add(ann_id)
  image_id = _field(ann_file, what, ann, 'image_id', int)
  rec = by_id.get(image_id)
  if rec is None:
    raise DataError(f'{ann_file}: {what} refers to image id {image_id}, which is not in '
                    "'images'")
  what = f'{what} (image {rec.file_name})'
  cid = _field(ann_file, what, ann, 'category_id', int)
  if cid not in label_of:
    raise DataError(f'{ann_file}: {what} has category_id {cid}, which is not in '
                    f"'categories' (ids {list(category_ids)})")
  bbox = _field(ann_file, what, ann, 'bbox', list)
  if len(bbox) != 4 or not all(_finite(v) for v in bbox):
    raise DataError(f"{ann_file}: {what} has 'bbox' = {bbox!r}; expected 4 finite numbers "
                    '[x, y, width, height]')
  joints = None if num_joints is None else _keypoints(ann_file, what, ann, num_joints)
  x, y, w, h = (float(v) for v in bbox)
  problem = bbox_problem(bbox, rec.width, rec.height)
  if problem is not None:
    if skipped[problem] < MAX_WARNINGS:
      why = ('has zero or negative width or height' if problem == 'degenerate' else
             f'lies entirely outside the {rec.width}x{rec.height} image')
      logging.warning('%s: skipping %s: bbox %s %s', ann_file, what, bbox, why)
    return problem
  rec.boxes.append((x, y, x + w, y + h))
  rec.labels.append(label_of[cid])
  rec.iscrowd.append(bool(ann.get('iscrowd', 0)))
  if joints is not None:
    rec.keypoints.append(joints)
  return None


def check_image_files(ann_file: str, images: list[ImageRecord]) -> None:
  """Raises DataError naming the missing image files (first 10 and the count)."""
  missing = [r for r in images if not os.path.isfile(r.path)]
  if missing:
    listed = '\n  '.join(f'{r.path} (image id {r.image_id})' for r in missing[:10])
    more = f'\n  ... and {len(missing) - 10} more' if len(missing) > 10 else ''
    raise DataError(f'{ann_file}: {len(missing)} of {len(images)} image files not found:\n  '
                    f'{listed}{more}')


# --- EXIF orientation ------------------------------------------------------------------------

EXIF_ORIENTATION_MODES = ('apply', 'ignore')
_ORIENTATION_TAG = 0x0112  # EXIF / TIFF tag 274
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_HEADER_READERS = 16  # threads reading file headers (I/O bound)


def _tiff_orientation(tiff: bytes) -> int:
  """The orientation tag of the first IFD of a TIFF structure (an EXIF block); 1 if none."""
  if len(tiff) < 8 or tiff[:2] not in (b'II', b'MM'):
    return 1
  order = '<' if tiff[:2] == b'II' else '>'
  ifd = struct.unpack_from(order + 'I', tiff, 4)[0]
  if ifd + 2 > len(tiff):
    return 1
  for k in range(struct.unpack_from(order + 'H', tiff, ifd)[0]):
    entry = ifd + 2 + 12 * k
    if entry + 12 > len(tiff):
      break
    tag, kind, count = struct.unpack_from(order + 'HHI', tiff, entry)
    if tag == _ORIENTATION_TAG and count >= 1 and kind in (3, 4):  # SHORT or LONG
      return struct.unpack_from(order + ('H' if kind == 3 else 'I'), tiff, entry + 8)[0]
  return 1


def _jpeg_header(f) -> tuple[int, tuple[int, int] | None]:
  """(orientation, stored (width, height)) from the JPEG markers before the image data."""
  orientation, size = 1, None
  f.seek(2)
  while True:
    byte = f.read(1)
    if byte != b'\xff':
      break
    while byte == b'\xff':  # fill bytes
      byte = f.read(1)
    if not byte:
      break
    marker = byte[0]
    if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a payload
      continue
    if marker in (0xD9, 0xDA):  # end of image, start of scan: no header follows
      break
    raw = f.read(2)
    if len(raw) < 2 or struct.unpack('>H', raw)[0] < 2:
      break
    length = struct.unpack('>H', raw)[0] - 2
    if marker == 0xE1 and orientation == 1:
      payload = f.read(length)
      if payload[:6] == b'Exif\x00\x00':
        orientation = _tiff_orientation(payload[6:])
    elif marker in _JPEG_SOF and size is None:
      payload = f.read(length)
      if len(payload) >= 5:
        height, width = struct.unpack_from('>HH', payload, 1)
        size = (width, height)
    else:
      f.seek(length, 1)
  return orientation, size


def _png_header(f) -> tuple[int, tuple[int, int] | None]:
  """(orientation, stored (width, height)) from the PNG chunks before the image data."""
  orientation, size = 1, None
  f.seek(len(_PNG_SIGNATURE))
  while True:
    head = f.read(8)
    if len(head) < 8:
      break
    length, kind = struct.unpack('>I4s', head)
    if kind in (b'IDAT', b'IEND'):
      break
    if kind == b'IHDR':
      size = struct.unpack('>II', f.read(8))
      f.seek(length - 8 + 4, 1)
    elif kind == b'eXIf':
      orientation = _tiff_orientation(f.read(length))
      f.seek(4, 1)
    else:
      f.seek(length + 4, 1)  # data and CRC
  return orientation, size


def image_orientation(path: str) -> tuple[int, tuple[int, int] | None]:
  """A JPEG's or PNG's EXIF orientation and stored size, from its header only.

  Returns:
    (orientation, (width, height)): orientation 1..8 (1: no tag, another format, or a value
    outside 1..8); the size as stored (before orientation), None when not found.

  Raises:
    OSError: the file cannot be opened.
  """
  with open(path, 'rb') as f:
    magic = f.read(8)
    if magic[:3] == b'\xff\xd8\xff':
      orientation, size = _jpeg_header(f)
    elif magic == _PNG_SIGNATURE:
      orientation, size = _png_header(f)
    else:
      return 1, None
  return (orientation if 1 <= orientation <= 8 else 1), size


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
  """(width, height) of stored pixels of ``size`` shown with ``orientation`` (5-8 swap them)."""
  return (size[1], size[0]) if orientation >= 5 else tuple(size)


def read_orientations(ann_file: str, images: list[ImageRecord]) -> int:
  """Sets ``rec.orientation`` from each existing image file's header; checks the sizes.

  Returns:
    The number of images with an orientation other than 1 (logged).

  Raises:
    DataError: naming the files (the first 10 and the count) whose size after their EXIF
      orientation disagrees with the annotation file's width and height.
  """
  def read(records: list[ImageRecord]) -> list:
    out = []
    for rec in records:
      try:
        out.append(image_orientation(rec.path))
      except OSError:
        out.append((1, None))  # a missing file is reported where it is read
    return out

  # Contiguous slices, one per thread: file systems with latency (network disks) overlap the
  # reads, and a warm cache pays no per-file hand-off.
  step = -(-len(images) // _HEADER_READERS) or 1
  with concurrent.futures.ThreadPoolExecutor(_HEADER_READERS) as pool:
    headers = [h for part in pool.map(read, [images[i:i + step]
                                             for i in range(0, len(images), step)])
               for h in part]
  bad, oriented = [], 0
  for rec, (orientation, size) in zip(images, headers, strict=True):
    rec.orientation = orientation
    if orientation == 1:
      continue
    oriented += 1
    if size is None or rec.width <= 0 or rec.height <= 0:
      continue
    shown = oriented_size(size, orientation)
    if shown != (rec.width, rec.height):
      bad.append(f'{rec.path} (image id {rec.image_id}): EXIF orientation {orientation} shows '
                 f'its stored {size[0]}x{size[1]} pixels as {shown[0]}x{shown[1]}, but the '
                 f'annotation file says {rec.width}x{rec.height}')
  if bad:
    more = f'\n  ... and {len(bad) - 10} more' if len(bad) > 10 else ''
    raise DataError(
        f'{ann_file}: {len(bad)} image(s) whose size after their EXIF orientation disagrees with '
        'the width and height in the file:\n  ' + '\n  '.join(bad[:10]) + more +
        "\nIf the boxes were drawn on the pixels as stored (not rotated), set "
        "config.data.exif_orientation='ignore'; otherwise correct the width and height.")
  if oriented:
    logging.info("%s: %d images carry an EXIF orientation; their pixels are rotated or mirrored "
                 "to it (config.data.exif_orientation='apply')", ann_file, oriented)
  return oriented


# --- TFDS coco/2017 ------------------------------------------------------------------------


def _norm_name(name: str) -> str:
  return name.strip().lower().replace('_', ' ')


def tfds_category_ids(label_names: list[str]) -> list[int]:
  """Original COCO category id of each TFDS ``objects/label`` class (by name).

  TFDS stores the labels in the order of the instances file's categories (sorted by id), with
  the category names. Without names (``tfds.testing.mock_data`` builds the features from code:
  the names are '0'..'79') that order is used.
  """
  table = {_norm_name(n): i for i, n in COCO_2017_CATEGORIES}
  if len(label_names) == len(COCO_2017_CATEGORIES) and all(n.isdigit() for n in label_names):
    return [COCO_2017_CATEGORIES[int(n)][0] for n in label_names]
  unknown = [n for n in label_names if _norm_name(n) not in table]
  if unknown:
    raise DataError(f'TFDS label names {unknown} are not COCO 2017 category names')
  return [table[_norm_name(n)] for n in label_names]


def tfds_objects_to_pixels(objects: dict, height, width, label_map):
  """Converts TFDS coco ``objects`` to pixel boxes and contiguous labels (tf ops).

  Args:
    objects: dict with 'bbox' [N, 4] float32 normalised (ymin, xmin, ymax, xmax), 'label' [N]
      TFDS class index, 'is_crowd' [N] bool (optional).
    height, width: image size (scalars).
    label_map: [num_tfds_classes] int32, TFDS class -> contiguous label.

  Returns:
    dict(boxes [M, 4] float32 xyxy pixels, labels [M] int32, iscrowd [M] bool, area [M]
    float32 (if ``objects`` has 'area'), num_degenerate [] int32): boxes with zero or negative
    width or height (in pixels) are dropped and counted.
  """
  bbox = tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4])
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  boxes = tf.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=1)
  labels = tf.gather(tf.constant(label_map, tf.int32), tf.cast(objects['label'], tf.int32))
  iscrowd = objects.get('is_crowd')
  iscrowd = tf.zeros_like(labels, tf.bool) if iscrowd is None else tf.cast(iscrowd, tf.bool)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  out = {'boxes': tf.boolean_mask(boxes, keep), 'labels': tf.boolean_mask(labels, keep),
         'iscrowd': tf.boolean_mask(iscrowd, keep),
         'num_degenerate': tf.reduce_sum(tf.cast(tf.logical_not(keep), tf.int32))}
  if 'area' in objects:
    out['area'] = tf.boolean_mask(tf.cast(objects['area'], tf.float32), keep)
  return out

"""COCO-format data: instances json + image folder -> checked records; COCO as TFDS stores it.

Labels are contiguous (0..C-1) in the order of sorted category ids; ``category_ids[label]``
gives the original id back (for COCO 2017: the official 80 -> 90-id ``_valid_ids``).

Malformed files, unknown categories, unknown images and missing image files are errors
(:class:`~centernet_jax.data.errors.DataError`, a ``ValueError``). Boxes with zero or negative
width or height cannot be trained on or matched, so they are skipped, each with one warning
naming the annotation id and the image file, and counted (``CocoData.num_degenerate``). With
``max_bad_fraction`` set (training data), an annotation that fails validation (unknown image or
category, malformed bbox, missing field, repeated id) is skipped the same way and counted
(``CocoData.num_invalid``) instead, and the load fails only if more than that fraction of the
annotations is bad (:class:`~centernet_jax.data.errors.InvalidAnnotations`).

Person keypoints (``num_joints`` set: the multi_pose task): every category used must list
``num_joints`` joint names in 'keypoints' (its 1-based 'skeleton' becomes 0-based pairs), and
every annotation must carry 'keypoints' = [x1, y1, v1, ...], 3 * ``num_joints`` finite numbers
with visibility v in {0, 1, 2}; an annotation that does not is invalid (skipped within the
budget in training, an error otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np

from centernet_jax.data import import_tf
from centernet_jax.data.errors import MAX_WARNINGS, DataError, InvalidAnnotations

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
              num_joints: int | None = None, skip_empty: bool = False) -> CocoData:
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

  Returns:
    CocoData with one ImageRecord per entry of 'images' (same order; images without objects
    are kept unless ``skip_empty``, as in the official code). Evaluation reads ``ann_file``
    itself with pycocotools.
  """
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

  images, by_id = [], {}
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

  num_degenerate = 0
  seen_ann_ids = set()
  invalid = InvalidAnnotations(ann_file, max_bad_fraction)
  for k, ann in enumerate(data['annotations']):
    try:
      num_degenerate += _add_annotation(ann_file, k, ann, by_id, label_of, category_ids,
                                        seen_ann_ids, num_degenerate, num_joints)
    except DataError as e:
      invalid.add(e)
  num_invalid = invalid.finish(len(data['annotations']))
  if num_degenerate > MAX_WARNINGS:
    logging.warning('%s: skipped %d annotations with zero or negative width or height in all '
                    '(the first %d are listed above)', ann_file, num_degenerate, MAX_WARNINGS)

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

  if class_names is None:
    names = dict(zip(file_ids, file_names, strict=True))
    class_names = [names.get(cid, str(cid)) for cid in category_ids]
  return CocoData(ann_file, image_dir, list(category_ids), class_names, images, num_degenerate,
                  num_invalid, keypoint_names, skeleton, num_empty)


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


def _add_annotation(ann_file, k, ann, by_id, label_of, category_ids, seen_ann_ids,
                    num_degenerate, num_joints=None) -> int:
  """Checks annotation k and appends it to its image; returns 1 if it was degenerate."""
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
  if w <= 0 or h <= 0:
    if num_degenerate < MAX_WARNINGS:
      logging.warning('%s: skipping %s: bbox %s has zero or negative width or height',
                      ann_file, what, bbox)
    return 1
  rec.boxes.append((x, y, x + w, y + h))
  rec.labels.append(label_of[cid])
  rec.iscrowd.append(bool(ann.get('iscrowd', 0)))
  if joints is not None:
    rec.keypoints.append(joints)
  return 0


def check_image_files(ann_file: str, images: list[ImageRecord]) -> None:
  """Raises DataError naming the missing image files (first 10 and the count)."""
  missing = [r for r in images if not os.path.isfile(r.path)]
  if missing:
    listed = '\n  '.join(f'{r.path} (image id {r.image_id})' for r in missing[:10])
    more = f'\n  ... and {len(missing) - 10} more' if len(missing) > 10 else ''
    raise DataError(f'{ann_file}: {len(missing)} of {len(images)} image files not found:\n  '
                    f'{listed}{more}')


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

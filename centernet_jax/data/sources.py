"""Data sources: one split of a detection data set, read by example index inside tf.data.

The pipeline reads every source the same way, for training and evaluation alike:
example index -> :meth:`Source.read` (the encoded record) -> :meth:`Source.decode` (canonical
features) -> transform -> batch. Which example an element is, is decided before reading (the
pipeline's index stage), so a stream is a pure function of the seed and the position in it and
resuming at any step costs nothing.

- :class:`CocoJsonSource`: an instances json and its image folder (``data.source='coco_json'``).
  The built-in shapes and shapes_pose sets are such folders, generated on first use
  (``data.source='shapes'`` / ``'shapes_pose'``).
- :class:`KittiSource`: a split of the KITTI object layout (``data.source='kitti'``; the
  built-in synthetic ``'shapes_ddd'`` set is such a folder, generated on first use), with the
  3D labels of the ddd task.
- :class:`TfdsSource`: a TFDS split prepared in a random-access file format (array_record),
  read with ``builder.as_data_source``. The records are fetched in chunks of ``READ_CHUNK``
  indices per Python call (ArrayRecord reads them in parallel); parsing and image decoding are
  tf ops, so no Python runs per element.

COCO-json images are shown as their EXIF orientation says (``config.data.exif_orientation``,
default 'apply': :mod:`.coco`), here and in :func:`read_image` alike; TFDS records are decoded as
stored.

Canonical features (``Source.decode``): image [H, W, 3] uint8 RGB, boxes [N, 4] float32 xyxy
pixels, labels [N] int32 contiguous, iscrowd [N] bool, image_id [] int64; with person keypoints
(``config.data.num_joints`` set, COCO-json sources only) also keypoints [N, J, 3] float32
(x, y pixels, visibility v in {0, 1, 2}). KITTI sources: labels are the official codes
(``kitti.CLASS_CODES``, negative for ignored and skipped types), every object of the label file
in file order, iscrowd all False, and also depth [N], dims [N, 3] (h, w, l), alpha [N] and
center3d [N, 2] (pixels where the 3D box's middle projects).
"""

from __future__ import annotations

import abc
import logging
import os

import numpy as np

from centernet_jax import keypoints
from centernet_jax.data import coco, import_tf, kitti, shapes, shapes_ddd, shapes_pose, transforms
from centernet_jax.data.errors import DataError, first_line

tf = import_tf()

READ_CHUNK = 32  # TFDS records fetched per Python call


def decode_image(contents):
  """Encoded image bytes -> [H, W, 3] uint8 RGB (JPEG, PNG, BMP, GIF first frame; gray, RGBA)."""
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def read_image(image: str | os.PathLike | np.ndarray, exif_orientation: str = 'apply'
               ) -> np.ndarray:
  """An image file or array as [H, W, 3] uint8 RGB, decoded as the data pipeline decodes files.

  Args:
    image: a file path, or a uint8 array [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] grayscale.
    exif_orientation: 'apply': a file's EXIF orientation is applied to its pixels (as the
      pipeline does: ``config.data.exif_orientation``); 'ignore': pixels as stored. Arrays are
      taken as they are.

  Raises:
    DataError: missing or undecodable file, or an array of another dtype or shape.
  """
  if exif_orientation not in coco.EXIF_ORIENTATION_MODES:
    raise DataError(f'config.data.exif_orientation must be one of '
                    f'{coco.EXIF_ORIENTATION_MODES}, got {exif_orientation!r}')
  if isinstance(image, str | os.PathLike):
    if not os.path.isfile(image):
      raise DataError(f'image file not found: {image}')
    try:
      pixels = decode_image(tf.io.read_file(str(image)))
    except tf.errors.OpError as e:
      raise DataError(f'cannot decode image file {image}: {first_line(e)}') from None
    if exif_orientation == 'apply':
      pixels = transforms.exif_orient(pixels, coco.image_orientation(str(image))[0])
    return pixels.numpy()
  pixels = np.asarray(image)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or pixels.dtype != np.uint8:
    raise DataError(f'image array must be uint8 [H, W], [H, W, 3] or [H, W, 4]; got '
                    f'{pixels.dtype} {pixels.shape}')
  return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]


class Source(abc.ABC):
  """One split of a detection data set with random access by example index.

  Attributes:
    kind: 'coco_json' or 'tfds' (``DatasetInfo.source``).
    name: names the split in messages (the annotation file, or 'TFDS coco/2017 train').
    fix_hint: what to do about records that do not decode (ends an error message).
    category_ids: contiguous label -> original category id.
    class_names: category names, same order.
    coco_data: the checked COCO records (COCO-json sources), else None.
  """
  kind: str
  name: str
  fix_hint: str
  category_ids: list[int]
  class_names: list[str]
  coco_data: coco.CocoData | None = None

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of examples."""

  @abc.abstractmethod
  def read(self, ds, num_parallel_calls: int):
    """Adds ``record`` (tf.string, the encoded example) to tf.data dicts holding ``index``."""

  @abc.abstractmethod
  def decode(self, element: dict) -> dict:
    """tf ops: an element with ``index`` and ``record`` -> the canonical features."""

  @abc.abstractmethod
  def describe(self, index: int) -> str:
    """Names example ``index`` for messages (host side), e.g. its file and image id."""

  @abc.abstractmethod
  def image_ids(self) -> list[int]:
    """Image id of every example, in index order (the evaluation order)."""

  @abc.abstractmethod
  def coco_gt(self) -> str | dict:
    """Ground truth for pycocotools: an instances json path, or the same as a dict."""

  def ground_truth(self) -> str | dict:
    """Ground truth for the task's evaluator (``DatasetInfo.val_gt``): :meth:`coco_gt`."""
    return self.coco_gt()

  def check(self, index: int) -> str | None:
    """Reads and decodes example ``index`` again on the host: the error text, None if it decodes."""
    element = tf.data.Dataset.from_tensors({'index': tf.constant(index, tf.int64)})
    try:
      self.decode(next(iter(self.read(element, 1))))  # decoded eagerly: the op's own message
    except tf.errors.OpError as e:
      return first_line(e)
    return None


class FileSource(Source):
  """A source whose examples are image files: ``tables()['paths']`` [N] tf.string by index."""

  @abc.abstractmethod
  def tables(self) -> dict:
    """The records as tf constants, with at least ``paths``."""

  def read(self, ds, num_parallel_calls: int):
    paths = self.tables()['paths']
    return ds.map(lambda e: dict(e, record=tf.io.read_file(paths[e['index']])),
                  num_parallel_calls=num_parallel_calls)


# --- COCO-json folders (and the built-in shapes set) ---------------------------------------


class CocoJsonSource(FileSource):
  """A checked COCO instances file (:func:`coco.load_coco`) and its image files."""
  kind = 'coco_json'

  def __init__(self, data: coco.CocoData):
    self.coco_data = data
    self.name = data.ann_file
    self.fix_hint = f'fix them or remove them from the annotation file {data.ann_file}'
    self.category_ids = list(data.category_ids)
    self.class_names = list(data.class_names)
    self._tables = None

  def __len__(self) -> int:
    return len(self.coco_data.images)

  def tables(self) -> dict:
    """The records as tf constants (built on first use): paths [N], object offsets [N + 1],
    boxes [M, 4], labels [M], iscrowd [M], image ids [N], EXIF orientations [N] and the
    annotation file's (height, width) [N, 2]; keypoints [M, J, 3] when the file was loaded with
    ``num_joints``."""
    if self._tables is None:
      records = self.coco_data.images
      counts = [len(r.labels) for r in records]
      self._tables = {
          'paths': tf.constant([r.path for r in records], tf.string),
          'offsets': tf.constant(np.concatenate([[0], np.cumsum(counts)]), tf.int64),
          'boxes': tf.constant(np.concatenate([r.boxes for r in records] +
                                              [np.zeros((0, 4), np.float32)])),
          'labels': tf.constant(np.concatenate([r.labels for r in records] +
                                               [np.zeros((0,), np.int32)])),
          'iscrowd': tf.constant(np.concatenate([r.iscrowd for r in records] +
                                                [np.zeros((0,), bool)])),
          'image_ids': tf.constant([r.image_id for r in records], tf.int64),
          'orientations': tf.constant([r.orientation for r in records], tf.int32),
          'sizes': tf.constant(np.array([[r.height, r.width] for r in records],
                                        np.int32).reshape(-1, 2))}
      if self.coco_data.keypoint_names is not None:
        num_joints = len(self.coco_data.keypoint_names)
        self._tables['keypoints'] = tf.constant(np.concatenate(
            [r.keypoints for r in records] + [np.zeros((0, num_joints, 3), np.float32)]))
    return self._tables

  def decode(self, element: dict) -> dict:
    t = self.tables()
    index = element['index']
    lo, hi = t['offsets'][index], t['offsets'][index + 1]
    out = {'image': self._oriented(decode_image(element['record']), index),
           'boxes': t['boxes'][lo:hi],
           'labels': t['labels'][lo:hi], 'iscrowd': t['iscrowd'][lo:hi],
           'image_id': t['image_ids'][index]}
    if 'keypoints' in t:
      out['keypoints'] = t['keypoints'][lo:hi]
    return out

  def _oriented(self, image, index):
    """The decoded pixels turned to their EXIF orientation; a size that then disagrees with
    the annotation file's is an error naming the file (the header said otherwise)."""
    t = self.tables()
    orientation = t['orientations'][index]
    image = transforms.exif_orient(image, orientation)
    expected = t['sizes'][index]
    ok = (orientation == 1) | tf.reduce_all((tf.shape(image)[:2] == expected) | (expected <= 0))
    message = tf.strings.join([
        t['paths'][index], ': size after the EXIF orientation ', tf.strings.as_string(orientation),
        " disagrees with the annotation file (config.data.exif_orientation='ignore' reads the "
        'pixels as stored)'])
    if tf.executing_eagerly():  # Source.check: the message alone, without the op's wording
      if not bool(ok):
        raise tf.errors.InvalidArgumentError(None, None, message.numpy().decode())
      return image
    with tf.control_dependencies([tf.debugging.Assert(ok, [message], summarize=1)]):
      return tf.identity(image)

  def describe(self, index: int) -> str:
    rec = self.coco_data.images[index]
    return f'{rec.path} (image id {rec.image_id})'

  def image_ids(self) -> list[int]:
    return [r.image_id for r in self.coco_data.images]

  def coco_gt(self) -> str:
    return self.coco_data.ann_file


def default_shapes_dir(data_cfg) -> str:
  """~/.cache/centernet_jax/shapes_v<version>_<size>_<train>_<val>_<seed>."""
  name = (f'shapes_v{shapes.VERSION}_{data_cfg.shapes_image_size}_{data_cfg.shapes_num_train}_'
          f'{data_cfg.shapes_num_val}_{data_cfg.shapes_seed}')
  return os.path.join(os.path.expanduser('~'), '.cache', 'centernet_jax', name)


def default_shapes_pose_dir(data_cfg) -> str:
  """~/.cache/centernet_jax/shapes_pose_v<version>_<size>_<train>_<val>_<seed>."""
  name = (f'shapes_pose_v{shapes_pose.VERSION}_{data_cfg.shapes_image_size}_'
          f'{data_cfg.shapes_num_train}_{data_cfg.shapes_num_val}_{data_cfg.shapes_seed}')
  return os.path.join(os.path.expanduser('~'), '.cache', 'centernet_jax', name)


def _shapes_pose_paths(data_cfg) -> dict:
  """The built-in shapes_pose set (stick figures, 17 COCO joints), generated if needed."""
  return shapes_pose.ensure(data_cfg.shapes_dir or default_shapes_pose_dir(data_cfg),
                            num_train=data_cfg.shapes_num_train,
                            num_val=data_cfg.shapes_num_val,
                            image_size=data_cfg.shapes_image_size, seed=data_cfg.shapes_seed)


def _shapes_paths(data_cfg) -> dict:
  """The built-in shapes set: a COCO-json folder, generated unless it is already there."""
  return shapes.ensure(data_cfg.shapes_dir or default_shapes_dir(data_cfg),
                       num_train=data_cfg.shapes_num_train, num_val=data_cfg.shapes_num_val,
                       image_size=data_cfg.shapes_image_size, seed=data_cfg.shapes_seed)


def _coco_json_paths(data_cfg) -> dict:
  paths = {k: data_cfg[k] for k in ('train_annotations', 'train_images', 'val_annotations',
                                    'val_images')}
  unset = [k for k, v in paths.items() if not v]
  if unset:
    raise DataError("data.source='coco_json' needs " +
                    ', '.join(f'config.data.{k}' for k in unset))
  return paths


_COCO_JSON_FOLDERS = {'coco_json': _coco_json_paths, 'shapes': _shapes_paths,
                      'shapes_pose': _shapes_pose_paths}


def _open_coco_json(paths: dict, max_skip_fraction: float, num_joints: int | None,
                    skip_empty: bool, exif_orientation: str = 'apply',
                    train_on_crowd: bool = False) -> tuple[Source, Source]:
  train = coco.load_coco(paths['train_annotations'], paths['train_images'],
                         max_bad_fraction=max_skip_fraction, num_joints=num_joints,
                         skip_empty=skip_empty, exif_orientation=exif_orientation)
  if not train.num_objects(with_crowd=train_on_crowd) and (train.images or
                                                           train.num_empty_skipped):
    raise DataError(f'{train.ann_file}: no object to train on: {_object_counts(train)}, so '
                    'training would learn background only. A training split needs annotated '
                    'objects' + ('' if train_on_crowd else
                                 ' (crowd boxes are left out unless config.data.train_on_crowd)'))
  val = coco.load_coco(paths['val_annotations'], paths['val_images'],
                       category_ids=train.category_ids, num_joints=num_joints,
                       exif_orientation=exif_orientation)
  if val.images and not val.num_objects(with_crowd=False):
    logging.warning('%s: no object to evaluate against (%s): every COCO metric of this split '
                    'will be -1, which pycocotools reports when there is no ground truth',
                    val.ann_file, _object_counts(val))
  return CocoJsonSource(train), CocoJsonSource(val)


def _object_counts(data: coco.CocoData) -> str:
  """'N images, A annotations kept (C crowd), skipped ...' for messages."""
  crowd = data.num_objects() - data.num_objects(with_crowd=False)
  skipped = [f'{n} {what}' for n, what in ((data.num_degenerate, 'of zero size'),
                                             (data.num_outside, 'outside their image'),
                                             (data.num_invalid, 'invalid')) if n]
  return (f'{len(data.images)} images, {data.num_objects()} annotations kept ({crowd} crowd)' +
          (f', skipped {", ".join(skipped)}' if skipped else ''))


# --- KITTI object layout (and the built-in shapes_ddd set) ---------------------------------

# The official KITTI -> COCO conversion's category ids of Pedestrian, Car, Cyclist
# (docs/parity.md 4.13).
KITTI_CATEGORY_IDS = [1, 2, 3]


class KittiSource(FileSource):
  """A checked KITTI split (:func:`kitti.load_kitti`) and its PNG images (ddd labels)."""
  kind = 'kitti'

  def __init__(self, data: kitti.KittiData):
    self.kitti_data = data
    self.name = data.split_file
    self.fix_hint = (f'fix them or remove their ids from the split file {data.split_file}')
    self.category_ids = list(KITTI_CATEGORY_IDS)
    self.class_names = list(kitti.CLASS_NAMES)
    self._tables = None

  def __len__(self) -> int:
    return len(self.kitti_data.records)

  def tables(self) -> dict:
    """The records as tf constants (built on first use): paths [N], object offsets [N + 1],
    boxes [M, 4], labels [M], depth [M], dims [M, 3], alpha [M], center3d [M, 2] (the projected
    3D centre), image ids [N]."""
    if self._tables is None:
      records = self.kitti_data.records
      counts = [len(r.labels) for r in records]

      def cat(key, shape, dtype):
        return tf.constant(np.concatenate([np.asarray(getattr(r, key), dtype).reshape(shape)
                                           for r in records] + [np.zeros((0,) + shape[1:],
                                                                         dtype)]))

      self._tables = {
          'paths': tf.constant([r.path for r in records], tf.string),
          'offsets': tf.constant(np.concatenate([[0], np.cumsum(counts)]), tf.int64),
          'boxes': cat('boxes', (-1, 4), np.float32), 'labels': cat('labels', (-1,), np.int32),
          'depth': cat('depth', (-1,), np.float32), 'dims': cat('dims', (-1, 3), np.float32),
          'alpha': cat('alpha', (-1,), np.float32),
          'center3d': cat('center3d', (-1, 2), np.float32),
          'image_ids': tf.constant([r.image_id for r in records], tf.int64)}
    return self._tables

  def decode(self, element: dict) -> dict:
    t = self.tables()
    index = element['index']
    lo, hi = t['offsets'][index], t['offsets'][index + 1]
    labels = t['labels'][lo:hi]
    return {'image': decode_image(element['record']), 'boxes': t['boxes'][lo:hi],
            'labels': labels, 'iscrowd': tf.zeros_like(labels, tf.bool),
            'depth': t['depth'][lo:hi], 'dims': t['dims'][lo:hi], 'alpha': t['alpha'][lo:hi],
            'center3d': t['center3d'][lo:hi], 'image_id': t['image_ids'][index]}

  def describe(self, index: int) -> str:
    rec = self.kitti_data.records[index]
    return f'{rec.path} (image id {rec.image_id})'

  def image_ids(self) -> list[int]:
    return [r.image_id for r in self.kitti_data.records]

  def coco_gt(self) -> dict:
    """The KITTI ground truth (:meth:`ground_truth`); there is no COCO form."""
    return self.ground_truth()

  def ground_truth(self) -> dict:
    """{image id: {'calib': [3, 4] P2, 'objects': every object (DontCare too) in the evaluation
    form (``KittiRecord.objects``)}}: what ``tasks/ddd.evaluate`` reads."""
    return {r.image_id: {'calib': r.calib, 'objects': r.objects()}
            for r in self.kitti_data.records}


def default_shapes_ddd_dir(data_cfg) -> str:
  """~/.cache/centernet_jax/shapes_ddd_v<version>_<h>x<w>_<train>_<val>_<seed>."""
  h, w = (int(v) for v in data_cfg.shapes_ddd_hw)
  name = (f'shapes_ddd_v{shapes_ddd.VERSION}_{h}x{w}_{data_cfg.shapes_num_train}_'
          f'{data_cfg.shapes_num_val}_{data_cfg.shapes_seed}')
  return os.path.join(os.path.expanduser('~'), '.cache', 'centernet_jax', name)


def _shapes_ddd_paths(data_cfg) -> dict:
  """The built-in shapes_ddd set (KITTI layout), generated unless it is already there."""
  h, w = (int(v) for v in data_cfg.shapes_ddd_hw)
  try:
    return shapes_ddd.ensure(data_cfg.shapes_dir or default_shapes_ddd_dir(data_cfg),
                             num_train=data_cfg.shapes_num_train,
                             num_val=data_cfg.shapes_num_val, width=w, height=h,
                             seed=data_cfg.shapes_seed)
  except ValueError as e:  # a folder made with other parameters
    raise DataError(f'config.data.shapes_dir: {e}') from None


def _kitti_paths(data_cfg) -> dict:
  paths = {k: data_cfg[k] for k in ('kitti_root', 'train_split', 'val_split')}
  unset = [k for k, v in paths.items() if not v]
  if unset:
    raise DataError("data.source='kitti' needs " + ', '.join(f'config.data.{k}' for k in unset)
                    + ' (the folder holding training/image_2, label_2 and calib, and the split '
                    'files of image ids)')
  return paths


def _open_kitti(paths: dict, max_skip_fraction: float) -> tuple[Source, Source]:
  """Training split with a skip budget (bad lines / images skipped and counted), validation
  split strict; a training split without a Car, Pedestrian or Cyclist object is refused."""
  train = kitti.load_kitti(paths['kitti_root'], paths['train_split'],
                           max_bad_fraction=max_skip_fraction)
  positives = sum(int((r.labels >= 0).sum()) for r in train.records)
  if train.records and not positives:
    raise DataError(f'{train.split_file}: no object to train on: {len(train.records)} images, '
                    f'no {", ".join(kitti.CLASS_NAMES)} object, so training would learn '
                    'background only. A training split needs labelled objects')
  val = kitti.load_kitti(paths['kitti_root'], paths['val_split'])
  return KittiSource(train), KittiSource(val)


_KITTI_FOLDERS = {'kitti': _kitti_paths, 'shapes_ddd': _shapes_ddd_paths}


# --- TFDS (random access) --------------------------------------------------------------------


def _prepare_hint(builder, tfds_name: str) -> str:
  root = builder.data_dir_root
  return (f"prepare it in a random-access format: tfds.builder('{tfds_name}', data_dir='{root}')"
          ".download_and_prepare(file_format='array_record') or, with the tfds command line "
          f'(needs apache-beam), tfds build {tfds_name} --data_dir={root} '
          '--file_format=array_record; a copy prepared as TFRecord converts in place with '
          f'tfds convert_format --dataset_version_dir={builder.data_dir} '
          f'--out_file_format=array_record; then set config.data.tfds_data_dir={root}')


class TfdsSource(Source):
  """A TFDS split of COCO-format records (``coco/2017`` features), read by random access.

  Args:
    builder: the TFDS builder (prepared).
    tfds_name: the name it was built from (``config.data.tfds_name``, e.g. 'coco/2017').
    split: split name (slices such as 'train[:10%]' work).
    label_map: [num_tfds_classes] int32, TFDS class -> contiguous label.
    category_ids, class_names: contiguous label -> original category id and name.

  Raises:
    DataError: the split is not prepared, or not in a random-access format (the message says how
      to prepare it).
  """
  kind = 'tfds'

  def __init__(self, builder, tfds_name: str, split: str, label_map: np.ndarray,
               category_ids: list[int], class_names: list[str]):
    import tensorflow_datasets as tfds

    self.name = f'TFDS {tfds_name} {split}'
    self.fix_hint = (f'the TFDS data set in {builder.data_dir} holds records that do not decode; '
                     'prepare it again')
    self.category_ids, self.class_names = list(category_ids), list(class_names)
    self.label_map = np.asarray(label_map, np.int32)
    self._features = builder.info.features
    self._decoders = {'image': tfds.decode.SkipDecoding()}  # decoded by decode_image
    self._scanned = None
    self.num_degenerate = 0  # objects of zero size dropped by the scan (coco_gt)
    hint = _prepare_hint(builder, tfds_name)
    try:
      builder.info.splits[split]
    except (KeyError, ValueError) as e:
      raise DataError(f'{self.name}: split not found in {builder.data_dir} ({e}); {hint}') from None
    try:
      self._records = builder.as_data_source(
          split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except (NotImplementedError, ValueError) as e:
      formats = sorted(f.value for f in builder.info.available_file_formats())
      raise DataError(f'{self.name}: cannot read by random access (prepared as {formats} in '
                      f'{builder.data_dir}; {type(e).__name__}); {hint}') from None

  def __len__(self) -> int:
    return len(self._records)

  def _fetch(self, indices: np.ndarray) -> np.ndarray:
    return np.array(self._records.__getitems__(indices.tolist()) if len(indices) else [],
                    dtype=object)

  def read(self, ds, num_parallel_calls: int):
    def fetch(chunk):
      records = tf.numpy_function(self._fetch, [chunk['index']], tf.string)
      records.set_shape(chunk['index'].shape)
      return dict(chunk, record=records)

    return ds.batch(READ_CHUNK).map(fetch, num_parallel_calls=num_parallel_calls).unbatch()

  def _parse(self, record) -> dict:
    return self._features.deserialize_example(record, decoders=self._decoders)

  def decode(self, element: dict) -> dict:
    ex = self._parse(element['record'])
    image = decode_image(ex['image'])
    hw = tf.shape(image)
    objs = coco.tfds_objects_to_pixels(ex['objects'], hw[0], hw[1], self.label_map)
    return {'image': image, 'boxes': objs['boxes'], 'labels': objs['labels'],
            'iscrowd': objs['iscrowd'], 'image_id': tf.cast(ex['image/id'], tf.int64)}

  def describe(self, index: int) -> str:
    try:
      image_id = f' (image id {int(self._parse(self._records[index])["image/id"])})'
    except (tf.errors.OpError, IndexError, ValueError):
      image_id = ''
    return f'record {index} of {self.name}{image_id}'

  def _scan(self) -> dict:
    """One pass over the split without decoding the images (JPEG headers give the size)."""
    if self._scanned is not None:
      return self._scanned

    def header(element):
      ex = self._parse(element['record'])
      contents = ex['image']
      hw = tf.cond(tf.io.is_jpeg(contents), lambda: tf.image.extract_jpeg_shape(contents)[:2],
                   lambda: tf.shape(decode_image(contents))[:2])
      objs = coco.tfds_objects_to_pixels(ex['objects'], hw[0], hw[1], self.label_map)
      return dict(objs, id=ex['image/id'], hw=hw, file_name=ex['image/filename'])

    indices = tf.data.Dataset.range(len(self)).map(lambda i: {'index': i})
    ds = self.read(indices, tf.data.AUTOTUNE).map(header, num_parallel_calls=tf.data.AUTOTUNE)
    images, anns, num_degenerate = [], [], 0
    for ex in ds.as_numpy_iterator():
      image_id = int(ex['id'])
      images.append({'id': image_id, 'height': int(ex['hw'][0]), 'width': int(ex['hw'][1]),
                     'file_name': ex['file_name'].decode()})
      num_degenerate += int(ex['num_degenerate'])
      for box, label, crowd, area in zip(ex['boxes'], ex['labels'], ex['iscrowd'], ex['area'],
                                         strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        anns.append({'id': len(anns) + 1, 'image_id': image_id,
                     'category_id': int(self.category_ids[label]),
                     'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': float(area),
                     'iscrowd': int(crowd)})
    if num_degenerate:
      logging.warning('%s: dropped %d objects with zero or negative width or height', self.name,
                      num_degenerate)
    self.num_degenerate = num_degenerate
    cats = [{'id': int(c), 'name': n}
            for c, n in zip(self.category_ids, self.class_names, strict=True)]
    self._scanned = {'images': images, 'annotations': anns, 'categories': cats}
    return self._scanned

  def image_ids(self) -> list[int]:
    return [im['id'] for im in self._scan()['images']]

  def coco_gt(self) -> dict:
    """The split as a COCO instances dict: 'images' (id, width, height, file_name),
    'annotations' (original category id, bbox xywh pixels, TFDS 'area', iscrowd) and
    'categories'. Objects with zero or negative width or height are dropped (logged)."""
    return self._scan()


def _open_tfds(data_cfg) -> tuple[Source, Source]:
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'config.data.tfds_name={data_cfg.tfds_name!r}: '
                    f'{str(e).splitlines()[0]}') from None
  label_names = list(builder.info.features['objects']['label'].names)
  tfds_ids = coco.tfds_category_ids(label_names)
  category_ids = sorted(set(tfds_ids))
  names = dict(zip(tfds_ids, label_names, strict=True))
  label_map = np.array([category_ids.index(c) for c in tfds_ids], np.int32)
  class_names = [names[c] for c in category_ids]
  return tuple(TfdsSource(builder, data_cfg.tfds_name, split, label_map, category_ids,
                          class_names)
               for split in (data_cfg.tfds_train_split, data_cfg.tfds_val_split))


def check_keypoint_config(data_cfg) -> int | None:
  """``config.data.num_joints`` (None when absent: boxes only), checked with its flip_pairs.

  Raises:
    DataError: num_joints not a positive integer, or flip_pairs not pairs of distinct joints
      in [0, num_joints), each joint in at most one pair.
  """
  if 'num_joints' not in data_cfg:
    return None
  num_joints = data_cfg.num_joints
  if not isinstance(num_joints, int) or isinstance(num_joints, bool) or num_joints <= 0:
    raise DataError(f'config.data.num_joints must be a positive integer, got {num_joints!r}')
  try:
    keypoints.check_flip_pairs(num_joints, data_cfg.get('flip_pairs', ()))
  except (ValueError, TypeError) as e:
    raise DataError(str(e)) from None
  return num_joints


def open_splits(data_cfg) -> tuple[Source, Source]:
  """The training and validation sources of ``config.data`` (annotations read and checked).

  Raises:
    DataError: an unknown ``data.source``, unset paths, bad annotation files, a TFDS data set not
      prepared for random access, an empty training split (no images, or COCO-json without any
      object to train on), a bad ``num_joints`` / ``flip_pairs``, or keypoints (or
      ``skip_empty_train_images``) asked of TFDS. A COCO-json validation split without objects
      is a warning (its metrics will be -1).
  """
  source = data_cfg.source
  num_joints = check_keypoint_config(data_cfg)
  skip_empty = bool(data_cfg.get('skip_empty_train_images', False))
  if source == 'tfds':
    if num_joints is not None:
      raise DataError(
          f'config.data.num_joints={num_joints} (multi_pose) needs person keypoints, which '
          f'TFDS {data_cfg.tfds_name} does not hold; use config.data.source=\'coco_json\' with '
          'config.data.train_annotations=<coco>/annotations/person_keypoints_train2017.json, '
          'config.data.val_annotations=<coco>/annotations/person_keypoints_val2017.json and '
          'config.data.train_images / val_images the train2017 / val2017 image folders')
    if skip_empty:
      raise DataError("config.data.skip_empty_train_images needs a COCO-json source "
                      "(config.data.source='coco_json'); with TFDS set it to False")
    train, val = _open_tfds(data_cfg)
  elif source in _KITTI_FOLDERS:
    if num_joints is not None:
      raise DataError(f'config.data.num_joints={num_joints} (multi_pose) needs person keypoints, '
                      f'which the KITTI layout (config.data.source={source!r}) does not hold')
    train, val = _open_kitti(_KITTI_FOLDERS[source](data_cfg), float(data_cfg.max_skip_fraction))
  elif source in _COCO_JSON_FOLDERS:
    train, val = _open_coco_json(_COCO_JSON_FOLDERS[source](data_cfg),
                                 float(data_cfg.max_skip_fraction), num_joints, skip_empty,
                                 str(data_cfg.get('exif_orientation', 'apply')),
                                 bool(data_cfg.get('train_on_crowd', False)))
  else:
    raise DataError("config.data.source must be 'coco_json', 'shapes', 'shapes_pose' or 'tfds' "
                    f"(COCO format), or 'kitti' or 'shapes_ddd' (KITTI layout), got {source!r}")
  if not len(train):
    raise DataError(f'{train.name}: no images')
  return train, val

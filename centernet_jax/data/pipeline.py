"""Input pipelines: data set information, training and evaluation iterators, predict inputs.

Sources (``config.data.source``): 'coco_json' (an instances json + image folder per split),
'shapes' (the built-in data set, generated on first use, then read as 'coco_json') and 'tfds'
(``tfds_name``, default coco/2017).

Training stream, COCO-format sources. Element ``i = step * global_batch + row`` of the global
stream is image ``index_shuffle(i % N, seed=(seed, i // N))``: a fresh stateless permutation
per epoch, no shuffle buffer, and augmentation seeded by ``(seed, i)``. Process p of P reads
rows ``[p * b, (p + 1) * b)`` of every global batch (b = global_batch / P), so the global
stream is the same for every process count and a run resumed at ``start_step`` continues it
exactly, with no skipping.

Training stream, TFDS. Records are read sequentially: each process reads its
``tfds.even_splits`` share with seeded file and buffer shuffles, so the stream is deterministic
for a given process count (not across process counts). Resuming skips ``start_step * b``
records of the process's stream; skipped records are read but not decoded.

Images are decoded with ``tf.io.decode_image`` (JPEG, PNG, BMP, GIF first frame; grayscale and
RGBA become RGB). Training skips an image that cannot be read, decoded or transformed: its row
of the batch is filled with a copy of another row of the same batch (so every later element
keeps its place in the stream and resuming stays exact), it is logged with its file name, and
the batch's ``skipped`` row flag is set. The iterator stops with a :class:`DataError` naming the
files once the skipped reads exceed ``data.max_skip_fraction`` of
``max(reads so far, training set size)``, so a broken data set is never trained on silently.
Evaluation stops at the first file that cannot be decoded, with a :class:`DataError` naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator

import numpy as np

from centernet_jax.data import coco, import_tf, shapes, transforms
from centernet_jax.data.coco import DataError

tf = import_tf()

_SHUFFLE_STREAM, _AUG_STREAM = 1, 2  # seed folds: permutation and augmentation streams


@dataclasses.dataclass
class DatasetInfo:
  """What the model, the evaluator and the loop need to know about a data set."""
  num_classes: int
  class_names: list[str]
  category_ids: list[int]  # label -> original category id
  # COCO instances json path, or the same as a dict (tfds).
  val_gt: str | dict = dataclasses.field(repr=False)
  val_image_ids: list[int] = dataclasses.field(repr=False)  # evaluation order
  num_train: int = 0
  num_val: int = 0
  source: str = ''
  train_data: coco.CocoData | None = dataclasses.field(default=None, repr=False)
  val_data: coco.CocoData | None = dataclasses.field(default=None, repr=False)
  tfds_label_map: np.ndarray | None = dataclasses.field(default=None, repr=False)


def default_shapes_dir(data_cfg) -> str:
  """~/.cache/centernet_jax/shapes_v<version>_<size>_<train>_<val>_<seed>."""
  name = (f'shapes_v{shapes.VERSION}_{data_cfg.shapes_image_size}_{data_cfg.shapes_num_train}_'
          f'{data_cfg.shapes_num_val}_{data_cfg.shapes_seed}')
  return os.path.join(os.path.expanduser('~'), '.cache', 'centernet_jax', name)


def get_dataset_info(data_cfg, workdir: str | None = None) -> DatasetInfo:
  """Reads (and checks) the data set's categories and splits; generates shapes if needed.

  Args:
    data_cfg: ``config.data``.
    workdir: unused (kept for sources that may cache there).

  Returns:
    DatasetInfo; for COCO-format sources it holds the parsed training and validation records.
  """
  del workdir
  source = data_cfg.source
  if source == 'tfds':
    return _tfds_info(data_cfg)
  if source == 'shapes':
    paths = shapes.ensure(data_cfg.shapes_dir or default_shapes_dir(data_cfg),
                          num_train=data_cfg.shapes_num_train, num_val=data_cfg.shapes_num_val,
                          image_size=data_cfg.shapes_image_size, seed=data_cfg.shapes_seed)
  elif source == 'coco_json':
    paths = {k: data_cfg[k] for k in ('train_annotations', 'train_images', 'val_annotations',
                                      'val_images')}
    unset = [k for k, v in paths.items() if not v]
    if unset:
      raise DataError("data.source='coco_json' needs " +
                      ', '.join(f'config.data.{k}' for k in unset))
  else:
    raise DataError(f"config.data.source must be 'coco_json', 'shapes' or 'tfds', got {source!r}")
  train = coco.load_coco(paths['train_annotations'], paths['train_images'],
                         max_bad_fraction=float(data_cfg.max_skip_fraction))
  val = coco.load_coco(paths['val_annotations'], paths['val_images'],
                       category_ids=train.category_ids)
  if not train.images:
    raise DataError(f"{paths['train_annotations']}: no images")
  return DatasetInfo(
      num_classes=len(train.category_ids), class_names=train.class_names,
      category_ids=train.category_ids, val_gt=paths['val_annotations'],
      val_image_ids=[r.image_id for r in val.images], num_train=len(train.images),
      num_val=len(val.images), source='coco_json', train_data=train, val_data=val)


def decode_image(contents):
  """Encoded image bytes -> [H, W, 3] uint8 RGB."""
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _train_kwargs(data_cfg) -> dict:
  return dict(
      input_size=data_cfg.input_size, max_objs=data_cfg.max_objs,
      scale_choices=np.arange(data_cfg.scale_min, data_cfg.scale_max, data_cfg.scale_step),
      rand_crop=data_cfg.rand_crop, shift=data_cfg.shift, scale=data_cfg.scale,
      flip=data_cfg.flip, color_aug=data_cfg.color_aug, channel_order=data_cfg.channel_order,
      mean=tuple(data_cfg.mean), std=tuple(data_cfg.std), crop_base=int(data_cfg.crop_base))


def _parallel(data_cfg) -> int:
  n = data_cfg.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else n


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} must be a positive multiple of '
                     f'the process count {process_count}')
  return global_batch_size // process_count


# --- COCO-format sources ---------------------------------------------------------------------


class _Flat:
  """Records of a split as tensors: paths [N], object offsets [N + 1], boxes, labels."""

  def __init__(self, records: list[coco.ImageRecord], keep_crowd: bool):
    keep = [np.ones(len(r.labels), bool) if keep_crowd else ~r.iscrowd for r in records]
    counts = [int(k.sum()) for k in keep]
    self.paths = [r.path for r in records]
    self.offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)]), tf.int64)
    pairs = list(zip(records, keep, strict=True))
    self.boxes = tf.constant(np.concatenate(
        [r.boxes[k] for r, k in pairs] + [np.zeros((0, 4), np.float32)]))
    self.labels = tf.constant(np.concatenate(
        [r.labels[k] for r, k in pairs] + [np.zeros((0,), np.int32)]))
    self.path_table = tf.constant(self.paths)
    self.image_ids = [r.image_id for r in records]
    self.id_table = tf.constant(self.image_ids, tf.int64)

  def objects(self, ex):
    lo, hi = self.offsets[ex], self.offsets[ex + 1]
    return self.boxes[lo:hi], self.labels[lo:hi]


def train_example_index(i, num_examples: int, seed: int):
  """Example of global stream element ``i``: a stateless permutation per epoch (tf op)."""
  i = tf.cast(i, tf.int64)
  epoch_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, _SHUFFLE_STREAM], tf.int64), i // num_examples)
  return tf.random.experimental.index_shuffle(i % num_examples, epoch_seed, num_examples - 1)


def _global_index(j, *, start_step: int, global_batch: int, local_batch: int,
                  process_index: int):
  """Global stream index of this process's j-th element."""
  j = tf.cast(j, tf.int64)
  return ((start_step + j // local_batch) * global_batch + process_index * local_batch
          + j % local_batch)


def _coco_train_dataset(data_cfg, info, *, global_batch, local_batch, seed, start_step,
                        process_index):
  flat = _Flat(info.train_data.images, keep_crowd=data_cfg.train_on_crowd)
  n = len(flat.paths)
  kwargs = _train_kwargs(data_cfg)
  to_global = dict(start_step=start_step, global_batch=global_batch, local_batch=local_batch,
                   process_index=process_index)

  def load(j):
    i = _global_index(j, **to_global)
    ex = train_example_index(i, n, seed)
    image = decode_image(tf.io.read_file(flat.path_table[ex]))
    boxes, labels = flat.objects(ex)
    aug_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _AUG_STREAM], tf.int64), i)
    out = transforms.train_transform(image, boxes, labels, aug_seed, **kwargs)
    out['image_id'] = flat.id_table[ex]
    out[_J] = tf.cast(j, tf.int64)
    return out

  ds = tf.data.Dataset.counter().map(load, num_parallel_calls=_parallel(data_cfg))
  ds = _fill_gaps(ds.ignore_errors(), first=0)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(data_cfg.prefetch)

  def describe(j: int) -> str:
    ex = int(train_example_index(_global_index(j, **to_global), n, seed))
    path = flat.paths[ex]
    try:
      decode_image(tf.io.read_file(path))
      reason = 'failed in the input pipeline (but decodes when read again)'
    except tf.errors.OpError as e:
      reason = _first_line(e)
    return f'{path}: {reason} (image id {flat.image_ids[ex]})'

  return ds.with_options(_options()), describe


def _coco_eval_dataset(data_cfg, data: coco.CocoData, *, local_batch, num_images,
                       process_index, process_count, test_scale=1.0):
  records = data.images if num_images < 0 else data.images[:num_images]
  n = len(records)
  global_batch = local_batch * process_count
  rows = np.arange(-(-n // global_batch) * global_batch)
  mine = rows[(rows // local_batch) % process_count == process_index]
  idx = np.minimum(mine, max(n - 1, 0))
  paths = [records[k].path for k in idx]
  ids = np.array([records[k].image_id for k in idx], np.int64)
  ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(paths, tf.string), ids, mine < n))
  ds = ds.map(lambda p, i, v: _eval_element(data_cfg, tf.io.read_file(p), i, v, test_scale),
              num_parallel_calls=_parallel(data_cfg))
  return _eval_batches(ds, data_cfg, local_batch), lambda k: paths[k * local_batch:
                                                                   (k + 1) * local_batch]


def _eval_element(data_cfg, contents, image_id, valid, test_scale: float = 1.0) -> dict:
  out = transforms.eval_transform(decode_image(contents), mode=data_cfg.eval_mode,
                                  pad=data_cfg.eval_pad, size=data_cfg.eval_size,
                                  channel_order=data_cfg.channel_order, test_scale=test_scale)
  out['image_id'] = tf.cast(image_id, tf.int64)
  out['valid'] = tf.cast(valid, tf.bool)
  return out


def _eval_batches(ds, data_cfg, local_batch):
  # keep_res images differ in size: pad the batch with zeros at the bottom/right (outside the
  # affine's window, so center/scale stay valid), then normalise, so the padding gets the
  # value of a zero pixel as the official zero border does.
  ds = ds.padded_batch(local_batch)
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def norm(batch):
    batch['image'] = transforms.normalize(batch['image'], mean, std)
    return batch

  return ds.map(norm).prefetch(data_cfg.prefetch).with_options(_options())


# --- TFDS ------------------------------------------------------------------------------------


def _tfds_builder(data_cfg):
  import tensorflow_datasets as tfds

  return tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.tfds_data_dir or None)


def _tfds_info(data_cfg) -> DatasetInfo:
  builder = _tfds_builder(data_cfg)
  label_names = list(builder.info.features['objects']['label'].names)
  tfds_ids = coco.tfds_category_ids(label_names)
  category_ids = sorted(set(tfds_ids))
  names = dict(zip(tfds_ids, label_names, strict=True))
  label_map = np.array([category_ids.index(c) for c in tfds_ids], np.int32)
  val_gt, num_degenerate = coco.tfds_val_gt(builder, data_cfg.tfds_val_split, label_map,
                                        category_ids, [names[c] for c in category_ids])
  if num_degenerate:
    logging.warning('TFDS %s %s: dropped %d objects with zero or negative width or height',
                    data_cfg.tfds_name, data_cfg.tfds_val_split, num_degenerate)
  return DatasetInfo(
      num_classes=len(category_ids), class_names=[names[c] for c in category_ids],
      category_ids=category_ids, val_gt=val_gt,
      val_image_ids=[im['id'] for im in val_gt['images']],
      num_train=coco.tfds_num_examples(builder, data_cfg.tfds_train_split),
      num_val=len(val_gt['images']), source='tfds', tfds_label_map=label_map)


def _tfds_train_dataset(data_cfg, info, *, local_batch, seed, start_step, process_index,
                        process_count):
  import tensorflow_datasets as tfds

  builder = _tfds_builder(data_cfg)
  split = tfds.even_splits(data_cfg.tfds_train_split, n=process_count,
                           drop_remainder=True)[process_index]
  kwargs = _train_kwargs(data_cfg)
  keep_crowd = data_cfg.train_on_crowd

  def load(j, ex):
    image = decode_image(ex['image'])
    shape = tf.shape(image)
    objs = coco.tfds_objects_to_pixels(ex['objects'], shape[0], shape[1], info.tfds_label_map)
    keep = tf.ones_like(objs['iscrowd']) if keep_crowd else tf.logical_not(objs['iscrowd'])
    aug_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _AUG_STREAM], tf.int64), j * process_count + process_index)
    out = transforms.train_transform(image, tf.boolean_mask(objs['boxes'], keep),
                                     tf.boolean_mask(objs['labels'], keep), aug_seed, **kwargs)
    out['image_id'] = tf.cast(ex['image/id'], tf.int64)
    out[_J] = tf.cast(j, tf.int64)
    return out

  ds = coco.tfds_as_dataset(builder, split, shuffle_seed=seed)
  ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  skip = start_step * local_batch
  ds = ds.skip(skip).enumerate(start=skip)
  ds = ds.map(load, num_parallel_calls=_parallel(data_cfg))
  ds = _fill_gaps(ds.ignore_errors(), first=skip)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(data_cfg.prefetch)

  def describe(j: int) -> str:
    return (f'record {j} of this process\'s share of TFDS {data_cfg.tfds_name} '
            f'{data_cfg.tfds_train_split}: failed to decode or transform')

  return ds.with_options(_options()), describe


def _tfds_eval_dataset(data_cfg, info, *, local_batch, num_images, process_index,
                       process_count, test_scale=1.0):
  builder = _tfds_builder(data_cfg)
  n = info.num_val if num_images < 0 else min(num_images, info.num_val)
  global_batch = local_batch * process_count
  total = -(-n // global_batch) * global_batch
  ds = coco.tfds_as_dataset(builder, data_cfg.tfds_val_split).take(n)
  ds = ds.concatenate(ds.take(1).repeat(total - n)).enumerate()
  ds = ds.filter(lambda j, ex: (j // local_batch) % process_count == process_index)
  ds = ds.map(lambda j, ex: _eval_element(data_cfg, ex['image'], ex['image/id'], j < n,
                                          test_scale),
              num_parallel_calls=_parallel(data_cfg))
  return _eval_batches(ds, data_cfg, local_batch), None


# --- Public iterators ------------------------------------------------------------------------


def create_train_iterator(data_cfg, *, info: DatasetInfo, global_batch_size: int, seed: int,
                          start_step: int = 0, process_index: int = 0,
                          process_count: int = 1) -> Iterator[dict]:
  """Endless iterator over this process's share of the training batches.

  Args:
    data_cfg: ``config.data``.
    info: from :func:`get_dataset_info`.
    global_batch_size: batch size over all processes (a multiple of ``process_count``).
    seed: stream seed (``config.seed``).
    start_step: index of the first global batch to produce (resuming continues the stream).
    process_index, process_count: this process and the number of processes.

  Yields:
    dict of numpy arrays, b = global_batch_size / process_count, S = data.input_size,
    M = data.max_objs: image [b, S, S, 3] float32 (normalised), boxes [b, M, 4] float32 xyxy
    in input pixels (not clipped), labels [b, M] int32, mask [b, M] float32 (1 = object),
    image_id [b] int64 (host side: for messages), skipped [b] bool (the row's own image was
    unreadable and the row repeats another row of the batch).

  Raises:
    DataError: (while iterating) the skipped images passed ``data.max_skip_fraction``, or
      every image of a batch was unreadable.
  """
  local_batch = _local_batch(global_batch_size, process_count)
  if info.source == 'tfds':
    ds, files = _tfds_train_dataset(data_cfg, info, local_batch=local_batch, seed=seed,
                                    start_step=start_step, process_index=process_index,
                                    process_count=process_count)
  else:
    ds, files = _coco_train_dataset(data_cfg, info, global_batch=global_batch_size,
                                    local_batch=local_batch, seed=seed, start_step=start_step,
                                    process_index=process_index)
  num_examples = info.num_train // (process_count if info.source == 'tfds' else 1)
  return _train_checked(ds, files, info.train_data.ann_file if info.train_data else
                        f'TFDS {data_cfg.tfds_name}', max(num_examples, 1),
                        float(data_cfg.max_skip_fraction))


def create_eval_iterator(data_cfg, *, info: DatasetInfo, batch_size: int, num_images: int = -1,
                         process_index: int = 0, process_count: int = 1,
                         test_scale: float = 1.0) -> Iterator[dict]:
  """Iterator over this process's share of the validation images, in ``info.val_image_ids``
  order (process p gets rows [p * b, (p + 1) * b) of each global batch of b * P images).

  Args:
    data_cfg: ``config.data``.
    info: from :func:`get_dataset_info`.
    batch_size: this process's batch size b. The last batches are padded (``valid`` False).
    num_images: evaluate the first ``num_images`` images only (-1: all).
    process_index, process_count: this process and the number of processes.
    test_scale: resize factor of multi-scale testing (``transforms.eval_transform``); center
      and scale stay in original image pixels.

  Yields:
    dict of numpy arrays: image [b, H, W, 3] float32 normalised (keep_res: H, W = the largest
    padded size in the batch; each image sits at the top left of its own ``input_hw`` window),
    image_id [b] int64, center [b, 2] float32, scale [b, 2] float32, input_hw [b, 2] int32,
    orig_hw [b, 2] int32, valid [b] bool.
  """
  kw = dict(local_batch=batch_size, num_images=num_images, process_index=process_index,
            process_count=process_count, test_scale=float(test_scale))
  if info.source == 'tfds':
    ds, files = _tfds_eval_dataset(data_cfg, info, **kw)
  else:
    ds, files = _coco_eval_dataset(data_cfg, info.val_data, **kw)
  return _checked(ds, files, info.val_data.ann_file if info.val_data else '')


def load_image_for_predict(image: str | np.ndarray, data_cfg) -> dict:
  """One image as an evaluation batch of size 1 (same keys as :func:`create_eval_iterator`).

  Args:
    image: a file path, or a uint8 array [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] grayscale.
    data_cfg: ``config.data``.
  """
  if isinstance(image, str | os.PathLike):
    if not os.path.isfile(image):
      raise DataError(f'image file not found: {image}')
    try:
      pixels = decode_image(tf.io.read_file(str(image)))
    except tf.errors.OpError as e:
      raise DataError(f'cannot decode image file {image}: {_first_line(e)}') from None
  else:
    pixels = np.asarray(image)
    if pixels.ndim == 2:
      pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or pixels.dtype != np.uint8:
      raise DataError(f'image array must be uint8 [H, W], [H, W, 3] or [H, W, 4]; got '
                      f'{pixels.dtype} {pixels.shape}')
    pixels = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
  out = transforms.eval_transform(
      tf.convert_to_tensor(pixels), mode=data_cfg.eval_mode, pad=data_cfg.eval_pad,
      size=data_cfg.eval_size, channel_order=data_cfg.channel_order)
  out['image'] = transforms.normalize(out['image'], tuple(data_cfg.mean), tuple(data_cfg.std))
  out = {k: np.asarray(v)[None] for k, v in out.items()}
  out['image_id'] = np.array([-1], np.int64)
  out['valid'] = np.array([True])
  return out


def _checked(ds, batch_files, listed_in: str = '') -> Iterator[dict]:
  """Numpy batches; a decode error becomes a DataError naming the file(s) that fail."""
  it = ds.as_numpy_iterator()
  k = 0
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
            tf.errors.NotFoundError) as e:
      raise DataError(_explain(e, k, batch_files, listed_in)) from None
    yield batch
    k += 1


_J, _OK = '_stream_index', '_ok'  # internal element keys of the training stream


def _fill_gaps(ds, first: int):
  """Refills the elements that ``ignore_errors`` dropped, so the stream keeps its positions.

  Args:
    ds: dicts with key ``_J`` (the element's position, increasing from ``first``; positions
      whose element failed are missing).
    first: the first position.

  Returns:
    A dataset with one dict per position: the element with ``_OK`` True, or zeros of the same
    structure with ``_OK`` False (the host replaces those rows; :func:`_train_checked`).
  """
  spec = ds.element_spec

  def scan(prev, elem):
    return elem[_J], (prev + 1, elem)

  def hole(j):
    out = {k: tf.zeros(v.shape, v.dtype) for k, v in spec.items()}
    out[_J] = j
    out[_OK] = tf.constant(False)
    return out

  def expand(missing_from, elem):
    holes = tf.data.Dataset.range(missing_from, elem[_J]).map(hole)
    return holes.concatenate(tf.data.Dataset.from_tensors(dict(elem, **{_OK: tf.constant(True)})))

  return ds.scan(tf.constant(first - 1, tf.int64), scan).flat_map(expand)


def _train_checked(ds, describe, listed_in: str, num_examples: int,
                   max_fraction: float) -> Iterator[dict]:
  """Numpy training batches; rows whose image failed are logged, counted and refilled.

  A failed row is replaced by the next good row of its batch (cyclically), so the batch keeps
  its size and the stream its positions. ``describe(position) -> text`` names the image.
  """
  reads = skipped = 0
  recent: list[str] = []
  for batch in ds.as_numpy_iterator():
    ok = batch.pop(_OK)
    positions = batch.pop(_J)
    batch['skipped'] = ~ok
    reads += len(ok)
    bad = np.flatnonzero(~ok)
    if bad.size:
      for r in bad:
        text = describe(int(positions[r]))
        logging.warning('Skipping unreadable training image %s', text)
        recent = (recent + [text])[-10:]
      skipped += bad.size
      fraction = skipped / max(reads, num_examples)
      if fraction > max_fraction or bad.size == len(ok):
        why = ('every image of a batch failed' if bad.size == len(ok) else
               f'{skipped} of {reads} training reads so far were skipped ({fraction:.2%} of '
               f'max(reads, {num_examples} training images)), more than '
               f'config.data.max_skip_fraction={max_fraction:g}')
        raise DataError(f'cannot read image file(s); fix them or remove them from the annotation '
                        f'file {listed_in}:\n  ' + '\n  '.join(recent) + f'\n{why}.')
      good = np.flatnonzero(ok)
      for key in ('image', 'boxes', 'labels', 'mask', 'image_id'):
        values = batch[key].copy()
        values[bad] = values[good[np.searchsorted(good, bad) % len(good)]]
        batch[key] = values
    yield batch


def _first_line(error) -> str:
  msg = re.sub(r'\{\{[^}]*\}\}\s*', '', error.message or '').strip()
  msg = msg.splitlines()[0] if msg else type(error).__name__
  return re.sub(r'\s*\[Op:.*$', '', msg)


def _explain(error, k: int, batch_files, listed_in: str) -> str:
  """Finds the undecodable file(s) of batch k (and its neighbours) for the error message."""
  msg = _first_line(error)
  if batch_files is None:
    return f'input pipeline failed at batch {k}: {msg}'
  bad = []
  for kk in (k, k + 1, k - 1):
    for path in dict.fromkeys(batch_files(kk) if kk >= 0 else []):
      try:
        decode_image(tf.io.read_file(path))
      except tf.errors.OpError as e:
        bad.append(f'{path}: {_first_line(e)}')
    if bad:
      break
  if not bad:
    return f'input pipeline failed at batch {k}: {msg}'
  where = f' {listed_in}' if listed_in else ''
  return (f'cannot read image file(s); fix them or remove them from the annotation file{where}:'
          '\n  ' + '\n  '.join(bad))

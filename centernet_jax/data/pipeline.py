"""Input pipelines: data set information, training and evaluation iterators, predict inputs.

Every source (``config.data.source``: 'coco_json', 'shapes', 'shapes_pose', 'tfds', 'kitti' or
'shapes_ddd'; :mod:`.sources`) is read the same way: example index -> read -> decode ->
transform -> batch. With ``config.data.num_joints`` (the multi_pose task) training batches also
carry the people's keypoints; KITTI sources give the ddd task's batches (the official ddd
pre-processing, ``transforms.ddd_train_transform``: depth, dims, alpha and the aug flag).

Training stream. Element ``i = step * global_batch + row`` of the global stream is example
``index_shuffle(i % N, seed=(seed, i // N))``: a fresh stateless permutation per epoch, no
shuffle buffer, and augmentation seeded by ``(seed, i)``. Process p of P reads rows
``[p * b, (p + 1) * b)`` of every global batch (b = global_batch / P), so the global stream is
the same for every process count and a run resumed at ``start_step`` continues it exactly,
reading nothing it skips (TFDS too: its split is read by random access).

Images are decoded with ``tf.io.decode_image`` (JPEG, PNG, BMP, GIF first frame; grayscale and
RGBA become RGB). Training skips an image that cannot be read, decoded or transformed: its row
of the batch is filled with a copy of another row of the same batch (so every later element
keeps its place in the stream and resuming stays exact), it is logged with its file name, and
the batch's ``skipped`` row flag is set. The iterator stops with a :class:`DataError` naming the
files once the skipped reads exceed ``data.max_skip_fraction`` of
``max(reads so far, training set size)``, so a broken data set is never trained on silently
(:mod:`.errors`). Evaluation stops at the first file that cannot be decoded, with a
:class:`DataError` naming it.

Nothing is dropped without a count: the loader's skipped annotations (:func:`data_counts`), and
per training row the objects ``data.max_objs`` left out (``dropped_objects``), which the loop
counts as it consumes the rows (``errors.TrainInputCounts``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from centernet_jax.data import coco, errors, import_tf, kitti, sources, transforms
from centernet_jax.data.config import eval_canvas_size, input_hw

tf = import_tf()

_SHUFFLE_STREAM, _AUG_STREAM = 1, 2  # seed folds: permutation and augmentation streams

# Kept for callers of pipeline.default_shapes_dir / pipeline.decode_image.
default_shapes_dir = sources.default_shapes_dir
decode_image = sources.decode_image


@dataclasses.dataclass
class DatasetInfo:
  """What the model, the evaluator and the loop need to know about a data set."""
  num_classes: int
  class_names: list[str]
  category_ids: list[int]  # label -> original category id
  # COCO instances json path, or the same as a dict (tfds); KITTI sources: {image_id:
  # {'calib': [3, 4] P2, 'objects': KittiRecord.objects()}} (tasks/ddd.evaluate's gt).
  val_gt: str | dict = dataclasses.field(repr=False)
  val_image_ids: list[int] = dataclasses.field(repr=False)  # evaluation order
  num_train: int = 0
  num_val: int = 0
  source: str = ''  # 'coco_json' (also for 'shapes'), 'tfds' or 'kitti' (also 'shapes_ddd')
  # The checked COCO records (COCO-json sources; None for TFDS).
  train_data: coco.CocoData | None = dataclasses.field(default=None, repr=False)
  val_data: coco.CocoData | None = dataclasses.field(default=None, repr=False)
  train_source: sources.Source | None = dataclasses.field(default=None, repr=False)
  val_source: sources.Source | None = dataclasses.field(default=None, repr=False)
  # Person keypoints (config.data.num_joints set): the J joint names and the skeleton as 0-based
  # joint pairs, from the training file's category; None for a box data set.
  keypoint_names: list[str] | None = None
  skeleton: list[tuple[int, int]] | None = None


def get_dataset_info(data_cfg, workdir: str | None = None) -> DatasetInfo:
  """Reads (and checks) the data set's categories and splits; generates shapes if needed.

  Args:
    data_cfg: ``config.data``.
    workdir: unused (kept for sources that may cache there).

  Returns:
    DatasetInfo; for COCO-format sources it holds the parsed training and validation records.
    For TFDS the validation split is read once (without decoding images) for its ground truth.
  """
  del workdir
  train, val = sources.open_splits(data_cfg)
  keypoints = train.coco_data is not None and train.coco_data.keypoint_names is not None
  return DatasetInfo(
      num_classes=len(train.category_ids), class_names=train.class_names,
      category_ids=train.category_ids, val_gt=val.ground_truth(), val_image_ids=val.image_ids(),
      num_train=len(train), num_val=len(val), source=train.kind, train_data=train.coco_data,
      val_data=val.coco_data, train_source=train, val_source=val,
      keypoint_names=list(train.coco_data.keypoint_names) if keypoints else None,
      skeleton=list(train.coco_data.skeleton) if keypoints else None)


def data_counts(info: DatasetInfo) -> dict[str, int]:
  """What the loader left out or flagged, for metrics.jsonl (written under ``data/``).

  Returns:
    For COCO-json sources: skipped_annotations (invalid, skipped within the budget),
    degenerate_boxes (zero or negative size), outside_boxes (entirely outside their image),
    duplicate_image_files (image entries naming a file an earlier entry names),
    exif_oriented_images (EXIF orientation applied) and empty_images_left_out
    (``skip_empty_train_images``), then val_degenerate_boxes, val_outside_boxes and
    val_duplicate_image_files for the validation split. For TFDS: val_degenerate_boxes (its
    training objects of zero size are dropped per read, not counted). For KITTI sources:
    skipped_label_lines and skipped_images (bad lines and images left out of the training
    split within ``data.max_skip_fraction``), val_skipped_label_lines and val_skipped_images
    (0: the validation split is read strictly).
  """
  counts = {}
  for prefix, src in (('', info.train_source), ('val_', info.val_source)):
    data = getattr(src, 'kitti_data', None)
    if isinstance(data, kitti.KittiData):
      counts[f'{prefix}skipped_label_lines'] = int(data.num_invalid_lines)
      counts[f'{prefix}skipped_images'] = int(data.num_skipped_images)
  for prefix, data in (('', info.train_data), ('val_', info.val_data)):
    if data is None:
      continue
    if not prefix:
      counts['skipped_annotations'] = data.num_invalid
    counts[f'{prefix}degenerate_boxes'] = data.num_degenerate
    counts[f'{prefix}outside_boxes'] = data.num_outside
    counts[f'{prefix}duplicate_image_files'] = data.num_duplicate_files
    if not prefix:
      counts['exif_oriented_images'] = data.num_oriented
      counts['empty_images_left_out'] = data.num_empty_skipped
  if info.val_data is None and hasattr(info.val_source, 'num_degenerate'):
    counts['val_degenerate_boxes'] = int(info.val_source.num_degenerate)
  return counts


def _train_kwargs(data_cfg) -> dict:
  return dict(
      input_size=data_cfg.input_size, max_objs=data_cfg.max_objs,
      scale_choices=np.arange(data_cfg.scale_min, data_cfg.scale_max, data_cfg.scale_step),
      rand_crop=data_cfg.rand_crop, shift=data_cfg.shift, scale=data_cfg.scale,
      flip=data_cfg.flip, color_aug=data_cfg.color_aug, channel_order=data_cfg.channel_order,
      mean=tuple(data_cfg.mean), std=tuple(data_cfg.std), crop_base=int(data_cfg.crop_base),
      max_objs_policy=data_cfg.max_objs_policy,
      flip_pairs=tuple(tuple(p) for p in data_cfg.get('flip_pairs', ())))


def _ddd_kwargs(data_cfg) -> dict:
  return dict(input_hw=input_hw(data_cfg), max_objs=data_cfg.max_objs,
              ddd_aug=float(data_cfg.ddd_aug), crop_width=int(data_cfg.ddd_crop_width),
              scale=float(data_cfg.scale),
              shift=float(data_cfg.shift), channel_order=data_cfg.channel_order,
              mean=tuple(data_cfg.mean), std=tuple(data_cfg.std))


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


# --- Index -> read -> decode -> transform -> batch ------------------------------------------


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


def _train_dataset(data_cfg, source: sources.Source, *, global_batch, local_batch, seed,
                   start_step, process_index):
  n = len(source)
  kwargs = _train_kwargs(data_cfg)
  keep_crowd = bool(data_cfg.train_on_crowd)
  with_keypoints = 'num_joints' in data_cfg
  parallel = _parallel(data_cfg)
  to_global = dict(start_step=start_step, global_batch=global_batch, local_batch=local_batch,
                   process_index=process_index)

  def index(j):
    i = _global_index(j, **to_global)
    return {errors.POSITION: j, 'index': train_example_index(i, n, seed),
            'aug_seed': tf.random.experimental.stateless_fold_in(
                tf.constant([seed, _AUG_STREAM], tf.int64), i)}

  def ddd_transform(element):
    ex = source.decode(element)
    out = transforms.ddd_train_transform(ex['image'], ex['boxes'], ex['labels'], ex['depth'],
                                         ex['dims'], ex['alpha'], element['aug_seed'],
                                         center3d=ex['center3d'], **_ddd_kwargs(data_cfg))
    out['image_id'] = ex['image_id']
    out[errors.POSITION] = element[errors.POSITION]
    return out

  def transform(element):
    ex = source.decode(element)
    keep = tf.ones_like(ex['iscrowd']) if keep_crowd else tf.logical_not(ex['iscrowd'])
    keypoints = tf.boolean_mask(ex['keypoints'], keep) if with_keypoints else None
    out = transforms.train_transform(ex['image'], tf.boolean_mask(ex['boxes'], keep),
                                     tf.boolean_mask(ex['labels'], keep), element['aug_seed'],
                                     keypoints=keypoints, **kwargs)
    out['image_id'] = ex['image_id']
    out[errors.POSITION] = element[errors.POSITION]
    return out

  ds = tf.data.Dataset.counter().map(index)
  ds = source.read(ds, parallel).map(ddd_transform if source.kind == 'kitti' else transform,
                                     num_parallel_calls=parallel)
  ds = errors.fill_gaps(ds.ignore_errors(), first=0)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(data_cfg.prefetch)

  def describe(j: int) -> str:
    ex = int(train_example_index(_global_index(j, **to_global), n, seed))
    reason = source.check(ex) or 'failed in the input pipeline (but decodes when read again)'
    return f'{source.describe(ex)}: {reason}'

  return ds.with_options(_options()), describe


def _eval_indices(n: int, *, local_batch: int, process_index: int, process_count: int):
  """This process's rows of the padded evaluation order: (example index, valid) arrays."""
  global_batch = local_batch * process_count
  rows = np.arange(-(-n // global_batch) * global_batch)
  mine = rows[(rows // local_batch) % process_count == process_index]
  return np.minimum(mine, max(n - 1, 0)).astype(np.int64), mine < n


def _eval_dataset(data_cfg, source: sources.Source, *, local_batch, num_images, process_index,
                  process_count, test_scale=1.0):
  n = len(source) if num_images < 0 else min(num_images, len(source))
  idx, valid = _eval_indices(n, local_batch=local_batch, process_index=process_index,
                             process_count=process_count)
  parallel = _parallel(data_cfg)

  def transform(element):
    ex = source.decode(element)
    out = transforms.eval_transform(ex['image'], mode=data_cfg.eval_mode, pad=data_cfg.eval_pad,
                                    size=eval_canvas_size(data_cfg),
                                    channel_order=data_cfg.channel_order, test_scale=test_scale)
    out['image_id'] = ex['image_id']
    out['valid'] = element['valid']
    return out

  ds = tf.data.Dataset.from_tensor_slices({'index': idx, 'valid': valid})
  ds = source.read(ds, parallel).map(transform, num_parallel_calls=parallel)
  # keep_res images differ in size: pad the batch with zeros at the bottom/right (outside the
  # affine's window, so center/scale stay valid), then normalise, so the padding gets the
  # value of a zero pixel as the official zero border does.
  ds = ds.padded_batch(local_batch)
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def norm(batch):
    batch['image'] = transforms.normalize(batch['image'], mean, std)
    return batch

  ds = ds.map(norm).prefetch(data_cfg.prefetch).with_options(_options())

  def explain(k: int, error: str) -> str:
    """Finds the undecodable example(s) of batch k (and its neighbours) for the message."""
    bad = []
    for kk in (k, k + 1, k - 1):
      if kk < 0:
        continue
      for ex in dict.fromkeys(idx[kk * local_batch:(kk + 1) * local_batch].tolist()):
        reason = source.check(ex)
        if reason is not None:
          bad.append(f'{source.describe(ex)}: {reason}')
      if bad:
        break
    if not bad:
      return f'input pipeline failed at batch {k}: {error}'
    return f'cannot read image file(s); {source.fix_hint}:\n  ' + '\n  '.join(bad)

  return ds, explain


# --- Public iterators ------------------------------------------------------------------------


def create_train_iterator(data_cfg, *, info: DatasetInfo, global_batch_size: int, seed: int,
                          start_step: int = 0, process_index: int = 0,
                          process_count: int = 1, log_skips: bool = True) -> Iterator[dict]:
  """Endless iterator over this process's share of the training batches.

  Args:
    data_cfg: ``config.data``.
    info: from :func:`get_dataset_info`.
    global_batch_size: batch size over all processes (a multiple of ``process_count``).
    seed: stream seed (``config.seed``).
    start_step: index of the first global batch to produce (resuming continues the stream).
    process_index, process_count: this process and the number of processes.
    log_skips: log each unreadable image as it is read. The training loop passes False and
      logs (and counts) the rows it consumes with ``errors.TrainInputCounts``: the prefetcher
      reads ahead of the last step.

  Yields:
    dict of numpy arrays, b = global_batch_size / process_count, S = data.input_size,
    M = data.max_objs: image [b, S, S, 3] float32 (normalised), boxes [b, M, 4] float32 xyxy
    in input pixels (not clipped), labels [b, M] int32, mask [b, M] float32 (1 = object),
    image_id [b] int64 (host side: for messages), skipped [b] bool (the row's own image was
    unreadable and the row repeats another row of the batch), skip_reasons [b] str (only when
    not ``log_skips``; host side: the file and the error of a skipped row, else ''),
    dropped_objects [b] int32 (host side: objects visible in the row's crop that
    ``data.max_objs`` left out; 0 on skipped rows);
    KITTI sources (the ddd task; image [b, h, w, 3] on the ``data.input_hw`` canvas): labels
    are the official codes (``kitti.CLASS_CODES``), objects the first M of each label file in
    file order, and also depth [b, M], dims [b, M, 3] (h, w, l), alpha [b, M] float32,
    center3d [b, M, 2] (the projected 3D centre in input pixels) and aug [b] float32 (1: the
    image was scaled / shifted: ``data.ddd_aug``);
    with ``data.num_joints`` = J
    also keypoints [b, M, J, 3] float32 (x, y in input pixels through the boxes' affine and
    flip with ``data.flip_pairs`` swapped, v the file's visibility 0 / 1 / 2; rows as boxes',
    padding rows 0).

  Raises:
    DataError: (while iterating) the skipped images passed ``data.max_skip_fraction``, or
      every image of a batch was unreadable.
  """
  local_batch = _local_batch(global_batch_size, process_count)
  source = info.train_source
  ds, describe = _train_dataset(data_cfg, source, global_batch=global_batch_size,
                                local_batch=local_batch, seed=seed, start_step=start_step,
                                process_index=process_index)
  return errors.checked_train_batches(ds, describe, source.fix_hint, max(len(source), 1),
                                      float(data_cfg.max_skip_fraction), log_skips=log_skips)


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
  ds, explain = _eval_dataset(data_cfg, info.val_source, local_batch=batch_size,
                              num_images=num_images, process_index=process_index,
                              process_count=process_count, test_scale=float(test_scale))
  return errors.checked_eval_batches(ds, explain)


def load_image_for_predict(image: str | np.ndarray, data_cfg) -> dict:
  """One image as an evaluation batch of size 1 (same keys as :func:`create_eval_iterator`).

  Args:
    image: a file path, or a uint8 array [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] grayscale.
    data_cfg: ``config.data``.
  """
  pixels = sources.read_image(image, str(data_cfg.get('exif_orientation', 'apply')))
  out = transforms.eval_transform(
      tf.convert_to_tensor(pixels), mode=data_cfg.eval_mode, pad=data_cfg.eval_pad,
      size=eval_canvas_size(data_cfg), channel_order=data_cfg.channel_order)
  out['image'] = transforms.normalize(out['image'], tuple(data_cfg.mean), tuple(data_cfg.std))
  out = {k: np.asarray(v)[None] for k, v in out.items()}
  out['image_id'] = np.array([-1], np.int64)
  out['valid'] = np.array([True])
  return out

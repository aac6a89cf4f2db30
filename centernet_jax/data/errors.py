"""Bad input data: the error type, skip budgets and the messages that name the bad records.

Every problem in the input is reported with the file (or TFDS split) and the record it comes
from. Two kinds of bad records are skipped during training instead of stopping the run at once,
each logged and counted, within ``config.data.max_skip_fraction``:

- annotations failing validation when the annotation file is loaded
  (:class:`InvalidAnnotations`; ``CocoData.num_invalid``);
- images that cannot be read, decoded or transformed, met while iterating: the failing element
  is dropped inside tf.data (``ignore_errors``), its place in the stream refilled
  (:func:`fill_gaps`) and its row of the batch replaced on the host by another row of the same
  batch (:func:`checked_train_batches`), so every later element keeps its place and resuming stays
  exact.

Evaluation stops at the first image that cannot be decoded (:func:`checked_eval_batches`).

The training loop counts what it consumed with :class:`TrainInputCounts` (skipped rows, with
their warnings, and objects left out by ``data.max_objs``), so that batches read ahead by the
prefetcher but never trained on are neither logged nor counted. :func:`bbox_problem` is the one
rule, shared by the loader and the evaluator, for boxes that are skipped (zero or negative
size, or entirely outside their image).

TensorFlow is imported inside the functions that need it, so that :class:`DataError` is cheap to
import (the training loop and the fault-tolerance code catch it without loading tf.data).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

import numpy as np

MAX_WARNINGS = 20  # per file; the rest are summarised in one line with the count

# Keys that the training stream carries through tf.data next to the example's own features.
POSITION = '_stream_index'  # this process's position j in its stream (int64)
OK = '_ok'  # False on the zero elements that fill_gaps puts where an element failed


class DataError(ValueError):
  """Bad input data; the message names the file and the record."""


def bbox_problem(bbox, width: float = 0, height: float = 0) -> str | None:
  """Why a COCO box [x, y, w, h] is skipped (loader and evaluator alike), or None to keep it.

  Args:
    bbox: [x, y, width, height] finite numbers, in pixels.
    width, height: the image's size from the annotation file; 0 (unknown) skips the
      outside test.

  Returns:
    'degenerate' (zero or negative width or height), 'outside' (no pixel of the box inside the
    ``width`` x ``height`` image), or None.
  """
  x, y, w, h = (float(v) for v in bbox)
  if w <= 0 or h <= 0:
    return 'degenerate'
  if width > 0 and height > 0 and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
    return 'outside'
  return None


def budget_hint(total: int, max_fraction: float, what: str, sep: str = ' ') -> str:
  """Explains a skip budget that allows nothing because the data set is small ('' otherwise).

  Args:
    total: the number the fraction applies to (training images or annotations).
    max_fraction: ``config.data.max_skip_fraction``.
    what: names the ``total`` things, e.g. 'training images'.
    sep: put before the text (it ends a message).
  """
  if total <= 0 or max_fraction * total >= 1:
    return ''
  return (f'{sep}With {total} {what}, config.data.max_skip_fraction={max_fraction:g} allows no '
          f'skip at all, so the first bad one stops the run; to skip k of them set it to at '
          f'least k/{total} (e.g. --config.data.max_skip_fraction={min(1.0, 1 / total):.3g} '
          'for one).')


class InvalidAnnotations:
  """Collects the annotations of one file that fail validation (skipped, with a budget).

  Args:
    ann_file: the annotation file (named in every message).
    max_fraction: None: the first invalid annotation is an error (:meth:`add` raises it).
      A number: invalid annotations are logged (the first ``MAX_WARNINGS``) and counted;
      :meth:`finish` raises if more than this fraction of the annotations is invalid.
  """

  def __init__(self, ann_file: str, max_fraction: float | None):
    self.ann_file = ann_file
    self.max_fraction = max_fraction
    self.messages: list[str] = []

  def add(self, error: DataError) -> None:
    """Records one invalid annotation (re-raises it when no skipping is allowed)."""
    if self.max_fraction is None:
      raise error
    self.messages.append(str(error))
    if len(self.messages) <= MAX_WARNINGS:
      logging.warning('skipping an invalid annotation: %s', error)

  def finish(self, total: int) -> int:
    """Logs the count; raises DataError past the budget. Returns the number skipped."""
    n = len(self.messages)
    if n:
      logging.warning('%s: skipped %d of %d annotations failing validation', self.ann_file, n,
                      total)
      if n > self.max_fraction * total:
        raise DataError(f'{self.ann_file}: {n} of {total} annotations fail validation, more '
                        f'than config.data.max_skip_fraction={self.max_fraction:g}; the first:\n  '
                        + '\n  '.join(self.messages[:10])
                        + budget_hint(total, self.max_fraction, 'annotations', '\n'))
    return n


def first_line(error) -> str:
  """The first line of a tf.errors.OpError's message, without TensorFlow's op annotations."""
  msg = re.sub(r'\{\{[^}]*\}\}\s*', '', getattr(error, 'message', '') or str(error)).strip()
  msg = msg.splitlines()[0] if msg else type(error).__name__
  # tf.data prefixes errors raised inside a map function with where they happened.
  msg = re.sub(r'^Error in user-defined function passed to .*? with iterator: \S+: ', '', msg)
  return re.sub(r'\s*\[Op:.*$', '', msg)


def fill_gaps(ds, first: int):
  """Refills the elements that ``ignore_errors`` dropped, so the stream keeps its positions.

  Args:
    ds: tf.data dicts with key ``POSITION`` (the element's position, increasing from ``first``;
      positions whose element failed are missing).
    first: the first position.

  Returns:
    A dataset with one dict per position: the element with ``OK`` True, or zeros of the same
    structure with ``OK`` False (the host replaces those rows: :func:`checked_train_batches`).
  """
  from centernet_jax.data import import_tf

  tf = import_tf()
  spec = ds.element_spec

  def scan(prev, elem):
    return elem[POSITION], (prev + 1, elem)

  def hole(j):
    out = {k: tf.zeros(v.shape, v.dtype) for k, v in spec.items()}
    out[POSITION] = j
    out[OK] = tf.constant(False)
    return out

  def expand(missing_from, elem):
    holes = tf.data.Dataset.range(missing_from, elem[POSITION]).map(hole)
    return holes.concatenate(tf.data.Dataset.from_tensors(dict(elem, **{OK: tf.constant(True)})))

  return ds.scan(tf.constant(first - 1, tf.int64), scan).flat_map(expand)


def checked_train_batches(ds, describe: Callable[[int], str], fix_hint: str, num_examples: int,
                          max_fraction: float, log_skips: bool = True) -> Iterator[dict]:
  """Numpy training batches; rows whose image failed are counted, refilled and explained.

  A failed row is replaced by the next good row of its batch (cyclically), so the batch keeps
  its size and the stream its positions.

  Args:
    ds: batched output of :func:`fill_gaps` (keys ``OK`` and ``POSITION`` are removed here).
    describe: position -> text naming the record and why it fails.
    fix_hint: what to do about it, e.g. 'fix them or remove them from the annotation file X'.
    num_examples: size of the training set (the budget is a fraction of
      ``max(reads so far, num_examples)``).
    max_fraction: ``config.data.max_skip_fraction``.
    log_skips: log each failed row here, when it is read. The training loop passes False and
      logs the rows it consumes (:class:`TrainInputCounts`): the prefetcher reads ahead.

  Yields:
    the batches, with ``skipped`` [b] bool (the row repeats another row) and, when not
    ``log_skips``, ``skip_reasons`` [b] str (the failed row's file and error, '' for the others;
    a host-side entry); a ``dropped_objects`` entry is 0 on the skipped rows (the repeated
    row's objects are counted on their own row).

  Raises:
    DataError: the skipped rows passed the budget, or every row of a batch failed.
  """
  reads = skipped = 0
  recent: list[str] = []
  for batch in ds.as_numpy_iterator():
    ok = batch.pop(OK)
    positions = batch.pop(POSITION)
    batch['skipped'] = ~ok
    reasons = [''] * len(ok)
    reads += len(ok)
    bad = np.flatnonzero(~ok)
    if bad.size:
      for r in bad:
        reasons[r] = describe(int(positions[r]))
        if log_skips:
          logging.warning('Skipping unreadable training image %s', reasons[r])
        recent = (recent + [reasons[r]])[-10:]
      skipped += bad.size
      fraction = skipped / max(reads, num_examples)
      if fraction > max_fraction or bad.size == len(ok):
        why = ('every image of a batch failed' if bad.size == len(ok) else
               f'{skipped} of {reads} training reads so far were skipped ({fraction:.2%} of '
               f'max(reads, {num_examples} training images)), more than '
               f'config.data.max_skip_fraction={max_fraction:g}')
        raise DataError(f'cannot read image file(s); {fix_hint}:\n  ' + '\n  '.join(recent) +
                        f'\n{why}.' + budget_hint(num_examples, max_fraction, 'training images'))
      good = np.flatnonzero(ok)
      for key in [k for k in batch if k != 'skipped']:
        values = batch[key].copy()
        values[bad] = values[good[np.searchsorted(good, bad) % len(good)]]
        batch[key] = values
      if 'dropped_objects' in batch:
        batch['dropped_objects'][bad] = 0
    if not log_skips:
      batch['skip_reasons'] = np.array(reasons, dtype=str)
    yield batch


class TrainInputCounts:
  """Counts, and logs, what the training loop consumed from the input.

  Call :meth:`update` with the host entries of each batch the loop trains on; batches the
  prefetcher read past the last step never reach it, so they are neither logged nor counted.

  Attributes:
    skipped_images: rows whose own image was unreadable (the row repeated another row); the
      first ``MAX_WARNINGS`` are logged with the file and the error, then one summary line.
    dropped_objects: objects visible in a row's training crop that ``data.max_objs`` left out
      of its targets, summed over the rows.
    max_dropped: the most objects left out of one row (the surplus over ``data.max_objs``).
    max_dropped_image: the image id of that row (-1 before any).
  """

  def __init__(self, max_objs: int):
    self.max_objs = int(max_objs)
    self.skipped_images = 0
    self.dropped_objects = 0
    self.max_dropped = 0
    self.max_dropped_image = -1

  def update(self, host: dict) -> None:
    """Counts one consumed batch: its ``skipped`` / ``skip_reasons`` / ``dropped_objects``
    [b] entries (each optional) and ``image_id`` [b] (for the messages)."""
    skipped = np.asarray(host.get('skipped', ()), bool).reshape(-1)
    reasons = host.get('skip_reasons')
    for r in np.flatnonzero(skipped):
      self.skipped_images += 1
      if self.skipped_images <= MAX_WARNINGS:
        image_ids = host.get('image_id')
        text = (str(reasons[r]) if reasons is not None else
                f'(image id {int(image_ids[r])})' if image_ids is not None else f'(row {r})')
        logging.warning('Skipping unreadable training image %s', text)
      elif self.skipped_images == MAX_WARNINGS + 1:
        logging.warning('More unreadable training images: counted (train/skipped_images in '
                        'metrics.jsonl), no longer listed')
    dropped = host.get('dropped_objects')
    if dropped is None:
      return
    dropped = np.asarray(dropped, np.int64).reshape(-1)
    self.dropped_objects += int(dropped.sum())
    if not dropped.size or int(dropped.max()) <= self.max_dropped:
      return
    r = int(np.argmax(dropped))
    image_ids = host.get('image_id')
    image = int(image_ids[r]) if image_ids is not None else -1
    if self.max_dropped == 0:  # warned once; the end of the run gives the largest count
      logging.warning(
          'A training image (image id %d) has %d more objects in its crop than '
          'config.data.max_objs=%d; the surplus is left out of its targets. Raise '
          'config.data.max_objs (to at least %d here); the objects left out are counted '
          '(train/dropped_objects) and the largest count is reported at the end of the run.',
          image, int(dropped[r]), self.max_objs, self.max_objs + int(dropped[r]))
    self.max_dropped, self.max_dropped_image = int(dropped[r]), image

  def metrics(self) -> dict[str, int]:
    """The counts for metrics.jsonl (written under ``train/``)."""
    return {'skipped_images': self.skipped_images, 'dropped_objects': self.dropped_objects,
            'max_dropped_objects': self.max_dropped}

  def summary(self) -> str:
    """One line for the end of the run."""
    parts = [f'{self.skipped_images} unreadable training image reads skipped']
    if self.max_dropped:
      parts.append(f'{self.dropped_objects} objects left out by config.data.max_objs='
                   f'{self.max_objs} (at most {self.max_dropped} in one image, image id '
                   f'{self.max_dropped_image}: raise config.data.max_objs to at least '
                   f'{self.max_objs + self.max_dropped} to keep them)')
    else:
      parts.append(f'no object left out by config.data.max_objs={self.max_objs}')
    return 'input: ' + '; '.join(parts)


def checked_eval_batches(ds, explain: Callable[[int, str], str]) -> Iterator[dict]:
  """Numpy batches; a decode error becomes a DataError with ``explain(batch number, error)``."""
  from centernet_jax.data import import_tf

  tf = import_tf()
  it = ds.as_numpy_iterator()
  k = 0
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError,
            tf.errors.UnknownError) as e:  # UnknownError: an exception in a TFDS record fetch
      raise DataError(explain(k, first_line(e))) from None
    yield batch
    k += 1

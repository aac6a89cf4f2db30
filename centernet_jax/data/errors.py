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
                        + '\n  '.join(self.messages[:10]))
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
                          max_fraction: float) -> Iterator[dict]:
  """Numpy training batches; rows whose image failed are logged, counted and refilled.

  A failed row is replaced by the next good row of its batch (cyclically), so the batch keeps
  its size and the stream its positions.

  Args:
    ds: batched output of :func:`fill_gaps` (keys ``OK`` and ``POSITION`` are removed here).
    describe: position -> text naming the record and why it fails.
    fix_hint: what to do about it, e.g. 'fix them or remove them from the annotation file X'.
    num_examples: size of the training set (the budget is a fraction of
      ``max(reads so far, num_examples)``).
    max_fraction: ``config.data.max_skip_fraction``.

  Yields:
    the batches, with ``skipped`` [b] bool (the row repeats another row).

  Raises:
    DataError: the skipped rows passed the budget, or every row of a batch failed.
  """
  reads = skipped = 0
  recent: list[str] = []
  for batch in ds.as_numpy_iterator():
    ok = batch.pop(OK)
    positions = batch.pop(POSITION)
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
        raise DataError(f'cannot read image file(s); {fix_hint}:\n  ' + '\n  '.join(recent) +
                        f'\n{why}.')
      good = np.flatnonzero(ok)
      for key in [k for k in batch if k != 'skipped']:
        values = batch[key].copy()
        values[bad] = values[good[np.searchsorted(good, bad) % len(good)]]
        batch[key] = values
    yield batch


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

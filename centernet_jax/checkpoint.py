"""Orbax checkpoints behind one small class, so API churn touches one file.

Layout of ``<workdir>/checkpoints/<step>/``:
  model/  {'params', 'batch_stats'}: all that evaluate/predict (and converted weights) need;
  opt/    {'opt_state', 'step'}: what resuming training needs on top;
  meta/   JSON: the model config, class names and category ids, so a mismatching workdir is
          reported by name instead of failing inside a restore.

Atomicity (orbax-checkpoint 0.12.x on a local or network file system): a save writes
``<step>.orbax-checkpoint-tmp/`` (each item in ``<item>.orbax-checkpoint-tmp/``), writes
``commit_success.txt`` into it and renames it to ``<step>/``. A process killed before the rename
leaves only the tmp directory; Orbax never lists it as a step. :func:`set_aside_partial` moves
such leftovers (and step directories lacking the commit marker or an item) out of the way, to
``<workdir>/checkpoints_partial/``, before a training run opens its checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp

if TYPE_CHECKING:
  from centernet_jax.state import TrainState

# Model fields that change how a model computes or starts, not what its variables are.
_RUNTIME_ONLY = ('dtype', 'upsample', 'deconv_init', 'head_init')


ITEMS = ('model', 'opt', 'meta')
COMMIT_FILE = 'commit_success.txt'  # orbax 0.12: written into the tmp dir just before the rename
TMP_MARKER = '.orbax-checkpoint-tmp'


class ModelMismatchError(ValueError):
  """A checkpoint was written by a model other than the one configured."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier checkpoints are untouched."""


def why_incomplete(path: str, items: tuple[str, ...] = ITEMS) -> str | None:
  """Why ``path`` (an entry of a checkpoint directory) is not a complete checkpoint, or None.

  Complete: the name is a step number, the commit marker (``commit_success.txt``, or a
  ``commit_timestamp_nsecs`` in ``_CHECKPOINT_METADATA``) is there, and every item directory is
  there with its own commit marker.
  """
  name = os.path.basename(path)
  if TMP_MARKER in name:
    return 'an Orbax temporary directory (the save never reached its final rename)'
  if not name.isdigit():
    return None  # not a step directory: not ours to judge
  if not os.path.isdir(path):
    return 'not a directory'
  committed = os.path.exists(os.path.join(path, COMMIT_FILE))
  if not committed:
    try:
      with open(os.path.join(path, '_CHECKPOINT_METADATA')) as f:
        committed = bool(json.load(f).get('commit_timestamp_nsecs'))
    except (OSError, ValueError):
      committed = False
  if not committed:
    return f'no commit marker ({COMMIT_FILE} or a commit time in _CHECKPOINT_METADATA)'
  for item in items:
    item_dir = os.path.join(path, item)
    if not os.path.isdir(item_dir):
      return f'item {item!r} is missing'
    if not os.listdir(item_dir):
      return f'item {item!r} is empty'
  return None


def set_aside_partial(directory: str, partial_dir: str) -> list[tuple[str, str]]:
  """Moves incomplete checkpoints out of ``directory`` into ``partial_dir`` (never deletes).

  Args:
    directory: a checkpoint directory (``<workdir>/checkpoints``); may not exist yet.
    partial_dir: where to move them (``<workdir>/checkpoints_partial``); each keeps its name
      with the time of the move appended.

  Returns:
    (moved-to path, reason) for each entry moved; each move is logged as a warning.
  """
  moved = []
  if not os.path.isdir(directory):
    return moved
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    reason = why_incomplete(path)
    if reason is None:
      continue
    os.makedirs(partial_dir, exist_ok=True)
    dest = os.path.join(partial_dir, f'{name}.{time.strftime("%Y%m%d-%H%M%S")}')
    k = 1
    while os.path.exists(dest):
      dest = os.path.join(partial_dir, f'{name}.{time.strftime("%Y%m%d-%H%M%S")}.{k}')
      k += 1
    shutil.move(path, dest)
    logging.warning('Incomplete checkpoint %s (%s) moved to %s', path, reason, dest)
    moved.append((dest, reason))
  return moved


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# The label space a checkpoint was trained on: compared when both metas record it.
_LABEL_FIELDS = ('category_ids', 'class_names', 'keypoint_names')


def _label_diffs(saved: dict, expected: dict) -> list[str]:
  """One line per label field (``_LABEL_FIELDS``) recorded in both metas and differing, naming
  the labels whose entries differ."""
  diffs = []
  for key in _LABEL_FIELDS:
    if key not in saved or key not in expected:
      continue
    old, new = list(saved[key]), list(expected[key])
    if old == new:
      continue
    if len(old) == len(new):
      changed = [f'label {i}: {a!r} -> {b!r}' for i, (a, b) in enumerate(zip(old, new,
                                                                            strict=True))
                 if a != b]
      detail = ', '.join(changed[:10]) + (f' ... ({len(changed)} labels)'
                                          if len(changed) > 10 else '')
    else:
      detail = f'{len(old)} -> {len(new)} entries'
    diffs.append(f'{key}: checkpoint has {old!r}, data has {new!r} ({detail})')
  return diffs


def check_meta(saved: dict, expected: dict, where: str) -> None:
  """Raises ModelMismatchError naming every model field, and every label field
  (category ids, class names, joint names) recorded in both metas, that differs."""
  # Compared as JSON (what the meta item stores): tuples come back as lists.
  saved, expected = (json.loads(json.dumps(m, default=str)) for m in (saved, expected))
  saved_model, want_model = saved.get('model', {}), expected.get('model', {})
  diffs = [f'model.{k}: checkpoint has {saved_model.get(k)!r}, config has {want_model.get(k)!r}'
           for k in sorted(set(saved_model) | set(want_model))
           if k not in _RUNTIME_ONLY and saved_model.get(k) != want_model.get(k)]
  if diffs:
    raise ModelMismatchError(
        f'{where} holds a checkpoint of another model:\n  ' + '\n  '.join(diffs) +
        '\nUse another --workdir, or a config matching the checkpoint.')
  labels = _label_diffs(saved, expected)
  if labels:
    raise ModelMismatchError(
        f'{where} holds a checkpoint trained on other categories:\n  ' + '\n  '.join(labels) +
        '\nIts outputs would mean other classes. Use another --workdir (or config.init to start '
        'from its weights), or the data the checkpoint was trained on.')


class Checkpointer:
  """Saves and restores TrainStates under ``directory`` (async, keeps the last N)."""

  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, read_only=read_only,
        create=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('model', 'opt', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, meta: dict, *, force: bool = False) -> bool:
    """Starts an asynchronous save (after the previous one finished).

    Raises:
      CheckpointWriteError: the directory vanished, or this or the previous save failed (disk
        full, read-only, ...). Committed checkpoints are never touched by a failed save.
    """
    step = int(jax.device_get(state.step))
    if not os.path.isdir(self.directory):
      raise CheckpointWriteError(
          f'cannot write the checkpoint of step {step}: the checkpoint directory '
          f'{self.directory} no longer exists (was the workdir deleted or unmounted?)')
    try:
      return self._manager.save(step, args=ocp.args.Composite(
          model=ocp.args.StandardSave({'params': state.params,
                                       'batch_stats': state.batch_stats}),
          opt=ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
          meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # noqa: BLE001 - Orbax raises many types; all mean "not written"
      raise self._write_error(f'step {step}', e) from e

  def _write_error(self, what: str, error: Exception) -> CheckpointWriteError:
    good = self._committed_steps()
    last = (f'the last complete checkpoint is step {max(good)} in {self.directory}' if good
            else f'there is no complete checkpoint in {self.directory}')
    return CheckpointWriteError(
        f'cannot write the checkpoint ({what}) to {self.directory}: '
        f'{type(error).__name__}: {error}. Check free space and permissions; {last} (untouched).')

  def _committed_steps(self) -> list[int]:
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names
                  if n.isdigit() and why_incomplete(os.path.join(self.directory, n)) is None)

  def restore_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def _step_or_raise(self, step: int | None) -> int:
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step is None:
      return max(steps)
    if step not in steps:
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory}; have {steps}')
    return step

  def restore_state(self, step: int | None, target: TrainState, meta: dict) -> TrainState:
    """Restores a full TrainState onto ``target``'s shapes, dtypes and shardings."""
    step = self._step_or_raise(step)
    check_meta(self.restore_meta(step), meta, self.directory)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(
            {'params': target.params, 'batch_stats': target.batch_stats})),
        opt=ocp.args.StandardRestore(_abstract(
            {'opt_state': target.opt_state, 'step': target.step}))))
    model, opt = restored['model'], restored['opt']
    return target.replace(step=opt['step'], params=model['params'],
                          batch_stats=model['batch_stats'], opt_state=opt['opt_state'])

  def restore_variables(self, step: int | None, target: dict, meta: dict | None = None
                        ) -> tuple[int, dict]:
    """Restores ``{'params', 'batch_stats'}`` only; returns (step, variables)."""
    step = self._step_or_raise(step)
    if meta is not None:
      check_meta(self.restore_meta(step), meta, self.directory)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(target))))
    return step, restored['model']

  def wait(self) -> None:
    """Blocks until the last save is committed; raises CheckpointWriteError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error('asynchronous save', e) from e

  def close(self) -> None:
    self._manager.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def open_for_training(workdir: str, max_to_keep: int | None) -> Checkpointer:
  """The checkpoints of a training workdir, incomplete ones set aside first (every process)."""
  directory = checkpoint_dir(workdir)
  if jax.process_index() == 0:
    set_aside_partial(directory, partial_dir(workdir))
  if jax.process_count() > 1:  # nobody opens the directory while process 0 tidies it
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('centernet_jax: partial checkpoints set aside')
  return Checkpointer(directory, max_to_keep=max_to_keep)


def restore_or_init(ckpt: Checkpointer, state: TrainState, meta: dict, *, resume: str = '',
                    init: str = '') -> TrainState:
  """Resume order: ``ckpt``'s latest > ``resume`` (full state) > ``init`` (weights) > ``state``.

  Args:
    ckpt: this run's checkpoints.
    state: the freshly initialised state (shapes, dtypes and shardings of the result).
    meta: this run's meta (checked against the checkpoint's).
    resume: ``config.resume``: a workdir or checkpoint path whose full state (optimiser and
      step included) this run continues from.
    init: ``config.init``: a workdir or checkpoint path whose variables start this run at step
      0 (backbone-only or other-class-count checkpoints fit: :func:`init_variables_from`).
  """
  if ckpt.latest_step() is not None:
    logging.info('Resuming from %s step %d', ckpt.directory, ckpt.latest_step())
    return ckpt.restore_state(None, state, meta)
  if resume:
    src_dir, step = split_checkpoint_path(resume)
    logging.info('Resuming from config.resume=%s', resume)
    return Checkpointer(src_dir, read_only=True).restore_state(step, state, meta)
  if init:
    step, variables = init_variables_from(
        init, {'params': state.params, 'batch_stats': state.batch_stats}, meta)
    logging.info('Initialised from config.init=%s (step %d)', init, step)
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return state


def partial_dir(workdir: str) -> str:
  """Where :func:`set_aside_partial` puts incomplete checkpoints of a training workdir."""
  return os.path.join(workdir, 'checkpoints_partial')


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
  """``W`` or ``W/checkpoints`` -> (checkpoints dir, None); ``W/checkpoints/123`` -> (dir, 123)."""
  path = os.path.abspath(path.rstrip('/'))
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'model')):
    return os.path.dirname(path), int(base)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  return path, None


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, (*prefix, str(k))))
  return out


def init_variables_from(path: str, target: dict, meta: dict) -> tuple[int, dict]:
  """``config.init``: a checkpoint's variables wherever they fit ``target``, target's elsewhere.

  Variables whose path and shape match are copied (onto target's dtypes and shardings). Two
  differences are allowed, and logged by name: variables the checkpoint lacks (the neck and
  heads after an ImageNet backbone from ``centernet_jax.convert``), and variables differing only
  in their last axis (heads with another class count); both keep target's fresh initialisation
  and are listed in a WARNING (a silent fallback would hide a wrong ``config.init``). Anything
  else means another architecture.

  Args:
    path: a workdir, its ``checkpoints`` folder or one ``checkpoints/<step>`` folder.
    target: initialised {'params', 'batch_stats'}.
    meta: this run's meta (only logged against the checkpoint's).

  Returns:
    (step, variables shaped like target).

  Raises:
    ModelMismatchError: naming every checkpoint variable that has no place in the model, or
      nothing matched at all.
  """
  src_dir, step = split_checkpoint_path(path)
  src = Checkpointer(src_dir, read_only=True)
  step = src._step_or_raise(step)
  saved_meta = src.restore_meta(step)
  saved = _flatten(src._manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore()))['model'])
  want = _flatten(target)
  bad = [f'{"/".join(k)} {tuple(v.shape)}' + (f' (model: {tuple(want[k].shape)})' if k in want
                                               else ' (not in the model)')
         for k, v in saved.items() if hasattr(v, 'shape') and (
             k not in want or (tuple(v.shape) != tuple(want[k].shape) and
                               tuple(v.shape)[:-1] != tuple(want[k].shape)[:-1]))]
  copied = {k for k, v in saved.items() if k in want and hasattr(v, 'shape')
            and tuple(v.shape) == tuple(want[k].shape)}
  if bad or not copied:
    raise ModelMismatchError(
        f'config.init={path} (step {step}) does not fit the configured model '
        f'(checkpoint model {saved_meta.get("model", {}).get("arch")!r}, configured '
        f'{meta.get("model", {}).get("arch")!r}):\n  ' +
        ('\n  '.join(bad[:40]) + (f'\n  ... and {len(bad) - 40} more' if len(bad) > 40 else '')
         if bad else 'no variable in common'))
  resized = sorted(k for k in saved if k in want and k not in copied)
  absent: dict[str, int] = {}
  for k in want:
    if k not in saved:
      top = '/'.join(k[:2])
      absent[top] = absent.get(top, 0) + 1
  # Not an error (the point of config.init), but never silent: the run starts these afresh.
  if resized:
    logging.warning('config.init=%s: %d variable(s) re-initialised, their last axis differs from '
                    'the checkpoint (another class count): %s', path, len(resized),
                    ', '.join(f'{"/".join(k)} {tuple(saved[k].shape)} -> {tuple(want[k].shape)}'
                              for k in resized))
  if absent:
    logging.warning('config.init=%s: variables not in the checkpoint re-initialised (%d arrays): '
                    '%s', path, sum(absent.values()),
                    ', '.join(f'{k} ({n} arrays)' for k, n in sorted(absent.items())))
  out = {k: (jax.device_put(jax.numpy.asarray(saved[k], dtype=v.dtype),
                            getattr(v, 'sharding', None))
             if k in copied else v) for k, v in want.items()}
  nested: dict = {name: {} for name in target}
  for k, v in out.items():
    node = nested
    for part in k[:-1]:
      node = node.setdefault(part, {})
    node[k[-1]] = v
  return step, nested

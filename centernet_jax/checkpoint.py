"""Orbax checkpoints behind one small class, so API churn touches one file.

Layout of ``<workdir>/checkpoints/<step>/``:
  model/  {'params', 'batch_stats'}: all that evaluate/predict (and converted weights) need;
  opt/    {'opt_state', 'step'}: what resuming training needs on top;
  meta/   JSON: the model config, class names and category ids, so a mismatching workdir is
          reported by name instead of failing inside a restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from centernet_jax.steps import TrainState

# Model fields that change how a model computes or starts, not what its variables are.
_RUNTIME_ONLY = ('dtype', 'upsample', 'deconv_init', 'head_init')


class ModelMismatchError(ValueError):
  """A checkpoint was written by a model other than the one configured."""


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_meta(saved: dict, expected: dict, where: str) -> None:
  """Raises ModelMismatchError naming every model field that differs."""
  saved_model, want_model = saved.get('model', {}), expected.get('model', {})
  diffs = [f'model.{k}: checkpoint has {saved_model.get(k)!r}, config has {want_model.get(k)!r}'
           for k in sorted(set(saved_model) | set(want_model))
           if k not in _RUNTIME_ONLY and saved_model.get(k) != want_model.get(k)]
  if diffs:
    raise ModelMismatchError(
        f'{where} holds a checkpoint of another model:\n  ' + '\n  '.join(diffs) +
        '\nUse another --workdir, or a config matching the checkpoint.')


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
    step = int(jax.device_get(state.step))
    return self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'batch_stats': state.batch_stats}),
        opt=ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
        meta=ocp.args.JsonSave(meta)), force=force)

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
    return TrainState(step=opt['step'], params=model['params'], batch_stats=model['batch_stats'],
                      opt_state=opt['opt_state'])

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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
  """``W`` or ``W/checkpoints`` -> (checkpoints dir, None); ``W/checkpoints/123`` -> (dir, 123)."""
  path = os.path.abspath(path.rstrip('/'))
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'model')):
    return os.path.dirname(path), int(base)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  return path, None

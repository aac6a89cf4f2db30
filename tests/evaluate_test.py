"""Tests for centernet_jax.evaluate: the evaluator is compiled once per run (bug 3), the
evaluation batch rounding is announced (bug 8)."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import evaluate, tasks
from centernet_jax.models import build_model

# Tracing to a jaxpr and lowering to MLIR happen for every new compilation, whether or not
# the persistent compilation cache then holds the executable.
_COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration')


@pytest.mark.parametrize('requested,devices,expected,warned', [
    (4, 1, 4, False), (3, 2, 4, True), (8, 8, 8, False), (0, 1, 1, True), (9, 4, 12, True),
])
def test_local_batch_size(requested, devices, expected, warned, caplog):
  with caplog.at_level(logging.WARNING):
    assert evaluate.local_batch_size(requested, devices) == expected
  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  if warned:
    assert messages == [f'config.eval.batch_size={requested} rounded up to {expected}, a '
                        f'multiple of the {devices} local devices']
  else:
    assert not messages


def test_second_evaluation_compiles_nothing(smoke_config, tmp_path):
  """Two evaluations by one Evaluator (multi-scale: predict and merge): the second traces and
  lowers nothing. Before, every periodic evaluation jitted a new predict function."""
  from centernet_jax.data import pipeline

  info = pipeline.get_dataset_info(smoke_config.data)
  config = tasks.resolve_config(smoke_config, info.num_classes)
  config.eval.test_scales = (1.0, 0.5)
  model = build_model(config.model)
  size = config.data.input_size
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  evaluator = evaluate.Evaluator(config, model, info)
  first = evaluator(variables, str(tmp_path / 'first'))

  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event in _COMPILE_EVENTS:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    second = evaluator(variables, str(tmp_path / 'second'))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert events == []
  assert second == first
  assert set(first) >= {'AP', 'AP50', 'AR100'}
  # The listener does see compilations: a new evaluator compiles again.
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    evaluate.Evaluator(config, model, info)(variables, str(tmp_path / 'third'))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert events


@pytest.mark.parametrize('local_fails,other_message', [
    (False, None), (True, None), (False, 'process 1: OSError: disk gone'),
    (True, 'process 0: ValueError: boom'),
])
def test_prediction_failure_is_agreed_before_the_gather(local_fails, other_message, monkeypatch,
                                                        smoke_config):
  """A failure on any process is agreed before the collective gather, so every process raises
  (with the failing process's message) instead of waiting in the gather. The agreement is
  replaced by a fake that answers as another process would."""
  from centernet_jax import fault
  from centernet_jax.data import pipeline

  info = pipeline.get_dataset_info(smoke_config.data)
  config = tasks.resolve_config(smoke_config, info.num_classes)
  evaluator = evaluate.Evaluator(config, build_model(config.model), info)
  asked, gathered = [], []

  def predict_rows(variables):
    del variables
    if local_fails:
      raise ValueError('boom')
    return [], None

  def agree_message(message):
    asked.append(message)
    return message or other_message

  monkeypatch.setattr(evaluator, '_predict_rows', predict_rows)
  monkeypatch.setattr(fault, 'agree_message', agree_message)
  monkeypatch.setattr(evaluate, '_gather', lambda rows, spec: gathered.append(rows) or rows)
  if local_fails:
    with pytest.raises(ValueError, match='boom'):
      evaluator.predict_dataset({})
  elif other_message:
    with pytest.raises(RuntimeError, match='failed on another process: process 1: OSError'):
      evaluator.predict_dataset({})
  else:
    assert evaluator.predict_dataset({}) == []
  assert asked == ['ValueError: boom' if local_fails else None]  # every process asks, once
  assert gathered == ([] if local_fails or other_message else [[]])


def _rows(n, first_id, seed):
  rng = np.random.default_rng(seed)
  return [(first_id + i, {'boxes': rng.normal(size=(3, 4)).astype(np.float32),
                          'classes': rng.integers(0, 5, 3).astype(np.int32),
                          'keypoints': rng.normal(size=(3, 2, 2)).astype(np.float32)})
          for i in range(n)]


@pytest.mark.parametrize('lengths', [(3, 1), (0, 2), (2, 2), (0, 0)])
def test_gather_two_processes(lengths, monkeypatch):
  """_gather on two simulated processes: each process sends its rows padded to the longest,
  and every process gets both processes' rows (any dict of fixed-shape arrays) back."""
  from jax.experimental import multihost_utils

  spec = {'boxes': ((3, 4), np.float32), 'classes': ((3,), np.int32),
          'keypoints': ((3, 2, 2), np.float32)}
  rows = [_rows(lengths[0], 10, 0), _rows(lengths[1], 20, 1)]
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  sent = [[], []]

  def run(process, allgather_tiled):
    def allgather(x, tiled=False):
      if not tiled:  # the row counts
        return np.stack([np.array([len(r)]) for r in rows])
      return allgather_tiled(process, np.asarray(x))
    monkeypatch.setattr(multihost_utils, 'process_allgather', allgather)
    return evaluate._gather(rows[process], spec)

  for p in (0, 1):  # what each process contributes
    run(p, lambda p, x: sent[p].append(x) or x)
  calls = []

  def tiled(p, x):  # process 0's view: the call's arrays of both processes, concatenated
    np.testing.assert_array_equal(x, sent[p][len(calls)])
    calls.append(x)
    return np.concatenate([sent[0][len(calls) - 1], sent[1][len(calls) - 1]])

  got = run(0, tiled)
  want = rows[0] + rows[1]
  assert [g[0] for g in got] == [w[0] for w in want]
  for (_, g), (_, w) in zip(got, want, strict=True):
    assert set(g) == set(w)
    for k in w:
      assert g[k].dtype == w[k].dtype
      np.testing.assert_array_equal(g[k], w[k])

"""Fault tolerance (issue 8): signals, partial checkpoints, exact resume, NaN policy, data faults,
checkpoint write errors and evaluation failures (``centernet_jax/fault.py``, the loop in
``train.py``). The long soak test is experiments/soak.py; the agreement between processes is
tested in multihost_test.py."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from centernet_jax import checkpoint, evaluate, fault, sharding, train
from centernet_jax.data import pipeline, shapes
from centernet_jax.data.errors import DataError
from centernet_jax.metric_writer import read_metrics
from centernet_jax.state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Helpers ---------------------------------------------------------------------------------


def _broken_shapes(smoke_config, tmp_path):
  """A copy of the smoke shapes data with one training image overwritten by garbage."""
  d = smoke_config.data
  src = pipeline.default_shapes_dir(d) if not d.shapes_dir else d.shapes_dir
  shapes.ensure(src, num_train=d.shapes_num_train, num_val=d.shapes_num_val,
                image_size=d.shapes_image_size, seed=d.shapes_seed)
  dst = str(tmp_path / 'shapes_broken')
  shutil.copytree(src, dst)
  paths = shapes.paths(dst)
  with open(paths['train_annotations']) as f:
    first = json.load(f)['images'][0]['file_name']
  bad = os.path.join(paths['train_images'], first)
  with open(bad, 'wb') as f:
    f.write(b'this is not an image')
  return dst, bad


def _losses(workdir):
  return {r['step']: r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r}


def _state(workdir, step):
  """(model, opt) items of a checkpoint as restored by Orbax without a target."""
  path = os.path.join(workdir, 'checkpoints', str(step))
  ckptr = ocp.StandardCheckpointer()
  return ckptr.restore(os.path.join(path, 'model')), ckptr.restore(os.path.join(path, 'opt'))


def _assert_trees_identical(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _boom(*args, **kwargs):
  raise RuntimeError('evaluation exploded (test)')


# --- Signals, partial checkpoints, exact resume, data skips, evaluation failure -----------------


def test_sigterm_partial_checkpoints_exact_resume(smoke_config, tmp_path, monkeypatch, caplog):
  """One subprocess run shared by several checks (subprocess start-up is the slow part).

  SIGTERM to a running training commits a checkpoint at the step it names (exit 143); planted
  incomplete checkpoints are set aside; the resumed run ends bit-identical to an uninterrupted
  one; a corrupt training image is skipped, logged and counted; a NaN batch (step 8) is skipped
  by policy 'skip' and counted; a failing evaluation does not stop training.
  """
  data_dir, bad_file = _broken_shapes(smoke_config, tmp_path)
  overrides = {'train.num_steps': 10, 'train.checkpoint_every': 100, 'train.eval_every': -1,
               'train.nonfinite_policy': 'skip', 'data.shapes_dir': data_dir,
               'data.max_skip_fraction': 0.5}
  cfg = smoke_config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, name = key.split('.')
    cfg[section][name] = value
  cfg.train.checkpoint_every = 1  # in-process legs only: numerics do not depend on it
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'centernet_jax.train', '--config', 'configs/smoke.py',
         '--workdir', workdir] + [f'--config.{k}={v}' for k, v in overrides.items()]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  try:
    deadline = time.time() + 240
    while not _losses(workdir) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.1)
    assert proc.poll() is None, 'training ended before the signal'
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  m = re.search(r'stopped by SIGTERM after step (\d+): checkpoint of step (\d+) committed', err)
  assert m and m.group(1) == m.group(2), err[-3000:]
  k = int(m.group(1))
  assert 1 <= k < 7
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  assert checkpoint.Checkpointer(ckpt_dir, read_only=True).all_steps() == [k]
  assert checkpoint.why_incomplete(os.path.join(ckpt_dir, str(k))) is None
  assert max(_losses(workdir)) == k  # the step it names is the last one trained

  # Plant what a kill -9 leaves: an Orbax tmp dir, and a newer step dir lacking an item.
  shutil.copytree(os.path.join(ckpt_dir, str(k)), os.path.join(ckpt_dir, '8.orbax-checkpoint-tmp'))
  shutil.copytree(os.path.join(ckpt_dir, str(k)), os.path.join(ckpt_dir, '9'))
  shutil.rmtree(os.path.join(ckpt_dir, '9', 'opt'))

  monkeypatch.setattr(evaluate.Evaluator, '__call__', _boom)
  seen = {}
  monkeypatch.setattr(pipeline, 'create_train_iterator', _poisoned_iterator({8}, seen))
  with caplog.at_level(logging.INFO):
    assert train.train_and_evaluate(cfg, workdir) == {}  # resumes at k, evaluation fails
  assert f'Resuming from {ckpt_dir} step {k}' in caplog.text
  assert 'Evaluation at step 10 failed (RuntimeError: evaluation exploded (test))' in caplog.text
  moved = sorted(os.listdir(checkpoint.partial_dir(workdir)))
  assert [n.split('.')[0] for n in moved] == ['8', '9']
  assert "item 'opt' is missing" in caplog.text and 'Orbax temporary directory' in caplog.text
  assert 'eval/failed' in read_metrics(workdir)[-1]

  caplog.clear()
  ref = str(tmp_path / 'reference')
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(cfg.copy_and_resolve_references(), ref)
  # 16 images, batch 8: each 2-step epoch reads the corrupt file once.
  assert f'Skipping unreadable training image {bad_file} (image id ' in caplog.text
  last = [r for r in read_metrics(ref) if 'train/skipped_images' in r][-1]
  assert (last['step'], last['train/skipped_images']) == (10, 5)

  _assert_trees_identical(_state(ref, 10), _state(workdir, 10))
  lr, lw = _losses(ref), _losses(workdir)
  assert sorted(lw) == list(range(1, 11))
  np.testing.assert_array_equal([lw[s] for s in range(1, 11)], [lr[s] for s in range(1, 11)])

  # The NaN batch of step 8: update not applied, counted, the run went on.
  (model7, opt7), (model8, opt8) = _state(ref, 7), _state(ref, 8)
  _assert_trees_identical(model7, model8)
  _assert_trees_identical(opt7['opt_state'], opt8['opt_state'])
  assert (int(opt7['step']), int(opt8['step'])) == (7, 8)
  rec = {r['step']: r for r in read_metrics(ref) if 'train/loss' in r}
  assert [rec[s]['train/skipped_update'] for s in (7, 8, 9)] == [0, 1, 0]
  assert (rec[7]['train/skipped_updates'], rec[10]['train/skipped_updates']) == (0, 1)
  assert not np.isfinite(rec[8]['train/loss']) and np.isfinite(rec[10]['train/loss'])
  assert 'Non-finite update skipped at step 8' in caplog.text
  assert f'image ids [{", ".join(str(i) for i in seen[8])}]' in caplog.text


# --- Partial checkpoint detection --------------------------------------------------------------


def _fake_step(root, name, *, commit=True, items=('model', 'opt', 'meta'), empty=(),
               metadata_commit=False):
  path = os.path.join(root, name)
  os.makedirs(path)
  if commit:
    open(os.path.join(path, checkpoint.COMMIT_FILE), 'w').close()
  with open(os.path.join(path, '_CHECKPOINT_METADATA'), 'w') as f:
    json.dump({'commit_timestamp_nsecs': 5} if metadata_commit else {}, f)
  for item in items:
    os.makedirs(os.path.join(path, item))
    if item not in empty:
      open(os.path.join(path, item, 'data'), 'w').close()


@pytest.mark.parametrize('name, kwargs, reason', [
    ('10', {}, None),
    ('11', dict(commit=False, metadata_commit=True), None),  # older Orbax: metadata commit time
    ('12.orbax-checkpoint-tmp', {}, 'Orbax temporary directory'),
    ('13.orbax-checkpoint-tmp-1700000000', dict(commit=False), 'Orbax temporary directory'),
    ('14', dict(commit=False), 'no commit marker'),
    ('15', dict(items=('model', 'meta')), "item 'opt' is missing"),
    ('16', dict(empty=('model',)), "item 'model' is empty"),
    ('notes', dict(commit=False), None),  # not a step: left alone
])
def test_partial_checkpoint_detection(tmp_path, caplog, name, kwargs, reason):
  ckpt_dir, partial = str(tmp_path / 'checkpoints'), str(tmp_path / 'checkpoints_partial')
  _fake_step(ckpt_dir, '2')
  _fake_step(ckpt_dir, name, **kwargs)
  got = checkpoint.why_incomplete(os.path.join(ckpt_dir, name))
  assert (got is None) if reason is None else (reason in got)
  with caplog.at_level(logging.WARNING):
    moved = checkpoint.set_aside_partial(ckpt_dir, partial)
  left = sorted(os.listdir(ckpt_dir))
  if reason is None:
    assert moved == [] and left == sorted(['2', name])
  else:
    assert left == ['2'] and len(moved) == 1
    dest, why = moved[0]
    assert os.path.basename(dest).startswith(name + '.') and reason in why
    assert os.path.isdir(dest)  # moved, not deleted
    assert f'Incomplete checkpoint {os.path.join(ckpt_dir, name)} ({why}) moved to' in caplog.text


def test_checkpoint_write_errors_keep_the_last_good_one(tmp_path, monkeypatch):
  state = TrainState(step=jnp.array(2), params={'w': jnp.arange(3.0)}, batch_stats={},
                     opt_state={'mu': jnp.zeros(3)})
  ckpt_dir = str(tmp_path / 'w' / 'checkpoints')
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  ckpt.save(state, {'model': {}})
  ckpt.wait()

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r'\(step 4\).*No space left on device.*last complete checkpoint is '
                           r'step 2'):
    ckpt.save(state.replace(step=jnp.array(4)), {'model': {}})
  monkeypatch.undo()
  shutil.rmtree(str(tmp_path / 'w'))  # the workdir vanishes
  with pytest.raises(checkpoint.CheckpointWriteError, match='no longer exists'):
    ckpt.save(state.replace(step=jnp.array(6)), {'model': {}})
  ckpt.close()
  assert not os.path.exists(ckpt_dir)  # not silently recreated

  # The failed full-disk save left step 2 as it was.
  ckpt_dir = str(tmp_path / 'v' / 'checkpoints')
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  ckpt.save(state, {'model': {}})
  ckpt.wait()
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(checkpoint.CheckpointWriteError):
    ckpt.save(state.replace(step=jnp.array(4)), {'model': {}})
  monkeypatch.undo()
  assert ckpt.all_steps() == [2] and checkpoint.why_incomplete(os.path.join(ckpt_dir, '2')) is None
  ckpt.close()


# --- Non-finite policy -----------------------------------------------------------------------


@pytest.mark.parametrize('poison', ['none', 'loss', 'params'])
def test_guard_nonfinite_keeps_the_old_state(poison):
  def step(state, batch):
    params = {'w': state.params['w'] - 0.5 * batch['x']}
    if poison == 'params':
      params = {'w': params['w'].at[1].set(jnp.inf)}
    loss = jnp.sum(batch['x']) * (jnp.nan if poison == 'loss' else 1.0)
    return state.replace(step=state.step + 1, params=params,
                         opt_state={'count': state.opt_state['count'] + 1}), {'loss': loss}

  rng = np.random.default_rng(0)
  w = rng.normal(size=4).astype(np.float32)
  state = TrainState(step=jnp.array(3), params={'w': jnp.asarray(w)}, batch_stats={},
                     opt_state={'count': jnp.array(7)})
  x = rng.normal(size=4).astype(np.float32)
  new, metrics = jax.jit(fault.guard_nonfinite(step))(state, {'x': jnp.asarray(x)})
  assert int(new.step) == 4  # the step advances either way (data stream, schedule)
  skipped = poison != 'none'
  assert float(metrics['skipped_update']) == float(skipped)
  np.testing.assert_array_equal(new.params['w'], w if skipped else w - 0.5 * x)
  assert int(new.opt_state['count']) == (7 if skipped else 8)


def _poisoned_iterator(steps_to_poison, seen):
  real = pipeline.create_train_iterator

  def create(*args, start_step=0, **kwargs):
    for k, batch in enumerate(real(*args, start_step=start_step, **kwargs)):
      step = start_step + k + 1
      seen[step] = batch['image_id'].tolist()
      if step in steps_to_poison:
        batch['image'] = np.full_like(batch['image'], np.nan)
      yield batch

  return create


_NAN = float('nan')


@pytest.mark.parametrize('policy, losses, max_consecutive, error', [
    ('stop', [1.0, 2.0, 3.0], 1, None),
    ('stop', [1.0, _NAN, 3.0], 1, r'non-finite loss at step 2: loss=nan; image ids of the '
                                  r'batch: \[20, 21\]\. Last checkpoint: step 1 in /w'),
    ('stop', [1.0, float('inf')], 1, 'non-finite loss at step 2: loss=inf'),
    ('skip', [1.0, _NAN, 3.0, _NAN, _NAN, 4.0], 2, None),  # never more than 2 in a row
    ('skip', [_NAN, _NAN, 3.0, _NAN, _NAN, _NAN], 2,
     r'in 3 steps in a row \(up to step 6; config.train.max_consecutive_skips=2\); image ids of '
     r'the batch at step 6: \[60, 61\]'),
])
def test_nonfinite_monitor(policy, losses, max_consecutive, error):
  monitor = fault.NonFiniteMonitor(policy, max_consecutive, lambda: 'step 1 in /w')
  entries = []
  for step, loss in enumerate(losses, 1):
    metrics = {'loss': np.float32(loss)}
    if policy == 'skip':  # what guard_nonfinite reports
      metrics['skipped_update'] = np.float32(not np.isfinite(loss))
    entries.append((step, metrics, np.array([10 * step, 10 * step + 1])))
  if error is None:
    monitor.check(entries[:3])  # in two calls, as the loop does between log steps
    monitor.check(entries[3:])
    assert monitor.skipped_updates == (sum(not np.isfinite(v) for v in losses)
                                       if policy == 'skip' else 0)
  else:
    with pytest.raises(fault.NonFiniteLossError, match=error):
      monitor.check(entries[:3])
      monitor.check(entries[3:])


def test_nonfinite_policy_is_checked():
  with pytest.raises(ValueError, match="nonfinite_policy must be 'stop' or 'skip'"):
    fault.NonFiniteMonitor('ignore', 1)


# --- Stop agreement, one process (two processes: multihost_test.py) ----------------------------


def _mesh1():
  return sharding.make_mesh(jax.devices()[:1])


def _numbered(n, fail_at=None):
  for k in range(n):
    if k == fail_at:
      raise DataError(f'bad batch {k}')
    yield {'x': np.full((2, 3), k, np.float32), 'image_id': np.array([k, k])}


def test_prefetcher_order_errors_and_close():
  with sharding.Prefetcher(_numbered(5), _mesh1(), ('image_id',), size=2) as batches:
    got = [(float(b['x'][0, 0]), h['image_id'].tolist()) for b, h in batches]
  assert got == [(k, [k, k]) for k in range(5)]
  assert set(next(iter(sharding.Prefetcher(_numbered(1), _mesh1())))[0]) == {'x', 'image_id'}

  # An error comes after every batch read before it, at the call that would have returned it.
  batches = sharding.Prefetcher(_numbered(5, fail_at=3), _mesh1(), size=2)
  assert [float(next(batches)[0]['x'][0, 0]) for _ in range(3)] == [0, 1, 2]
  for _ in range(2):  # and again on later calls
    with pytest.raises(DataError, match='bad batch 3'):
      next(batches)
  batches.close()

  # close() stops a thread that waits for room in the queue, and closes the input.
  closed = []

  def endless():
    try:
      k = 0
      while True:
        yield {'x': np.full((2, 3), k, np.float32)}
        k += 1
    finally:
      closed.append(True)

  batches = sharding.Prefetcher(endless(), _mesh1(), size=2)
  assert float(next(batches)[0]['x'][0, 0]) == 0
  batches.close()
  assert not batches._thread.is_alive() and closed == [True]


def test_stop_agreement_one_process_decides_locally():
  mesh = _mesh1()
  signals = fault.StopSignals()
  agreement = fault.StopAgreement(signals, mesh, sharding.Prefetcher(_numbered(3, 2), mesh))
  assert agreement.start(0) is None and not agreement.multi
  assert agreement.next_batch()[0]['x'].shape == (2, 3)
  flags = agreement.flags()
  assert flags.shape == (1, 3) and agreement.flags() is flags  # cached: no transfer per step
  step = jax.jit(fault.with_stop_flags(lambda s, b: (s + 1, {'loss': jnp.sum(b['x'])})))
  s, metrics, agreed = step(jnp.array(0), {'x': jnp.ones(3)}, flags)
  assert int(s) == 1 and agreed.tolist() == [0, 0, 0]
  assert agreement.decide(1, agreed, now=False) is None
  signals.signum = signal.SIGTERM  # what the handler does
  assert agreement.decide(2, agreed, now=False) == fault.Stop(2, signal.SIGTERM, None)
  assert agreement.start(7) == fault.Stop(7, signal.SIGTERM, None)
  assert agreement.flags().tolist() == [[1, 0, 0]]  # SIGTERM, SIGINT, input failed
  agreement.next_batch()
  with pytest.raises(DataError, match='bad batch 2'):  # one process: raised at once
    agreement.next_batch()
  assert fault.agree_any(True) and not fault.agree_any(False)
  assert fault.agree_message('x') == 'x' and fault.agree_message(None) is None


# --- Data faults -----------------------------------------------------------------------------


def test_unreadable_images_are_skipped_counted_and_stop(smoke_config, tmp_path, caplog):
  data_dir, bad_file = _broken_shapes(smoke_config, tmp_path)
  cfg = smoke_config.copy_and_resolve_references().data
  cfg.shapes_dir = data_dir
  cfg.max_skip_fraction = 0.2
  info = pipeline.get_dataset_info(cfg)
  bad_id = info.train_data.images[0].image_id
  with caplog.at_level(logging.WARNING):
    it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=8, seed=0)
    batches = [next(it) for _ in range(4)]  # two epochs of 16 images
  skipped = np.concatenate([b['skipped'] for b in batches])
  assert skipped.sum() == 2  # once per epoch
  assert caplog.text.count(f'Skipping unreadable training image {bad_file} (image id ') == 2
  for b in batches:
    for r in np.flatnonzero(b['skipped']):
      twins = [o for o in range(8) if o != r and np.array_equal(b['image'][o], b['image'][r])]
      assert twins and all(not b['skipped'][o] for o in twins)
      assert b['image_id'][r] == b['image_id'][twins[0]] != bad_id
  ids = np.concatenate([b['image_id'] for b in batches[:2]])
  assert sorted(ids[~skipped[:16]].tolist()) == sorted(
      r.image_id for r in info.train_data.images if r.image_id != bad_id)

  # Above the fraction: stops, naming the file (1 skip of max(reads, 16) > 0.05).
  cfg.max_skip_fraction = 0.05
  it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=8, seed=0)
  with pytest.raises(DataError, match=r'(?s)cannot read image file.*' + re.escape(bad_file) +
                     r' \(image id \d+\): .*config\.data\.max_skip_fraction=0\.05'):
    for _ in range(2):
      next(it)


@pytest.mark.parametrize('fraction, fails', [(0.5, False), (0.001, True)])
def test_invalid_annotations_are_skipped_or_stop(smoke_config, tmp_path, caplog, fraction, fails):
  data_dir, _ = _broken_shapes(smoke_config, tmp_path)
  ann_file = shapes.paths(data_dir)['train_annotations']
  with open(ann_file) as f:
    gt = json.load(f)
  n = len(gt['annotations'])
  gt['annotations'][0]['category_id'] = 999
  gt['annotations'][1]['bbox'] = [1, 2, 3]
  with open(ann_file, 'w') as f:
    json.dump(gt, f)
  cfg = smoke_config.copy_and_resolve_references().data
  cfg.shapes_dir = data_dir
  cfg.max_skip_fraction = fraction
  if fails:
    with pytest.raises(DataError, match=rf'2 of {n} annotations fail validation'):
      pipeline.get_dataset_info(cfg)
    return
  with caplog.at_level(logging.WARNING):
    info = pipeline.get_dataset_info(cfg)
  assert info.train_data.num_invalid == 2
  assert sum(len(r.labels) for r in info.train_data.images) == n - 2
  assert 'has category_id 999' in caplog.text and "has 'bbox' = [1, 2, 3]" in caplog.text
  assert os.path.basename(ann_file) in caplog.text


def test_in_flight_limit_waits_for_all_but_the_newest_steps(monkeypatch):
  """The loop's bound on queued steps: after add(), at most ``limit`` outputs are not waited
  for, oldest first; on the device, every earlier step has finished."""
  slow = jax.jit(lambda x: functools.reduce(lambda a, _: jnp.tanh(a @ a), range(10), x))
  x = jnp.full((128, 128), 0.01, jnp.float32)
  limit = fault.InFlightLimit(1)
  outs = []
  for _ in range(4):
    outs.append(slow(x))
    limit.add({'loss': outs[-1]})
  assert all(o.is_ready() for o in outs[:-1])

  waited = []
  monkeypatch.setattr(jax, 'block_until_ready', waited.append)
  limit = fault.InFlightLimit(2)
  for i in range(5):
    limit.add(i)
  assert waited == [0, 1, 2]
  with pytest.raises(ValueError, match='limit must be >= 1'):
    fault.InFlightLimit(0)

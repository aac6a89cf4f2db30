"""The accelerator check (experiments/device_check.py): its tiny run end to end, and its parts.

The end-to-end test runs ``experiments/device_check --tiny`` (the shell wrapper) in a
subprocess on the CPU and checks that the JSON and the markdown hold every section; the other
tests hold the batch search, the out-of-memory test, the peak table, the time budget and the
model table to hand-worked cases, without compiling anything.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, 'experiments', 'device_check')


@pytest.fixture(scope='module')
def dc():
  spec = importlib.util.spec_from_file_location(
      '_device_check_under_test', os.path.join(ROOT, 'experiments', 'device_check.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  yield module
  del sys.modules[spec.name]


def _run_wrapper(out_dir, *args: str) -> tuple[dict, str]:
  """Runs the shell wrapper with this interpreter; returns (JSON report, markdown)."""
  env = {**os.environ, 'PYTHON': sys.executable}
  proc = subprocess.run([WRAPPER, '--tiny', '--out', str(out_dir), *args], env=env,
                        capture_output=True, text=True, timeout=600, check=False, cwd='/')
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (json_path,) = glob.glob(os.path.join(out_dir, 'device_check_cpu_*.json'))
  md_path = json_path[:-len('.json')] + '.md'
  with open(json_path) as f, open(md_path) as g:
    report, table = json.load(f), g.read()
  assert table in proc.stdout  # printed as well as written
  return report, table


SECTIONS = ('## Train', '## Inference', '## DCNv2', '## Memory', '## Compile times', '## Notes')


def test_tiny_run_measures_every_section(tmp_path):
  report, table = _run_wrapper(tmp_path, '--models', 'resnet18', '--budget_s', '900')
  for key in ('environment', 'device', 'peak', 'train', 'inference', 'dcn', 'memory',
              'import_check', 'elapsed_s', 'notes'):
    assert key in report, key
  assert report['device']['platform'] == 'cpu' and report['tiny']
  (train,) = report['train']
  assert train['status'] == 'ok', train
  assert train['batch'] == 2 and train['size'] == 64 and train['dtype'] == 'bfloat16'
  assert [t['batch'] for t in train['batch_search']] == [2]
  assert train['search_stop'] == 'batch cap 2'
  for key in ('step_s_median', 'images_per_s', 'flops_per_image', 'compile_s', 'params'):
    assert np.isfinite(train[key]) and train[key] > 0, key
  np.testing.assert_allclose(train['images_per_s'], 2 / train['step_s_median'], rtol=1e-9)
  assert train['mfu'] is None  # no bf16 peak for a CPU: omitted, with a note
  assert any('MFU omitted' in n for n in report['notes'])
  (infer,) = report['inference']
  assert infer['status'] == 'ok', infer
  for key in ('infer_b2_s_median', 'infer_b2_images_per_s', 'infer_b2_compile_s',
              'infer_flops_per_image_b2'):
    assert np.isfinite(infer[key]) and infer[key] > 0, key
  (dcn,) = report['dcn']
  assert dcn['status'] == 'ok', dcn
  np.testing.assert_allclose(dcn['dcn_to_conv'], dcn['dcn_median_s'] / dcn['conv_median_s'])
  assert report['memory']['peak_memory_bytes'] > 0
  assert report['import_check'] == {
      'blocked': ['tensorflow', 'tensorflow_datasets', 'pycocotools'], 'loaded': []}
  assert 'xla_backend_optimization_level=0' in report['environment']['XLA_FLAGS']
  positions = [table.index(s) for s in SECTIONS]
  assert positions == sorted(positions)
  assert '| resnet18 | 64 | 2 |' in table and '| train resnet18 batch 2 |' in table
  assert '| 1, 16, 16, 8->8 | float32 |' in table and '| ok |' in table


def test_spent_budget_skips_everything_and_still_reports(tmp_path):
  report, table = _run_wrapper(tmp_path, '--models', 'resnet18,cornernet', '--budget_s', '1e-9')
  rows = report['train'] + report['inference'] + report['dcn']
  assert len(rows) == 5 and {r['status'] for r in rows} == {'skipped'}
  assert sum('skipped, global time budget spent' in n for n in report['notes']) == 5
  assert table.count('| skipped |') == 5 and all(s in table for s in SECTIONS)


def _fits_below(limit: int, clock=None, step_s: float = 0.0):
  """A fake trial: batches up to ``limit`` fit; larger ones raise an XLA-like OOM."""
  def trial(b):
    if clock is not None:
      clock[0] += step_s
    if b > limit:
      raise RuntimeError(f'RESOURCE_EXHAUSTED: Out of memory while trying to allocate {b} GiB')
    return {'images_per_s': 10.0 * b}
  return trial


@pytest.mark.parametrize('limit, start, cap, multiple, refine, tried, best, stop', [
    (100, 16, 1024, 1, 1, [16, 32, 64, 128, 96], 96, 'out of memory at 128'),
    (100, 16, 1024, 1, 0, [16, 32, 64, 128], 64, 'out of memory at 128'),
    (100, 16, 1024, 1, 2, [16, 32, 64, 128, 96, 112], 96, 'out of memory at 112'),
    (100, 16, 64, 1, 1, [16, 32, 64], 64, 'batch cap 64'),
    (10, 64, 1024, 1, 1, [64, 32, 16, 8, 12], 8, 'out of memory at 12'),
    (50, 8, 1024, 4, 1, [8, 16, 32, 64, 48], 48, 'out of memory at 64'),
    (0, 4, 1024, 1, 1, [4, 2, 1], None, 'nothing fits'),
    (5000, 2048, 1024, 1, 1, [1024], 1024, 'batch cap 1024'),
    (2, 2, 2, 1, 1, [2], 2, 'batch cap 2'),  # the --tiny setting
    (13, 6, 1024, 3, 1, [6, 12, 24, 18], 12, 'out of memory at 18'),
    (5, 3, 1024, 3, 1, [3, 6], 3, 'out of memory at 6'),  # the middle, 4, rounds down to 3
    (4, 12, 1024, 3, 1, [12, 6, 3], 3, 'out of memory at 6'),
])
def test_batch_search(dc, limit, start, cap, multiple, refine, tried, best, stop):
  found = dc.search_batch(_fits_below(limit), start=start, cap=cap, multiple=multiple,
                          deadline=float('inf'), refine=refine)
  assert [t['batch'] for t in found['trials']] == tried
  assert [t['fits'] for t in found['trials']] == [b <= limit for b in tried]
  assert found['batch'] == best and found['stop'] == stop
  assert found['result'] == (None if best is None else {'images_per_s': 10.0 * best})
  assert all(b % multiple == 0 for b in tried)
  assert all('RESOURCE_EXHAUSTED' in t['error'] for t in found['trials'] if not t['fits'])


@pytest.mark.parametrize('deadline, n_trials', [(25.0, 2), (35.0, 3), (5.0, 1), (1e9, 5)])
def test_batch_search_stops_at_its_time_cap(dc, deadline, n_trials):
  clock = [0.0]  # each trial takes 10 s; the next starts only if 10 s are left
  found = dc.search_batch(_fits_below(100, clock, 10.0), start=16, cap=1024, multiple=1,
                          deadline=deadline, clock=lambda: clock[0])
  assert len(found['trials']) == n_trials
  assert found['batch'] == [16, 32, 64, 64, 96][n_trials - 1]
  assert found['stop'].startswith('time cap') == (n_trials < 5)
  assert all(t['seconds'] == 10.0 for t in found['trials'])


def test_batch_search_passes_other_errors_on(dc):
  def trial(b):
    raise ValueError(f'shapes do not match at batch {b}')
  with pytest.raises(ValueError, match='batch 8'):
    dc.search_batch(trial, start=8, cap=64, multiple=1, deadline=float('inf'))


@pytest.mark.parametrize('error, oom', [
    (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB'), True),
    (RuntimeError('Allocator (GPU_0_bfc) ran out of memory trying to allocate 2GiB'), True),
    (RuntimeError('XLA:TPU compile permanent error. Ran out of memory in memory space hbm'),
     True),
    (MemoryError('OOM when allocating tensor'), True),
    (RuntimeError('INTERNAL: cuDNN error'), False),
    (ValueError('ROOM for improvement'), False),
    (TypeError('unsupported operand'), False),
])
def test_is_oom(dc, error, oom):
  assert dc.is_oom(error) is oom
  assert dc.is_oom(dc.OutOfMemory('plan too big'))


@pytest.mark.parametrize('kind, platform, peak', [
    ('NVIDIA H200', 'gpu', 989e12),
    ('NVIDIA H100 80GB HBM3', 'gpu', 989e12),
    ('NVIDIA H100 PCIe', 'gpu', 756e12),
    ('NVIDIA H100 NVL', 'gpu', 835e12),
    ('NVIDIA A100-SXM4-80GB', 'gpu', 312e12),
    ('TPU v4', 'tpu', 275e12),
    ('TPU v5 lite', 'tpu', 197e12),
    ('TPU v5e', 'tpu', 197e12),
    ('TPU v5', 'tpu', 459e12),
    ('TPU v5p', 'tpu', 459e12),
    ('TPU v6 lite', 'tpu', 918e12),
    ('NVIDIA GeForce RTX 4090', 'gpu', None),
    ('TPU v3', 'tpu', None),
    ('cpu', 'cpu', None),
])
def test_peak_table(dc, kind, platform, peak):
  got, source = dc.peak_bf16(kind, platform)
  assert got == peak
  assert ('MFU omitted' in source and repr(kind) in source) == (peak is None)


def test_budget_shares_sections_and_rolls_time_over(dc):
  clock = [0.0]
  budget = dc.Budget(100.0, clock=lambda: clock[0])
  assert budget.item_deadline('train', 4) == pytest.approx(62.0 / 4)
  clock[0] = 40.0  # the first items took longer than their share: the rest share what is left
  assert budget.item_deadline('train', 2) == pytest.approx(40.0 + 22.0 / 2)
  assert budget.item_deadline('inference', 4) == pytest.approx(40.0 + 48.0 / 4)
  clock[0] = 70.0  # past the train section's end: a train item gets no time of its own
  assert budget.item_deadline('train', 1) == 70.0 and budget.left() == 30.0


def test_forbidden_imports_are_refused(dc):
  finder = dc._Forbid()
  for name in ('tensorflow', 'tensorflow_datasets.core', 'pycocotools.coco'):
    with pytest.raises(ModuleNotFoundError, match=name):
      finder.find_spec(name)
  assert finder.find_spec('numpy') is None and finder.find_spec('tensorflow_probability') is None


@pytest.mark.parametrize('name', ['resnet18', 'dla34', 'hourglass104', 'cornernet'])
def test_every_model_config_builds(dc, name):
  """The full and tiny configs of every model resolve and build (no compile)."""
  from centernet_jax.models import build_model
  full, side = dc.model_config(name, tiny=False, size=512)
  assert full.model.arch == dc.MODELS[name][1] and full.model.dtype == 'bfloat16'
  assert side == (511 if name == 'cornernet' else 512) and full.data.input_size == side
  assert not full.eval.flip_test and tuple(full.eval.test_scales) == (1.0,)
  assert full.model.num_classes == 80 and full.model.heads
  build_model(full.model)
  tiny, side = dc.model_config(name, tiny=True, size=32)
  assert tiny.model.arch == dc.MODELS[name][2] and side == 32 and tiny.model.head_conv == 16
  build_model(tiny.model)


def test_cornernet_train_step_traces_on_the_synthetic_batch(dc):
  """The other task than the end-to-end run's (ctdet): its step takes the synthetic batch.

  Traced abstractly (``jax.eval_shape``): nothing is compiled.
  """
  from centernet_jax import optim, tasks
  from centernet_jax import state as state_lib
  from centernet_jax.models import build_model

  config, side = dc.model_config('cornernet', tiny=True, size=32)
  model = build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=2, steps_per_epoch=10,
                                      total_steps=100)
  state = jax.eval_shape(functools.partial(state_lib.init_state, model, tx,
                                           image_shape=(1, side, side, 3)),
                         jax.random.PRNGKey(0))
  batch = dc.bench.synthetic_batch(np.random.default_rng(0), 2, side, config.data.max_objs,
                                   config.model.num_classes)
  step = tasks.get(config.task).make_train_step(config, model, tx, schedule)
  _, metrics = jax.eval_shape(step, state, batch)
  assert metrics['loss'].shape == ()


def test_markdown_names_failures_and_formats_numbers(dc):
  report = {
      'device': {'device_kind': 'NVIDIA H200', 'devices': 1, 'platform': 'gpu'},
      'environment': {'date': '2026-12-03', 'jax': '0.10', 'flax': '0.12'}, 'tiny': False,
      'peak': {'bf16_flops_per_s_per_device': 989e12, 'source': 'spec'}, 'elapsed_s': 400.0,
      'budget_s': 450.0, 'sizes': {'infer_batches': (1, 64)},
      'train': [{'model': 'dla34', 'size': 512, 'batch': 96, 'step_s_median': 0.25,
                 'images_per_s': 384.0, 'mfu': 0.4567, 'flops_per_image': 2e11,
                 'batch_search': [{'batch': 64, 'fits': True}, {'batch': 128, 'fits': False},
                                  {'batch': 96, 'fits': True}],
                 'search_stop': 'out of memory at 128', 'xla_temp_bytes': 3 * 2**30,
                 'compiles': [{'batch': 64, 'compile_s': 41.04}], 'status': 'ok'}],
      'inference': [{'model': 'cornernet', 'status': 'error', 'error': 'boom'}],
      'dcn': [{'shape': [1, 128, 128, 64, 64], 'dtype': 'bfloat16', 'status': 'skipped'}],
      'memory': {'peak_memory_bytes': 100 * 2**30, 'peak_memory_source': 'device',
                 'bytes_limit': 120 * 2**30},
      'import_check': {'loaded': []}, 'notes': ['inference cornernet: RuntimeError: boom']}
  table = dc.markdown(report)
  assert ('| dla34 | 512 | 96 | 0.2500 | 384.0 | 45.7 % | 200 | 64 128(oom) 96 | '
          'out of memory at 128 | 3.00 GiB | ok |') in table
  assert '| cornernet | - | - | - | - | - | error |' in table
  assert '| 1, 128, 128, 64->64 | bfloat16 | - | - | - | - | skipped |' in table
  assert 'peak 100.00 GiB' in table and 'limit 120.00 GiB' in table
  assert '| train dla34 batch 64 | 41.0 |' in table
  assert '- inference cornernet: RuntimeError: boom' in table and '989 TFLOP/s' in table


GIB = 2**30


@pytest.mark.parametrize('temp, out, alias, free, fits', [
    (10 * GIB, 2 * GIB, 2 * GIB, 11 * GIB, True),  # 10 GiB needed, 10.67 allowed
    (10 * GIB, 2 * GIB, 0, 11 * GIB, False),  # 12 needed
    (10 * GIB, 2 * GIB, 2 * GIB, 10 * GIB, False),  # 10 needed, 9.7 allowed (3 % margin)
    (10 * GIB, 0, 0, None, True),  # no memory_stats (CPU): no check
])
def test_check_plan(dc, temp, out, alias, free, fits):
  plan = {'xla_temp_bytes': temp, 'xla_output_bytes': out, 'xla_alias_bytes': alias}
  if fits:
    dc.check_plan(plan, free)
  else:
    with pytest.raises(dc.OutOfMemory, match='GiB free'):
      dc.check_plan(plan, free)


@pytest.mark.parametrize('limit, batch, tried, status', [
    (1, 1, [2, 1], 'ok'),
    (0, None, [2, 1], 'error'),
])
def test_run_train_keeps_the_trials_when_batches_do_not_fit(dc, monkeypatch, limit, batch,
                                                             tried, status):
  def trial(config, holder, *, batch, size, steps, warmup, peak):
    holder.setdefault('compiles', []).append({'batch': batch, 'compile_s': 1.0})
    if batch > limit:
      raise dc.OutOfMemory(f'batch {batch}')
    return {'batch': batch, 'images_per_s': 5.0}

  monkeypatch.setattr(dc, 'train_trial', trial)
  args = type('Args', (), {'tiny': True})()
  keep = {}
  row = dc.run_train('resnet18', args, dc.TINY, dc.Budget(100.0), 1, None, 1, keep)
  assert [t['batch'] for t in row['batch_search']] == tried and row.get('batch') == batch
  assert row.get('status', 'ok') == status  # _isolated marks the rows without one 'ok'
  assert [c['batch'] for c in row['compiles']] == tried
  assert keep == {}  # the fake kept no state: nothing for inference
  if status == 'error':
    assert row['error'] == 'no batch fits (nothing fits)'

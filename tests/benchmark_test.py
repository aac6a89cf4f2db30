"""The benchmark harness (experiments/benchmark.py) on tiny inputs, so that it cannot rot."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT, load_experiment

SMOKE = os.path.join(ROOT, 'configs', 'smoke.py')


@pytest.fixture(scope='module')
def bench():
  return load_experiment('benchmark', 'benchmark')


def test_model_mode_measures_everything(bench, tmp_path):
  out = tmp_path / 'model.json'
  bench.main(['model', '--config', SMOKE, '--size', '32', '--batch', '2', '--infer_batch', '1',
              '--steps', '1', '--warmup', '1', '--num_classes', '2', '--peak_n', '64',
              '--pipeline', '--pipeline_images', '2', '--targets_methods', 'a',
              '--out', str(out)])
  report = json.loads(out.read_text())
  assert len(report['environment']['loadavg']) == 3 and report['environment']['jax']
  (r,) = report['results']
  assert r['arch'] == 'resnet_tiny' and r['size'] == 32 and r['batch'] == 2
  for key in ('train_step_s_median', 'train_flops_per_image', 'infer_b1_s_median',
              'infer_b1_images_per_s', 'infer_flops_per_image_b1', 'peak_flops_per_s',
              'targets_alone_s_median', 'real_step_s_median',
              'pipeline_batch_s_median', 'train_peak_memory_bytes', 'peak_memory_bytes'):
    assert np.isfinite(r[key]) and r[key] > 0, key
  assert 'measured' in r['peak_source'] and 'RSS' in r['train_peak_memory_source']
  # Training (forward + backward + update) costs more than the forward pass + decode.
  assert r['train_flops_per_image'] > 2 * r['infer_flops_per_image_b1']
  np.testing.assert_allclose(r['train_mfu'], r['train_flops_per_image'] * 2
                             / r['train_step_s_median'] / r['peak_flops_per_s'], rtol=1e-6)
  np.testing.assert_allclose(r['targets_share_alone'],
                             r['targets_alone_s_median'] / r['train_step_s_median'], rtol=1e-6)


@pytest.mark.parametrize('n, k', [(32, 48), (16, 8)])
def test_cost_analysis_counts_a_multiply_add_as_two_flops(bench, n, k):
  """The MFU convention: a [n, k] x [k, n] matmul is 2 n^2 k FLOPs."""
  x = jax.ShapeDtypeStruct((n, k), jnp.float32)
  y = jax.ShapeDtypeStruct((k, n), jnp.float32)
  compiled = jax.jit(lambda a, b: a @ b).lower(x, y).compile()
  np.testing.assert_allclose(bench.cost_of(compiled)['flops'], 2 * n * n * k, rtol=0.05)


def test_flops_mode_compiles_abstract_models(bench, tmp_path):
  out = tmp_path / 'flops.json'
  bench.main(['flops', '--config', SMOKE, '--size', '32', '--num_classes', '2',
              '--arch', 'resnet_tiny:18', '--arch', 'no_such_arch:1', '--out', str(out)])
  ok, bad = json.loads(out.read_text())['results']
  assert ok['xla_gflops_forward'] > 0 and ok['params'] > 0 and 'error' not in ok
  assert 'official_gflops_forward' not in ok  # official figures are for 512 px only
  assert 'no_such_arch' in bad['error']


def test_input_mode_times_the_real_pipeline_and_restores_affinity(bench, tmp_path):
  before = os.sched_getaffinity(0)
  out = tmp_path / 'input.json'
  bench.main(['input', '--size', '64', '--images', '2', '--batch', '2', '--batches', '1',
              '--repeats', '2', '--cores', '1', '--out', str(out)])
  (r,) = json.loads(out.read_text())['results']
  assert r['images'] == 2 and len(r['images_per_s_rounds']) == 2
  assert r['images_per_s_per_core'] > 0 and 'kB mean' in r['source_images']
  assert os.sched_getaffinity(0) == before

r"""Benchmarks: train step, inference, memory, FLOPs / MFU, targets share, input pipeline.

  # Everything for one config (train images/s, inference latency / throughput incl. decode,
  # peak memory, FLOPs from XLA's cost analysis, MFU, targets share, optional real pipeline):
  python experiments/benchmark.py model --config configs/ctdet_dla34_coco.py --batch 8 \
      --size 512 [--arch dla --depth 34] [--dtype bfloat16] [--infer_batch 64] [--pipeline] \
      [--out experiments/results/x.json]
  # Forward FLOPs per image of full-size archs from cost analysis (abstract inputs, no run):
  python experiments/benchmark.py flops --size 512 [--arch resnet:18 --arch hourglass:104]
  # The device's achievable float32 matmul rate (the CPU "peak" for MFU):
  python experiments/benchmark.py peak
  # Older single-purpose modes (kept): train-step time only; input pipeline images/s per core.
  python experiments/benchmark.py train --config configs/ctdet_resnet18_coco.py \
      --batch 8 --size 128 --size 512 [--dtype float32] [--out experiments/results/x.json]
  python experiments/benchmark.py input --size 512 --images 64 [--cores 1]

Method, for every timing: the function is jitted and compiled first (compile time reported
apart), ``--warmup`` calls are run and discarded, then ``--steps`` calls are timed one by one
with ``jax.block_until_ready`` on the outputs before each clock read, and the median (with min /
max) is reported. Data for ``model`` / ``train`` is synthetic and already on the device (random
images and boxes of the configured shapes), so those numbers exclude the input pipeline;
``--pipeline`` adds the real ``tf.data`` iterator on generated COCO-sized JPEGs for comparison.
``input`` writes COCO-sized JPEGs (640x480, drawn shapes) as a COCO-format folder and times the
real training iterator (decode, affine crop, colour augmentation, normalisation, batching)
pinned to ``--cores`` CPU cores, median over ``--repeats`` rounds.

FLOPs come from ``compiled.cost_analysis()['flops']`` (XLA counts a multiply-add as 2 FLOPs).
MFU = FLOPs per step / step time / device peak; on GPUs the peak is the vendor's dense spec
(table ``GPU_PEAK_FLOPS``), on CPUs it is MEASURED: the fastest of 7 jitted 2048^3 float32
matmuls on the same machine (an achievable, not a theoretical, peak). Peak memory is the
device's ``memory_stats()['peak_bytes_in_use']`` where the backend has it (GPU, TPU) and
otherwise the process's peak resident set size (``ru_maxrss``, whole process, monotone over the
run); XLA's own plan (``compiled.memory_analysis()``: arguments, outputs, temporaries) is
reported next to it. ``os.getloadavg()`` is recorded before and after each measurement: the CPU
machine is shared, so numbers taken under load are slower than the machine can do.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets, by a substring of
# ``device_kind``; first match wins. 'float32' is the non-tensor-core FP32 rate (XLA may use
# TF32 tensor cores for float32 convolutions; 'tf32' is listed for reference).
GPU_PEAK_FLOPS = (
    ('H200', {'bfloat16': 989e12, 'float32': 67e12, 'tf32': 494e12}),
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 51e12, 'tf32': 378e12}),
    ('H100 NVL', {'bfloat16': 835e12, 'float32': 60e12, 'tf32': 418e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 67e12, 'tf32': 494e12}),  # SXM
    ('A100', {'bfloat16': 312e12, 'float32': 19.5e12, 'tf32': 156e12}),
)

# Forward FLOPs per image at 512x512 (CornerNet: 511x511) of the official models, as given in
# issue 6; (arch, depth) -> GFLOPs.
OFFICIAL_GFLOPS = {('resnet', 18): 45.4, ('resdcn', 18): 26.6, ('dla', 34): 66.2,
                   ('hourglass', 104): 585.0, ('cornernet', 104): 686.0}
# The full-size archs and the config each is measured with (head_conv, heads, ... as official).
FULL_ARCHS = {'resnet:18': 'ctdet_resnet18_coco.py', 'resdcn:18': 'ctdet_resdcn18_coco.py',
              'dla:34': 'ctdet_dla34_coco.py', 'hourglass:104': 'ctdet_hg104_coco.py',
              'cornernet:104': 'cornernet_hg104_coco.py', 'resnet:101': 'ctdet_resnet101_coco.py',
              'resdcn:101': 'ctdet_resdcn101_coco.py'}


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_batch(rng, batch: int, size: int, max_objs: int, num_classes: int):
  """Random normalised images and boxes: the train step's input dict (tasks/ctdet.py)."""
  import numpy as np
  xy = rng.uniform(0, size * 0.8, (batch, max_objs, 2))
  wh = rng.uniform(size * 0.03, size * 0.4, (batch, max_objs, 2))
  return {
      'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      'boxes': np.concatenate([xy, xy + wh], -1).astype(np.float32),
      'labels': rng.integers(0, num_classes, (batch, max_objs)).astype(np.int32),
      'mask': (rng.uniform(size=(batch, max_objs)) < 0.3).astype(np.float32),
  }


def time_fn(fn, n: int, warmup: int) -> list[float]:
  """Seconds per call of ``fn`` (which must block until the device is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def time_stats(prefix: str, times: list[float]) -> dict:
  return {f'{prefix}_s_median': statistics.median(times), f'{prefix}_s_min': min(times),
          f'{prefix}_s_max': max(times), f'{prefix}_timed': len(times)}


def _loadavg() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else []


def cost_of(compiled) -> dict:
  """FLOPs and bytes accessed of a compiled executable (XLA cost analysis; nan if absent)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  cost = cost or {}
  return {'flops': float(cost.get('flops', float('nan'))),
          'bytes_accessed': float(cost.get('bytes accessed', float('nan')))}


def memory_of(compiled=None) -> dict:
  """Peak memory: the device's counter where it has one, else the process's peak RSS."""
  import jax
  out = {}
  stats = None
  with contextlib.suppress(Exception):
    stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    out['peak_memory_bytes'] = int(stats['peak_bytes_in_use'])
    out['peak_memory_source'] = 'device memory_stats()["peak_bytes_in_use"]'
  else:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out['peak_memory_bytes'] = int(rss) * 1024
    out['peak_memory_source'] = 'process peak RSS (ru_maxrss; no device memory_stats)'
  if compiled is not None:
    with contextlib.suppress(Exception):
      ma = compiled.memory_analysis()
      out['xla_argument_bytes'] = int(ma.argument_size_in_bytes)
      out['xla_output_bytes'] = int(ma.output_size_in_bytes)
      out['xla_temp_bytes'] = int(ma.temp_size_in_bytes)
      out['xla_alias_bytes'] = int(ma.alias_size_in_bytes)
  return out


def measure_matmul_peak(dtype: str = 'float32', n: int = 2048, steps: int = 7) -> float:
  """Best FLOP/s of ``steps`` jitted ``n^3`` matmuls (an achievable device peak).

  The fastest call, not the median: on a shared machine the median is depressed by other
  processes, and a peak that is too low gives MFU above 1.
  """
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  times = time_fn(lambda: jax.block_until_ready(f(a, b)), steps, 2)
  return 2 * n ** 3 / min(times)


def device_peak(dtype: str, n: int = 2048) -> dict:
  """The peak FLOP/s MFU is measured against, and where it comes from."""
  import jax
  dev = jax.local_devices()[0]
  kind = getattr(dev, 'device_kind', str(dev))
  if dev.platform == 'gpu':
    for name, peaks in GPU_PEAK_FLOPS:
      if name in kind:
        return {'peak_flops_per_s': peaks[dtype], 'peak_source': f'spec sheet {name} {dtype}',
                'device_kind': kind}
    return {'peak_flops_per_s': float('nan'), 'peak_source': f'no spec for {kind!r}',
            'device_kind': kind}
  rate = measure_matmul_peak('float32', n=n)
  return {'peak_flops_per_s': rate, 'device_kind': kind,
          'peak_source': f'measured: fastest of 7 jitted {n}^3 float32 matmuls, this machine'}


def override(config, *, arch: str = '', depth: int = 0, dtype: str = '', num_classes: int = 0,
             size: int = 0):
  """Applies command-line overrides to a config; returns it resolved (heads for its classes)."""
  from centernet_jax import tasks
  if arch:
    config.model.arch = arch
  if depth:
    config.model.depth = depth
  if dtype:
    config.model.dtype = dtype
  if num_classes:
    config.model.num_classes = num_classes
  if size:
    config.data.input_size = size
  if config.model.num_classes > 0:
    config = tasks.resolve_config(config, config.model.num_classes)
  return config


def train_setup(config, *, batch: int, size: int):
  """Model, jitted (donating) train step, initial state and a synthetic device batch."""
  import jax
  import numpy as np

  from centernet_jax import optim, sharding, tasks
  from centernet_jax import state as state_lib
  from centernet_jax.models import build_model

  mesh = sharding.make_mesh()
  model = build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=batch, steps_per_epoch=1000,
                                      total_steps=100000)
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  state = jax.jit(functools.partial(state_lib.init_state, model, tx,
                                    image_shape=(1, size, size, 3)), out_shardings=rep)(
                                        jax.random.PRNGKey(0))
  inner = tasks.get(config.task).make_train_step(config, model, tx, schedule)
  step = jax.jit(inner, donate_argnums=(0,), in_shardings=(rep, dat), out_shardings=(rep, rep))
  data = jax.device_put(synthetic_batch(np.random.default_rng(0), batch, size,
                                        config.data.max_objs, config.model.num_classes), dat)
  return {'model': model, 'tx': tx, 'schedule': schedule, 'inner': inner, 'step': step,
          'state': state, 'data': data, 'rep': rep, 'dat': dat}


def time_train(compiled, state, data, steps: int, warmup: int):
  """Times ``compiled(state, data)`` with the state threaded through; returns (times, state)."""
  import jax
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], data)
    jax.block_until_ready(metrics)

  return time_fn(run, steps, warmup), holder[0]


def bench_train(config, *, batch: int, size: int, steps: int, warmup: int) -> dict:
  """Train-step time on synthetic device data (the original ``train`` mode)."""
  load_before = _loadavg()
  s = train_setup(config, batch=batch, size=size)
  t0 = time.perf_counter()
  compiled = s['step'].lower(s['state'], s['data']).compile()
  compile_s = time.perf_counter() - t0
  flops = cost_of(compiled)['flops']
  times, _ = time_train(compiled, s['state'], s['data'], steps, warmup)
  med = statistics.median(times)
  return {'kind': 'train_step', 'arch': config.model.arch, 'depth': config.model.depth,
          'dtype': config.model.dtype, 'batch': batch, 'size': size,
          'step_s_median': med, 'step_s_min': min(times), 'step_s_max': max(times),
          'images_per_s': batch / med, 'steps_timed': steps, 'compile_s': compile_s,
          'xla_flops_per_step': flops, 'achieved_gflops_per_s': flops / med / 1e9,
          'loadavg_before': load_before, 'loadavg_after': _loadavg()}


@contextlib.contextmanager
def _given_targets(task, name: str, tgt):
  """While tracing: ``task.<name>`` (its targets) returns ``tgt`` (precomputed), not drawing."""
  saved = getattr(task, name)
  setattr(task, name, lambda *a, **k: tgt)
  try:
    yield
  finally:
    setattr(task, name, saved)


def bench_targets_share(config, s: dict, step_s: float, *, batch: int, size: int, steps: int,
                        warmup: int, methods: str = 'ab') -> dict:
  """Share of the train step spent rendering targets on device, two ways.

  (a) ``targets_alone``: the jitted target function by itself on the same batch, divided by
  the full step time. (b) ``step_without_targets``: the same jitted step, traced while
  ``ctdet.ctdet_targets`` returns targets computed beforehand and passed in as inputs; the
  share is (full step - this step) / full step. (b) includes any fusion or overlap XLA finds,
  but on a shared CPU the difference of two noisy medians can be negative; (a) is an upper
  bound of the serial cost.
  """
  import jax

  from centernet_jax import models, tasks

  task = tasks.get(config.task)
  down, classes = config.model.down_ratio, config.model.num_classes
  out_hw = models.output_hw(s['model'], size, size)
  if config.task == 'ctdet':  # the calls of the task's make_train_step
    name = 'ctdet_targets'

    def render(batch_):
      return task.ctdet_targets(batch_['boxes'] / down, batch_['labels'], batch_['mask'],
                                num_classes=classes, output_hw=out_hw,
                                min_overlap=config.loss.min_overlap)
  else:
    name = 'cornernet_targets'

    def render(batch_):
      return task.cornernet_targets(batch_['boxes'], batch_['labels'], batch_['mask'],
                                    num_classes=classes, output_hw=out_hw,
                                    input_hw=(size, size), min_overlap=config.loss.min_overlap)

  render_c = jax.jit(render).lower(s['data']).compile()
  t_alone = time_fn(lambda: jax.block_until_ready(render_c(s['data'])), steps, warmup)
  a = statistics.median(t_alone)
  out = {'targets_alone_s_median': a, 'targets_share_alone': a / step_s}
  if 'b' not in methods:
    return out
  tgt = jax.block_until_ready(render_c(s['data']))

  def step_given(state, batch_, tgt_):
    with _given_targets(task, name, tgt_):
      return s['inner'](state, batch_)

  jitted = jax.jit(step_given, donate_argnums=(0,))
  state = s['state']
  compiled = jitted.lower(state, s['data'], tgt).compile()
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], s['data'], tgt)
    jax.block_until_ready(metrics)

  t_given = time_fn(run, steps, warmup)
  s['state'] = holder[0]
  b = statistics.median(t_given)
  out.update(step_given_targets_s_median=b, targets_share_step_diff=(step_s - b) / step_s)
  return out


def _pipeline_folder(tmp: str, n_images: int, size: int, config):
  from centernet_jax.data import pipeline
  from centernet_jax.data.config import data_config
  paths = make_coco_folder(tmp, n_images)
  cfg = data_config()
  cfg.source = 'coco_json'
  cfg.train_annotations = cfg.val_annotations = paths['ann']
  cfg.train_images = cfg.val_images = paths['images']
  cfg.input_size = size
  cfg.max_objs = config.data.max_objs
  return cfg, pipeline.get_dataset_info(cfg)


def bench_real_pipeline(config, s: dict, compiled, synthetic_step_s: float, *, batch: int,
                        size: int, steps: int, warmup: int, n_images: int = 32) -> dict:
  """The train loop fed by the real tf.data iterator against synthetic on-device data.

  ``pipeline_batch_s``: one ``next()`` of the iterator alone. ``real_step_s``: ``next()``, then
  ``device_put``, then the step, synchronised, per step (the iterator prefetches in the
  background meanwhile). The pipeline is the bottleneck if ``real_step_s`` clearly exceeds the
  synthetic step (``pipeline_slowdown`` > 1.1). On a CPU-only machine the pipeline threads and
  XLA share the same cores, so this overstates what a GPU host would see.
  """
  import jax

  from centernet_jax.data import pipeline

  with tempfile.TemporaryDirectory() as tmp:
    cfg, info = _pipeline_folder(tmp, n_images, size, config)
    it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=batch, seed=0)
    next(it)
    t_pipe = time_fn(lambda: next(it), steps, warmup)
    holder = [s['state']]

    def run():
      host = next(it)  # the step's keys only (the iterator adds image_id, skipped)
      b = jax.device_put({k: host[k] for k in s['data']}, s['dat'])
      holder[0], metrics = compiled(holder[0], b)
      jax.block_until_ready(metrics)

    t_real = time_fn(run, steps, warmup)
    s['state'] = holder[0]
  real = statistics.median(t_real)
  return {'pipeline_batch_s_median': statistics.median(t_pipe),
          'pipeline_images_per_s': batch / statistics.median(t_pipe),
          'real_step_s_median': real, 'real_images_per_s': batch / real,
          'pipeline_slowdown': real / synthetic_step_s,
          'pipeline_is_bottleneck': bool(real > 1.1 * synthetic_step_s)}


def bench_inference(config, variables, *, size: int, batch: int, steps: int,
                    warmup: int) -> dict:
  """Latency / throughput of the jitted predict function (network + decode) at ``batch``."""
  import jax
  import jax.numpy as jnp

  from centernet_jax import tasks
  from centernet_jax.models import build_model

  predict = jax.jit(tasks.get(config.task).make_predict_fn(
      config, build_model(config.model), merge_later=tasks.multi_scale(config)))
  images = jax.random.normal(jax.random.PRNGKey(batch), (batch, size, size, 3), jnp.float32)
  t0 = time.perf_counter()
  compiled = predict.lower(variables, images).compile()
  compile_s = time.perf_counter() - t0
  times = time_fn(lambda: jax.block_until_ready(compiled(variables, images)), steps, warmup)
  med = statistics.median(times)
  cost = cost_of(compiled)
  return {f'infer_b{batch}_s_median': med, f'infer_b{batch}_s_min': min(times),
          f'infer_b{batch}_s_max': max(times), f'infer_b{batch}_images_per_s': batch / med,
          f'infer_b{batch}_compile_s': compile_s,
          f'infer_flops_per_image_b{batch}': cost['flops'] / batch}


def bench_model(config, *, batch: int, size: int, steps: int, warmup: int, infer_batch: int,
                infer_steps: int, pipeline: bool, targets_share: str = 'ab',
                peak_n: int = 2048, pipeline_images: int = 32, profile_dir: str = '') -> dict:
  """All measurements of one config: see the module docstring."""
  import jax

  load_before = _loadavg()
  peak = device_peak(config.model.dtype, n=peak_n)
  out = {'kind': 'model', 'arch': config.model.arch, 'depth': config.model.depth,
         'dtype': config.model.dtype, 'batch': batch, 'size': size,
         'num_classes': config.model.num_classes, 'upsample': config.model.upsample}
  out.update(peak)
  s = train_setup(config, batch=batch, size=size)
  out['params'] = int(sum(x.size for x in jax.tree.leaves(s['state'].params)))
  t0 = time.perf_counter()
  compiled = s['step'].lower(s['state'], s['data']).compile()
  out['train_compile_s'] = time.perf_counter() - t0
  cost = cost_of(compiled)
  times, s['state'] = time_train(compiled, s['state'], s['data'], steps, warmup)
  step_s = statistics.median(times)
  out.update(time_stats('train_step', times))
  out['train_images_per_s'] = batch / step_s
  out['train_flops_per_image'] = cost['flops'] / batch
  out['train_achieved_flops_per_s'] = cost['flops'] / step_s
  out['train_mfu'] = cost['flops'] / step_s / peak['peak_flops_per_s']
  if profile_dir:  # a jax.profiler trace of 3 train steps (TensorBoard / Perfetto)
    with jax.profiler.trace(profile_dir):
      _, s['state'] = time_train(compiled, s['state'], s['data'], 3, 0)
    out['profile_dir'] = profile_dir
  out.update({f'train_{k}': v for k, v in memory_of(compiled).items()})
  if targets_share:
    out.update(bench_targets_share(config, s, step_s, batch=batch, size=size, steps=steps,
                                   warmup=warmup, methods=targets_share))
  if pipeline:
    out.update(bench_real_pipeline(config, s, compiled, step_s, batch=batch, size=size,
                                   steps=steps, warmup=warmup, n_images=pipeline_images))
  variables = {'params': s['state'].params, 'batch_stats': s['state'].batch_stats}
  del s, compiled
  for b in sorted({1, infer_batch}):
    r = bench_inference(config, variables, size=size, batch=b, steps=infer_steps,
                        warmup=warmup)
    out.update(r)
    med = r[f'infer_b{b}_s_median']
    out[f'infer_b{b}_mfu'] = (r[f'infer_flops_per_image_b{b}'] * b / med
                              / peak['peak_flops_per_s'])
  out['peak_memory_bytes'] = memory_of()['peak_memory_bytes']
  out['loadavg_before'], out['loadavg_after'] = load_before, _loadavg()
  return out


def bench_flops(specs: list[str], *, size: int, num_classes: int, config_path: str,
                dtype: str) -> list[dict]:
  """Forward FLOPs per image of each ``arch:depth`` at ``size`` (CornerNet: ``size - 1``).

  Each full-size arch of ``FULL_ARCHS`` is built from its own config (official head widths);
  others from ``config_path`` with the arch and depth overridden. Abstract inputs only:
  ``jax.eval_shape`` of ``init`` for the variables, then
  ``jax.jit(apply).lower(...).compile().cost_analysis()``; nothing is run.
  """
  import jax
  import jax.numpy as jnp

  from centernet_jax.models import build_model

  rows = []
  for spec in specs:
    arch, depth = spec.split(':')
    path = (os.path.join(ROOT, 'configs', FULL_ARCHS[spec]) if spec in FULL_ARCHS
            else config_path)
    config = override(load_config(path), arch=arch, depth=int(depth), dtype=dtype,
                      num_classes=num_classes)
    side = size - 1 if config.task == 'cornernet' else size
    row = {'kind': 'flops', 'arch': arch, 'depth': int(depth), 'size': side,
           'config': os.path.relpath(path, ROOT), 'head_conv': config.model.head_conv,
           'dtype': config.model.dtype, 'upsample': config.model.upsample}
    try:
      model = build_model(config.model)
      img = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
      variables = jax.eval_shape(functools.partial(model.init, train=False),
                                 jax.random.PRNGKey(0), img)
      t0 = time.perf_counter()
      compiled = jax.jit(functools.partial(model.apply, train=False)).lower(
          variables, img).compile()
      row['compile_s'] = time.perf_counter() - t0
      row['params'] = int(sum(x.size for x in jax.tree.leaves(variables['params'])))
      row['xla_gflops_forward'] = cost_of(compiled)['flops'] / 1e9
      official = OFFICIAL_GFLOPS.get((arch, int(depth)))
      if official and size == 512:  # the official figures are at 512 (CornerNet 511)
        row['official_gflops_forward'] = official
        row['ratio_xla_to_official'] = row['xla_gflops_forward'] / official
    except Exception as e:  # noqa: BLE001 - one arch failing must not hide the others
      row['error'] = f'{type(e).__name__}: {e}'[:300]
    rows.append(row)
    print(_line(row), flush=True)
  return rows


def make_coco_folder(root: str, n: int, seed: int = 0, noise: float = 12.0) -> dict:
  """``n`` 640x480 / 480x640 JPEGs (q90) with drawn boxes and a matching instances json.

  Smooth colour fields with filled rectangles, plus gaussian pixel noise of std ``noise`` so
  the files carry about as many bytes (detail) as COCO photos (~150 kB at 640x480), which
  sets the JPEG decode cost.
  """
  import numpy as np
  from PIL import Image, ImageDraw

  rng = np.random.default_rng(seed)
  img_dir = os.path.join(root, 'images')
  os.makedirs(img_dir, exist_ok=True)
  images, anns = [], []
  for i in range(n):
    w, h = (640, 480) if i % 3 else (480, 640)
    im = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8)).resize((w, h))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 8))):
      x0, y0 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
      bw, bh = rng.uniform(20, w - x0), rng.uniform(20, h - y0)
      colour = tuple(int(v) for v in rng.integers(0, 255, 3))
      draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=colour)
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': 1 + len(anns) % 3,
                   'bbox': [x0, y0, bw, bh], 'area': bw * bh, 'iscrowd': 0})
    if noise > 0:
      arr = np.asarray(im, np.float32) + rng.normal(0, noise, (h, w, 3))
      im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    name = f'{i:06d}.jpg'
    im.save(os.path.join(img_dir, name), quality=90)
    images.append({'id': i + 1, 'file_name': name, 'width': w, 'height': h})
  ann = os.path.join(root, 'instances.json')
  with open(ann, 'w') as f:
    json.dump({'images': images, 'annotations': anns,
               'categories': [{'id': c, 'name': f'c{c}'} for c in (1, 2, 3)]}, f)
  kb = sum(os.path.getsize(os.path.join(img_dir, r['file_name'])) for r in images) / n / 1e3
  return {'ann': ann, 'images': img_dir, 'mean_kb': kb}


def bench_input(*, size: int, n_images: int, batches: int, batch: int, cores: int,
                repeats: int = 3, noise: float = 12.0, transforms_file: str = '') -> dict:
  """Images/s of the real training iterator pinned to ``cores`` cores (median of rounds).

  ``transforms_file``: run the pipeline with another version of ``data/transforms.py`` (e.g.
  an older commit's, from ``git show REV:centernet_jax/data/transforms.py > old.py``) for a
  before / after comparison on the same machine and images.
  """
  from centernet_jax.data import import_tf, pipeline
  from centernet_jax.data.config import data_config

  tf = import_tf()
  with contextlib.suppress(RuntimeError):  # fails once tf is initialised (tests); pinning holds
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)
  saved = pipeline.transforms
  if transforms_file:
    spec = importlib.util.spec_from_file_location('transforms_under_test', transforms_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipeline.transforms = module
  load_before = _loadavg()
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    stack.callback(setattr, pipeline, 'transforms', saved)
    if hasattr(os, 'sched_setaffinity'):  # pinned for the measurement, restored after it
      stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
      os.sched_setaffinity(0, set(range(cores)))
    paths = make_coco_folder(tmp, n_images, noise=noise)
    cfg = data_config()
    cfg.source = 'coco_json'
    cfg.train_annotations = cfg.val_annotations = paths['ann']
    cfg.train_images = cfg.val_images = paths['images']
    cfg.input_size = size
    info = pipeline.get_dataset_info(cfg)
    it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=batch, seed=0)
    next(it)  # warm-up: graph building, first files
    rates = []
    for _ in range(repeats):
      t = time.perf_counter()
      for _ in range(batches):
        next(it)
      rates.append(batches * batch / (time.perf_counter() - t))
  rate = statistics.median(rates)
  return {'kind': 'input_pipeline', 'size': size, 'cores': cores, 'batch': batch,
          'images': batches * batch, 'repeats': repeats, 'images_per_s': rate,
          'images_per_s_per_core': rate / cores, 'images_per_s_rounds': rates,
          'transforms': transforms_file or 'centernet_jax/data/transforms.py',
          'source_images': f'640x480 / 480x640 JPEG q90, noise std {noise}, '
                           f'{paths["mean_kb"]:.0f} kB mean',
          'loadavg_before': load_before, 'loadavg_after': _loadavg()}


def environment() -> dict:
  """Date, machine, software versions (the libraries imported so far)."""
  env = {'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
         'machine': platform.machine(), 'cpus': os.cpu_count(),
         'python': platform.python_version(), 'loadavg': _loadavg(), 'argv': sys.argv[1:]}
  with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
    names = [ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')]
    env['cpu_model'] = names[0] if names else ''
  for mod in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tensorflow'):
    if mod in sys.modules or mod in ('jax', 'jaxlib', 'flax', 'numpy'):
      with contextlib.suppress(Exception):
        env[mod] = importlib.import_module(mod).__version__
  with contextlib.suppress(Exception):
    import jax
    env['devices'] = [f'{d.platform}:{getattr(d, "device_kind", d)}' for d in jax.devices()]
  return env


def _fmt(v) -> str:
  if isinstance(v, float):
    return f'{v:.4g}'
  if isinstance(v, list):
    return '[' + ', '.join(_fmt(x) for x in v) + ']'
  return str(v)


def _line(row: dict) -> str:
  return ' | '.join(f'{k}={_fmt(v)}' for k, v in row.items())


SUMMARY = (('arch', 'arch'), ('depth', 'depth'), ('dtype', 'dtype'), ('size', 'px'),
           ('batch', 'batch'), ('train_step_s_median', 'step s'),
           ('train_images_per_s', 'train img/s'), ('train_flops_per_image', 'train FLOP/img'),
           ('train_mfu', 'train MFU'), ('infer_b1_s_median', 'infer b1 s'),
           ('infer_flops_per_image_b1', 'infer FLOP/img'), ('targets_share_alone', 'tgt share a'),
           ('targets_share_step_diff', 'tgt share b'), ('pipeline_slowdown', 'real/synth'),
           ('train_peak_memory_bytes', 'peak mem B'))


def print_table(rows: list[dict]) -> None:
  """A markdown table of the headline numbers of ``model`` rows (all keys go to the JSON)."""
  cols = [(k, h) for k, h in SUMMARY if any(k in r for r in rows)]
  extra = sorted({k for r in rows for k in r if k.startswith('infer_b') and
                  k.endswith('images_per_s') and k != 'infer_b1_images_per_s'})
  cols += [(k, k.replace('infer_', '').replace('_images_per_s', ' img/s')) for k in extra]
  print('| ' + ' | '.join(h for _, h in cols) + ' |')
  print('|' + '---|' * len(cols))
  for r in rows:
    print('| ' + ' | '.join(_fmt(r.get(k, '')) for k, _ in cols) + ' |')


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='mode', required=True)
  mo = sub.add_parser('model', help='train / inference / memory / FLOPs / MFU of one config')
  tr = sub.add_parser('train', help='train-step time on synthetic device data')
  fl = sub.add_parser('flops', help='forward FLOPs per image from cost analysis (no run)')
  for p in (mo, tr, fl):
    p.add_argument('--config', default=os.path.join(ROOT, 'configs', 'ctdet_resnet18_coco.py'))
    p.add_argument('--dtype', default='float32')
    p.add_argument('--num_classes', type=int, default=80)
  for p in (mo, tr):
    p.add_argument('--arch', default='', help='override config.model.arch')
    p.add_argument('--depth', type=int, default=0, help='override config.model.depth')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
  mo.add_argument('--size', type=int, default=512)
  mo.add_argument('--infer_batch', type=int, default=64)
  mo.add_argument('--infer_steps', type=int, default=0, help='timed inference calls '
                  '(default: --steps)')
  mo.add_argument('--pipeline', action='store_true', help='also run the real tf.data pipeline')
  mo.add_argument('--no_targets_share', action='store_true')
  mo.add_argument('--targets_methods', default='ab', choices=['a', 'ab'],
                  help="targets share: 'a' the targets alone, 'b' the step without them")
  mo.add_argument('--pipeline_images', type=int, default=32, help='JPEGs for --pipeline')
  mo.add_argument('--profile', default='', help='write a jax.profiler trace of 3 steps here')
  mo.add_argument('--peak_n', type=int, default=2048, help='CPU peak: n of the n^3 matmul')
  tr.add_argument('--size', type=int, action='append')
  fl.add_argument('--size', type=int, default=512)
  fl.add_argument('--arch', action='append', help=f'arch:depth (default: {list(FULL_ARCHS)})')
  pk = sub.add_parser('peak', help='achievable matmul FLOP/s of the device')
  pk.add_argument('--dtype', default='float32')
  pk.add_argument('--n', type=int, default=2048)
  inp = sub.add_parser('input', help='input pipeline images/s on COCO-sized JPEGs')
  inp.add_argument('--size', type=int, default=512)
  inp.add_argument('--images', type=int, default=64)
  inp.add_argument('--batch', type=int, default=8)
  inp.add_argument('--batches', type=int, default=24)
  inp.add_argument('--cores', type=int, default=1)
  inp.add_argument('--repeats', type=int, default=3)
  inp.add_argument('--noise', type=float, default=12.0, help='pixel noise std of the JPEGs')
  inp.add_argument('--transforms_file', default='', help='another transforms.py to time')
  for p in (mo, tr, fl, pk, inp):
    p.add_argument('--out', default='')
  args = parser.parse_args(argv)

  env_load = _loadavg()
  results = []
  if args.mode in ('model', 'train'):
    config = override(load_config(args.config), arch=args.arch, depth=args.depth,
                      dtype=args.dtype, num_classes=args.num_classes)
    if args.mode == 'model':
      results.append(bench_model(
          config, batch=args.batch, size=args.size, steps=args.steps, warmup=args.warmup,
          infer_batch=args.infer_batch, infer_steps=args.infer_steps or args.steps,
          pipeline=args.pipeline,
          targets_share='' if args.no_targets_share else args.targets_methods,
          peak_n=args.peak_n, pipeline_images=args.pipeline_images,
          profile_dir=args.profile))
    else:
      for size in args.size or [512]:
        results.append(bench_train(config, batch=args.batch, size=size, steps=args.steps,
                                   warmup=args.warmup))
  elif args.mode == 'flops':
    results.extend(bench_flops(args.arch or list(FULL_ARCHS), size=args.size,
                               num_classes=args.num_classes, config_path=args.config,
                               dtype=args.dtype))
  elif args.mode == 'peak':
    rate = measure_matmul_peak(args.dtype, n=args.n)
    results.append({'kind': 'matmul_peak', 'dtype': args.dtype, 'n': args.n,
                    'flops_per_s': rate, 'loadavg_after': _loadavg()})
  else:
    results.append(bench_input(size=args.size, n_images=args.images, batches=args.batches,
                               batch=args.batch, cores=args.cores, repeats=args.repeats,
                               noise=args.noise, transforms_file=args.transforms_file))
  env = environment()
  env['loadavg_at_start'] = env_load
  report = {'environment': env, 'results': results}
  if args.mode != 'flops':
    for r in results:
      print(_line(r))
  if args.mode == 'model':
    print_table(results)
  print(f'loadavg at start {env_load}, at end {env["loadavg"]}')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == '__main__':
  main()

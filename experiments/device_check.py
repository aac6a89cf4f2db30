r"""One command for an accelerator host: every GPU / TPU number of issue 15 in one short run.

  python experiments/device_check.py [--tiny] [--out experiments/results] [--budget_s 420] \
      [--models resnet18,dla34,hourglass104,cornernet] [--mem_fraction 0.9]
  experiments/device_check [...]           # the same, through the shell wrapper

On one GPU or TPU host, in under 8 minutes, with nothing but jax, flax, optax, orbax-checkpoint,
numpy and this package's core modules (tensorflow, tensorflow_datasets and pycocotools are
blocked from being imported: all data is synthetic and made on the device), it measures:

* train images/s in bfloat16 at 512 px (CornerNet 511) of ResNet-18, DLA-34, Hourglass-104 and
  CornerNet at the largest batch that fits: doubling from a start batch while it fits, then one
  bisection step back towards the first batch that did not (out of memory at run time, or an
  XLA buffer plan larger than the free device memory), under a time cap per model;
* MFU: XLA's FLOPs per step (``compiled.cost_analysis()``) / median step time / (peak bf16
  FLOP/s of the device kind x devices); ``PEAK_BF16_FLOPS`` lists H100 / H200 / A100 and TPU v4 /
  v5e / v5p / v6e; another kind (or a CPU) gets no MFU and a note saying why;
* batch-1 latency and batch-64 throughput of network + decode (the task's predict function,
  single scale, no flip) of the same four models;
* the DCNv2 micro-benchmark (``DeformConv`` against a plain 3x3 conv of the same shape, forward
  + backward, interleaved; experiments/deform_conv_bench.py's method);
* peak device memory (``memory_stats()``; process peak RSS where the backend has none) and XLA's
  buffer plan of every measured executable; compile times of everything compiled.

Each measurement is isolated (its failure is recorded and the others go on) and the run has a
global time budget shared out by section (train, inference, DCN) and item; what would not fit is
skipped and named (the default 420 s leaves a minute of the 8 for start-up and overruns). It
writes ``<out>/device_check_<device>_<UTC date-time>.json`` and a markdown table beside it
(``.md``, also printed); experiments/BENCHMARKS.md gets the table by hand. On a GPU
``XLA_PYTHON_CLIENT_MEM_FRACTION`` defaults to ``--mem_fraction`` (0.9, not jax's 0.75) so the
largest batch is not set by the allocator's reservation; the value used is in the JSON.

``--tiny`` runs the same code at tiny sizes (64 px, the ``*_tiny`` archs, batch 2, one timed step,
inference at batch 2 only, one 16 x 16 DCN shape, XLA:CPU code generation unoptimised since only
the paths matter) on a CPU: about a minute with a cold compilation cache (under load, more);
tests/device_check_test.py runs it so the script cannot rot. Timings: compiled first (compile
time reported apart), warm-up calls discarded, each timed call synchronised with
``jax.block_until_ready``; medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.abc
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _load(name: str):
  """experiments/<name>.py as a module (registered: its dataclasses need sys.modules)."""
  key = f'_device_check_{name}'
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, os.path.join(HERE, f'{name}.py'))
    sys.modules[key] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[key])
  return sys.modules[key]


bench = _load('benchmark')  # stdlib-only at import; puts ROOT on sys.path

FORBIDDEN = ('tensorflow', 'tensorflow_datasets', 'pycocotools')
# Dense bf16 peak FLOP/s per device (one jax device: a GPU, a TPU v4 / v5p megacore chip, a v5e /
# v6e chip) from the vendors' spec sheets, by a substring of ``device_kind``; first match wins.
PEAK_BF16_FLOPS = tuple((name, peaks['bfloat16']) for name, peaks in bench.GPU_PEAK_FLOPS) + (
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12), ('TPU v5e', 197e12),  # v5e reports 'TPU v5 lite'
    ('TPU v5p', 459e12), ('TPU v5', 459e12),  # v5p reports 'TPU v5'
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12),  # Trillium reports 'TPU v6 lite'
)
# name -> (config file, full arch, tiny arch, first batch tried per 80 GB free, full run; a guess
# from the official per-GPU batches scaled to bf16: the search doubles or halves from it).
MODELS = {
    'resnet18': ('ctdet_resnet18_coco.py', 'resnet', 'resnet_tiny', 128),
    'dla34': ('ctdet_dla34_coco.py', 'dla', 'dla_tiny', 64),
    'hourglass104': ('ctdet_hg104_coco.py', 'hourglass', 'hourglass_tiny', 32),
    'cornernet': ('cornernet_hg104_coco.py', 'cornernet', 'cornernet_tiny', 16),
}
FULL = {'size': 512, 'batch_cap': 1024, 'steps': 5, 'warmup': 2, 'infer_batches': (1, 64),
        'infer_steps': 10, 'dcn_shapes': ((1, 128, 128, 64, 64), (2, 32, 32, 64, 64),
                                          (32, 128, 128, 64, 64)),
        'dcn_dtypes': ('bfloat16', 'float32'), 'dcn_repeats': 10}
TINY = {'size': 64, 'batch_cap': 2, 'steps': 1, 'warmup': 1, 'infer_batches': (2,),
        'infer_steps': 1, 'dcn_shapes': ((1, 16, 16, 8, 8),), 'dcn_dtypes': ('float32',),
        'dcn_repeats': 1}
TINY_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
# End of each section as a fraction of the budget; unused time rolls over to what follows.
SECTION_END = {'train': 0.62, 'inference': 0.88, 'dcn': 1.0}


class _Forbid(importlib.abc.MetaPathFinder):
  """Refuses the imports this script must run without (proves the import graph)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split('.')[0] in FORBIDDEN:
      raise ModuleNotFoundError(f'device_check runs without {fullname} (synthetic device data)',
                                name=fullname)
    return None


class OutOfMemory(RuntimeError):
  """A batch that does not fit: XLA's buffer plan exceeds the free device memory."""


def is_oom(error: BaseException) -> bool:
  """Whether ``error`` says the device ran out of memory (XLA, jax or our plan check)."""
  text = f'{type(error).__name__}: {error}'
  return isinstance(error, OutOfMemory) or bool(
      re.search(r'RESOURCE_EXHAUSTED|[Oo]ut of memory|\bOOM\b|ran out of memory', text))


class Budget:
  """A global time budget shared out by section and by item (unused time rolls over)."""

  def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
    self.clock, self.total_s = clock, total_s
    self.start = clock()

  def left(self) -> float:
    return self.start + self.total_s - self.clock()

  def item_deadline(self, section: str, items_left: int) -> float:
    """Deadline of the next of ``items_left`` items: an equal share of the section's rest."""
    end = self.start + SECTION_END[section] * self.total_s
    return self.clock() + max(0.0, end - self.clock()) / max(1, items_left)


def search_batch(try_batch: Callable[[int], dict], *, start: int, cap: int, multiple: int,
                 deadline: float, clock: Callable[[], float] = time.monotonic,
                 refine: int = 1) -> dict:
  """The largest batch that fits: double from ``start`` while it fits, halve while it does not.

  After the first batch that does not fit above one that does, ``refine`` bisection steps try
  the middle (rounded down to ``multiple``). A trial starts only if the time left before
  ``deadline`` is at least the last trial's duration (the first always starts).

  Args:
    try_batch: runs one batch size; returns its measurements, raises on failure (errors for
      which :func:`is_oom` is true mean "does not fit"; any other propagates).
    start, cap: first batch tried and the largest allowed (both multiples of ``multiple``).
    multiple: every batch is a multiple of it (the device count).
    deadline, clock: the time cap (``clock()`` seconds).
    refine: bisection steps after the doubling phase.

  Returns:
    {'batch': largest batch that fit or None, 'result': its measurements, 'trials':
    [{'batch', 'fits', 'seconds', 'error'?}], 'stop': why the search ended}.
  """
  trials, best, fail, last_s, refined = [], None, None, 0.0, 0
  b, stop = max(multiple, min(start, cap) // multiple * multiple), ''
  while not stop:
    if trials and deadline - clock() < last_s:
      stop = f'time cap ({last_s:.0f} s per trial, {max(0.0, deadline - clock()):.0f} s left)'
      break
    t0 = clock()
    try:
      result = try_batch(b)
      trials.append({'batch': b, 'fits': True})
      best = (b, result)
    except Exception as e:  # noqa: BLE001 - only out-of-memory means "does not fit"
      if not is_oom(e):
        raise
      trials.append({'batch': b, 'fits': False, 'error': f'{type(e).__name__}: {e}'[:300]})
      fail = b if fail is None else min(fail, b)
    last_s = trials[-1]['seconds'] = clock() - t0
    if best is None:  # nothing fits yet: step back
      b = (b // 2) // multiple * multiple
      stop = '' if b >= multiple else 'nothing fits'
    elif fail is None:  # doubling phase
      b = best[0] * 2
      stop = '' if b <= cap else f'batch cap {cap}'
    else:  # bisect between the largest that fits and the smallest that does not
      b = (best[0] + fail) // 2 // multiple * multiple
      if b > best[0] and refined < refine:
        refined += 1
      else:
        stop = f'out of memory at {fail}'
  return {'batch': best[0] if best else None, 'result': best[1] if best else None,
          'trials': trials, 'stop': stop}


def peak_bf16(device_kind: str, platform: str) -> tuple[float | None, str]:
  """Spec-sheet dense bf16 FLOP/s of one device of ``device_kind`` and where it comes from."""
  if platform in ('gpu', 'tpu', 'cuda', 'rocm'):
    for name, flops in PEAK_BF16_FLOPS:
      if name.lower() in device_kind.lower():
        return flops, f'spec sheet {name} bf16 dense'
  return None, (f'MFU omitted: no bf16 peak known for {platform} device {device_kind!r} '
                '(PEAK_BF16_FLOPS in experiments/device_check.py)')


def model_config(name: str, *, tiny: bool, size: int):
  """The COCO config of ``name`` in bfloat16 at ``size`` (tiny: its ``*_tiny`` arch)."""
  path, arch, tiny_arch, _ = MODELS[name]
  config = bench.load_config(os.path.join(ROOT, 'configs', path))
  if tiny:
    config.model.arch, config.model.depth, config.model.head_conv = tiny_arch, 18, 16
    config.data.max_objs = 16
  config.eval.flip_test, config.eval.test_scales = False, (1.0,)  # one forward + decode
  side = size - 1 if config.task == 'cornernet' and not tiny else size
  return bench.override(config, arch=config.model.arch, dtype='bfloat16', num_classes=80,
                        size=side), side


def _free_bytes() -> int | None:
  import jax
  stats = None
  with contextlib.suppress(Exception):
    stats = jax.local_devices()[0].memory_stats()
  if not stats or 'bytes_limit' not in stats:
    return None
  return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


def check_plan(plan: dict, free: int | None, margin: float = 0.97) -> None:
  """Raises OutOfMemory if XLA's buffers beyond the (resident) arguments exceed free memory.

  Args:
    plan: ``xla_temp_bytes``, ``xla_output_bytes``, ``xla_alias_bytes`` (outputs written into
      donated arguments) of a compiled executable (``benchmark.memory_of``).
    free: device bytes free (``bytes_limit - bytes_in_use``), None where unknown (no check).
    margin: the share of the free memory the plan may take (fragmentation, workspaces).
  """
  need = (plan.get('xla_temp_bytes', 0) + plan.get('xla_output_bytes', 0)
          - plan.get('xla_alias_bytes', 0))
  if free is not None and need > margin * free:
    raise OutOfMemory(f'XLA plan needs {need / 2**30:.2f} GiB beyond its arguments, '
                      f'{free / 2**30:.2f} GiB free')


def train_trial(config, holder: dict, *, batch: int, size: int, steps: int, warmup: int,
                peak: float | None) -> dict:
  """Compiles and times the train step at ``batch`` (raises OutOfMemory if it cannot fit)."""
  import jax
  import numpy as np
  if holder.get('s') is None:  # first trial, or the state was lost in a failed call
    holder['s'] = bench.train_setup(config, batch=batch, size=size)
    del holder['s']['data']  # its own batch: made below at each trial's size
  s = holder['s']
  data = jax.device_put(bench.synthetic_batch(np.random.default_rng(batch), batch, size,
                                              config.data.max_objs, config.model.num_classes),
                        s['dat'])
  t0 = time.perf_counter()
  compiled = s['step'].lower(s['state'], data).compile()
  out = {'batch': batch, 'compile_s': time.perf_counter() - t0}
  holder.setdefault('compiles', []).append({'batch': batch, 'compile_s': out['compile_s']})
  out.update({k: v for k, v in bench.memory_of(compiled).items() if k.startswith('xla')})
  check_plan(out, _free_bytes())
  holder['s'] = None  # the state is donated: lost if the call below fails
  times, s['state'] = bench.time_train(compiled, s['state'], data, steps, warmup)
  holder['s'] = s
  cost = bench.cost_of(compiled)
  med = statistics.median(times)
  out.update(bench.time_stats('step', times), images_per_s=batch / med,
             flops_per_image=cost['flops'] / batch)
  out['mfu'] = cost['flops'] / med / peak if peak else None
  return out


def run_train(name: str, args, sizes: dict, budget: Budget, items_left: int, peak, n_dev: int,
              keep: dict) -> dict:
  """One model's largest-batch train throughput; keeps its variables for inference."""
  import jax
  config, side = model_config(name, tiny=args.tiny, size=sizes['size'])
  row = {'model': name, 'arch': config.model.arch, 'task': config.task, 'size': side,
         'dtype': config.model.dtype}
  # the start batch doubles with each doubling of free memory beyond 80 GB
  per_80gb = 2 ** int(math.log2(max(1.0, (_free_bytes() or 0) / 80e9)))
  start = 2 if args.tiny else MODELS[name][3] * n_dev * per_80gb
  holder: dict = {}
  found = search_batch(
      lambda b: train_trial(config, holder, batch=b, size=side, steps=sizes['steps'],
                            warmup=sizes['warmup'], peak=peak),
      start=start, cap=sizes['batch_cap'] * n_dev, multiple=n_dev,
      deadline=budget.item_deadline('train', items_left))
  row.update(batch_search=found['trials'], search_stop=found['stop'],
             compiles=holder.get('compiles', []))
  if found['result'] is None:  # kept as a row: the trials say what was tried
    return {**row, 'status': 'error', 'error': f'no batch fits ({found["stop"]})'}
  row.update(found['result'])
  if holder.get('s') is not None:
    state = holder['s']['state']
    keep[name] = {'params': state.params, 'batch_stats': state.batch_stats}
    row['params'] = int(sum(x.size for x in jax.tree.leaves(state.params)))
  return row


def run_inference(name: str, args, sizes: dict, variables, peak) -> dict:
  """Batch-1 latency and batch-64 (tiny: 2) throughput of network + decode."""
  import jax
  config, side = model_config(name, tiny=args.tiny, size=sizes['size'])
  if variables is None:  # training failed or was skipped: random weights do as well
    from centernet_jax.models import build_model
    model = build_model(config.model)
    variables = jax.jit(lambda k: model.init(k, jax.numpy.zeros((1, side, side, 3)),
                                             train=False))(jax.random.PRNGKey(0))
  row = {'model': name, 'arch': config.model.arch, 'size': side, 'dtype': config.model.dtype}
  for b in sizes['infer_batches']:
    r = bench.bench_inference(config, variables, size=side, batch=b, steps=sizes['infer_steps'],
                              warmup=sizes['warmup'])
    row.update(r)
    row[f'infer_b{b}_mfu'] = (r[f'infer_flops_per_image_b{b}'] * b / r[f'infer_b{b}_s_median']
                              / peak if peak else None)
  return row


def run_dcn(shape: tuple, dtype: str, repeats: int, warmup: int) -> dict:
  """DeformConv against a plain 3x3 conv of the same shape, forward + backward."""
  import jax.numpy as jnp
  dcb = _load('deform_conv_bench')
  from centernet_jax.models import layers
  from centernet_jax.ops import deform_conv
  cout = shape[-1]
  made = {'conv': layers.conv(cout, 3, use_bias=True, dtype=dtype),
          'dcn': deform_conv.DeformConv(cout, dtype=dtype)}
  r = dcb.bench_interleaved(made, shape, jnp.dtype(dtype), repeats, warmup)
  row = {'shape': list(shape), 'dtype': dtype}
  for k in made:
    row.update({f'{k}_{f}': r[k][f] for f in ('median_s', 'min_s', 'compile_s', 'temp_bytes')})
  row['dcn_to_conv'] = r['dcn']['median_s'] / r['conv']['median_s']
  row['input_bytes'] = r['dcn']['input_bytes']
  return row


def _isolated(rows: list, notes: list, what: str, budget: Budget, fn: Callable[[], dict],
              base: dict, need_s: float = 0.0) -> None:
  """Runs one measurement unless the budget lacks ``need_s``; a failure or skip is recorded."""
  import jax
  if budget.left() <= need_s:
    reason = ('global time budget spent' if budget.left() <= 0 else
              f'needs ~{need_s:.0f} s, {budget.left():.0f} s of the budget left')
    rows.append({**base, 'status': 'skipped', 'reason': reason})
    notes.append(f'{what}: skipped, {reason}')
    return
  t0 = time.perf_counter()
  try:
    rows.append({**base, 'status': 'ok', **fn()})
    # monotone over the run (no reset in jax): the max of this and everything before it
    rows[-1]['peak_memory_so_far_bytes'] = bench.memory_of()['peak_memory_bytes']
    if rows[-1]['status'] != 'ok':
      notes.append(f"{what}: {rows[-1].get('error', rows[-1]['status'])}")
  except Exception as e:  # noqa: BLE001 - one failure must not hide the other measurements
    rows.append({**base, 'status': 'error', 'error': f'{type(e).__name__}: {e}'[:500],
                 'traceback': traceback.format_exc()[-1500:]})
    notes.append(f'{what}: {type(e).__name__}: {str(e)[:200]}')
  rows[-1]['wall_s'] = time.perf_counter() - t0
  gc.collect()
  jax.clear_caches()


def device_info() -> dict:
  import jax
  dev = jax.local_devices()[0]
  kind = getattr(dev, 'device_kind', str(dev))
  slug = 'cpu' if dev.platform == 'cpu' else re.sub(r'[^a-z0-9]+', '_', kind.lower()).strip('_')
  return {'platform': dev.platform, 'device_kind': kind, 'devices': jax.local_device_count(),
          'slug': slug}


def run(args) -> dict:
  """All measurements; returns the report (also written by :func:`main`)."""
  sizes = TINY if args.tiny else FULL
  budget = Budget(args.budget_s)
  dev = device_info()
  peak1, peak_source = peak_bf16(dev['device_kind'], dev['platform'])
  peak = peak1 * dev['devices'] if peak1 else None
  report = {'environment': bench.environment(), 'device': dev, 'tiny': args.tiny,
            'budget_s': args.budget_s, 'sizes': {k: v for k, v in sizes.items()},
            'peak': {'bf16_flops_per_s_per_device': peak1, 'source': peak_source,
                     'devices': dev['devices']},
            'train': [], 'inference': [], 'dcn': [], 'notes': []}
  for var in ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_FLAGS'):
    report['environment'][var] = os.environ.get(var, '')
  if peak is None:
    report['notes'].append(peak_source)
  elif dev['devices'] > 1:
    report['notes'].append(f"MFU against {dev['devices']} x the per-device peak; unverified "
                           'whether XLA counts the FLOPs of the whole step or of one device')
  names, keep = args.models.split(','), {}
  for i, name in enumerate(names):
    _isolated(report['train'], report['notes'], f'train {name}', budget,
              lambda name=name, i=i: run_train(name, args, sizes, budget, len(names) - i, peak,
                                               dev['devices'], keep), {'model': name})
  compile_s = {r['model']: r['compiles'][0]['compile_s'] for r in report['train']
               if r.get('compiles')}
  for name in names:  # two forward compiles cost about half a train-step compile
    _isolated(report['inference'], report['notes'], f'inference {name}', budget,
              lambda name=name: run_inference(name, args, sizes, keep.pop(name, None), peak),
              {'model': name}, need_s=0.5 * compile_s.get(name, 0.0))
  for shape in sizes['dcn_shapes']:
    for dtype in sizes['dcn_dtypes']:
      _isolated(report['dcn'], report['notes'], f'dcn {shape} {dtype}', budget,
                lambda shape=shape, dtype=dtype: run_dcn(shape, dtype, sizes['dcn_repeats'],
                                                         sizes['warmup']),
                {'shape': list(shape), 'dtype': dtype})
  report['memory'] = bench.memory_of()
  with contextlib.suppress(Exception):
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    report['memory'].update({k: int(v) for k, v in stats.items()
                             if k in ('bytes_limit', 'bytes_in_use', 'peak_bytes_in_use')})
  report['import_check'] = {'blocked': list(FORBIDDEN), 'loaded': sorted(
      m for m in sys.modules if m.split('.')[0] in FORBIDDEN)}
  report['elapsed_s'] = budget.total_s - budget.left()
  return report


def _f(v, scale: float = 1.0, fmt: str = '.3g', unit: str = '') -> str:
  if v is None or isinstance(v, str):
    return '-' if v is None else v
  return f'{v * scale:{fmt}}{unit}'


def _gib(v) -> str:
  return _f(v, 1 / 2**30, '.2f', ' GiB')


def markdown(report: dict) -> str:
  """The report's tables (train, inference, DCNv2, memory, compile times, notes) as markdown."""
  dev, env = report['device'], report['environment']
  lines = [f"# Device check: {dev['device_kind']} x {dev['devices']} ({dev['platform']}), "
           f"{env.get('date', '')}{' (--tiny)' if report['tiny'] else ''}", '',
           f"jax {env.get('jax', '?')}, flax {env.get('flax', '?')}; peak bf16: "
           f"{_f(report['peak']['bf16_flops_per_s_per_device'], 1e-12, '.0f', ' TFLOP/s')} per "
           f"device ({report['peak']['source']}); {report['elapsed_s']:.0f} s of a "
           f"{report['budget_s']:.0f} s budget.", '',
           '## Train, bfloat16, synthetic device data, largest batch that fits', '',
           '| model | px | batch | step s | img/s | MFU | GFLOP/img | batches tried | '
           'search stop | XLA temp | status |',
           '|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|']
  for r in report['train']:
    tried = ' '.join(f"{t['batch']}{'' if t['fits'] else '(oom)'}"
                     for t in r.get('batch_search', []))
    lines.append(f"| {r['model']} | {r.get('size', '-')} | {r.get('batch', '-')} | "
                 f"{_f(r.get('step_s_median'), 1, '.4f')} | {_f(r.get('images_per_s'), 1, '.1f')} "
                 f"| {_f(r.get('mfu'), 100, '.1f', ' %')} | {_f(r.get('flops_per_image'), 1e-9)} "
                 f"| {tried or '-'} | {r.get('search_stop', '-')} | "
                 f"{_gib(r.get('xla_temp_bytes'))} | {r['status']} |")
  bs = report['sizes']['infer_batches']
  lines += ['', f'## Inference: network + decode, batch {bs[0]} latency and batch {bs[-1]} '
            'throughput', '', f'| model | px | b{bs[0]} ms | b{bs[-1]} img/s | b{bs[-1]} MFU | '
            'GFLOP/img | status |', '|---|---:|---:|---:|---:|---:|---|']
  for r in report['inference']:
    lines.append(f"| {r['model']} | {r.get('size', '-')} | "
                 f"{_f(r.get(f'infer_b{bs[0]}_s_median'), 1e3, '.2f')} | "
                 f"{_f(r.get(f'infer_b{bs[-1]}_images_per_s'), 1, '.1f')} | "
                 f"{_f(r.get(f'infer_b{bs[-1]}_mfu'), 100, '.1f', ' %')} | "
                 f"{_f(r.get(f'infer_flops_per_image_b{bs[0]}'), 1e-9)} | {r['status']} |")
  lines += ['', '## DCNv2 (DeformConv) against a plain 3x3 conv, forward + backward', '',
            '| B, H, W, Cin->Cout | dtype | conv ms | DCN ms | DCN / conv | DCN XLA temp | '
            'status |', '|---|---|---:|---:|---:|---:|---|']
  for r in report['dcn']:
    b, h, w, ci, co = r['shape']
    lines.append(f"| {b}, {h}, {w}, {ci}->{co} | {r['dtype']} | "
                 f"{_f(r.get('conv_median_s'), 1e3, '.3f')} | "
                 f"{_f(r.get('dcn_median_s'), 1e3, '.3f')} | "
                 f"{_f(r.get('dcn_to_conv'), 1, '.2f', 'x')} | {_gib(r.get('dcn_temp_bytes'))} | "
                 f"{r['status']} |")
  mem = report['memory']
  lines += ['', '## Memory', '', f"peak {_gib(mem.get('peak_memory_bytes'))} "
            f"({mem.get('peak_memory_source', '?')}; whole run, monotone), limit "
            f"{_gib(mem.get('bytes_limit'))}.", '', '## Compile times (s)', '',
            '| what | compile s |', '|---|---:|']
  for r in report['train']:
    for t in r.get('compiles', []):
      lines.append(f"| train {r['model']} batch {t['batch']} | {t['compile_s']:.1f} |")
  for r in report['inference']:
    for b in bs:
      if f'infer_b{b}_compile_s' in r:
        lines.append(f"| predict {r['model']} batch {b} | {r[f'infer_b{b}_compile_s']:.1f} |")
  for r in report['dcn']:
    for k in ('conv', 'dcn'):
      if f'{k}_compile_s' in r:
        lines.append(f"| {k} {tuple(r['shape'])} {r['dtype']} | {r[f'{k}_compile_s']:.1f} |")
  loaded = report['import_check']['loaded']
  lines += ['', '## Notes', '', f"- imports blocked: {', '.join(FORBIDDEN)}; loaded: "
            f"{', '.join(loaded) or 'none'}"]
  lines += [f'- {n}' for n in report['notes']]
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tiny', action='store_true', help='tiny sizes: a CPU check in < 60 s')
  parser.add_argument('--out', default=os.path.join(HERE, 'results'), help='output folder')
  parser.add_argument('--budget_s', type=float, default=0.0,
                      help='global time budget (default 420; --tiny 300)')
  parser.add_argument('--models', default=','.join(MODELS), help=f'subset of {list(MODELS)}')
  parser.add_argument('--mem_fraction', default='0.9',
                      help='XLA_PYTHON_CLIENT_MEM_FRACTION when not set already (GPU)')
  args = parser.parse_args(argv)
  unknown = set(args.models.split(',')) - set(MODELS)
  if unknown:
    parser.error(f'unknown --models {sorted(unknown)}; known: {list(MODELS)}')
  args.budget_s = args.budget_s or (300.0 if args.tiny else 420.0)
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', args.mem_fraction)
  # etils (jax's compilation cache paths) probes for tensorflow when it is installed; off.
  os.environ.setdefault('EPATH_USE_TF', 'false')
  if args.tiny and 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    # Tiny numbers mean nothing; what counts is that every path runs. Unoptimised code
    # generation cuts XLA:CPU compile times (the run's bulk) 2-10x. Before jax starts.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + TINY_XLA_FLAGS).strip()
  if importlib.util.find_spec('jax') is None:
    raise SystemExit(f'device_check: no jax for {sys.executable}; install this package '
                     '(pip install -e ., with the jax[cuda12] or jax[tpu] wheel first) or set '
                     'PYTHON for the wrapper')
  already = sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)
  if already:
    raise SystemExit(f'device_check: {already} imported before it started; run it alone')
  finder = _Forbid()
  sys.meta_path.insert(0, finder)
  try:
    report = run(args)
  finally:
    sys.meta_path.remove(finder)
  stamp = datetime.datetime.now(datetime.UTC).strftime('%Y%m%d_%H%M%S')
  base = os.path.join(args.out, f"device_check_{report['device']['slug']}_{stamp}")
  os.makedirs(args.out, exist_ok=True)
  table = markdown(report)
  with open(base + '.json', 'w') as f:
    json.dump(report, f, indent=1, default=str)
  with open(base + '.md', 'w') as f:
    f.write(table)
  print(table)
  print(f'wrote {base}.json and {base}.md', flush=True)
  report['files'] = [base + '.json', base + '.md']
  return report


if __name__ == '__main__':
  main()

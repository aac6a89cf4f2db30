r"""CPU timing and XLA memory of DCNv2 variants against a plain 3x3 conv of the same shape.

  python experiments/deform_conv_bench.py [--repeats 7] [--warmup 2] \
      [--dtypes float32,bfloat16] [--variants conv,reference,fast_t1,...] \
      [--out experiments/results/dcn_bench.json]

For each shape and dtype, jit(value_and_grad) of sum(layer(x) * g) with respect to the input and
all params (for DCN that includes ``conv_offset_mask``, given a small random kernel so the offsets
are non-zero), timed after warm-up with ``block_until_ready``, the variants interleaved call by
call so that a change in load hits them alike: median (min / max) of the repeats, the ratio to the
plain conv timed in the same run, and XLA's temp memory from ``compiled.memory_analysis()`` with
its ratio to the input's bytes. Variants: ``reference`` is ``deform_conv_reference`` (autodiff of
the 4-corner gather); ``fast_tN[_rM]`` is ``deform_conv2d`` with N taps and at most M output
pixels (default 2048) per scan step; ``default`` is ``DeformConv`` as the models use it. The load
average before and after is recorded: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from centernet_jax.models import layers  # noqa: E402
from centernet_jax.ops import deform_conv  # noqa: E402

SHAPES = [(2, 32, 32, 64, 64), (1, 128, 128, 64, 64)]  # B, H, W, Cin, Cout
_fast = functools.partial(functools.partial, deform_conv.deform_conv2d)
OPS = {
    'reference': deform_conv.deform_conv_reference,
    'fast_t1': _fast(),  # the default: 1 tap and <= 2048 output pixels per scan step
    'fast_t1_r512': _fast(rows_per_step=512),
    'fast_t1_r8192': _fast(rows_per_step=8192),
    'fast_t1_rall': _fast(rows_per_step=1 << 30),  # all output pixels in one step
    'fast_t3': _fast(taps_per_step=3),
    'fast_t9': _fast(taps_per_step=9),
}


class _DCNVariant(nn.Module):
  """``DeformConv`` (same params) with the op swapped; ``default`` is DeformConv itself."""

  features: int
  op: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    om = nn.Conv(27, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                 param_dtype=jnp.float32, name='conv_offset_mask')(x)
    o1, o2, m = jnp.split(om.astype(jnp.float32), 3, axis=-1)
    kernel = self.param('kernel', deform_conv.dcn_kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return OPS[self.op](x, jnp.concatenate([o1, o2], -1), jax.nn.sigmoid(m), kernel, bias)


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor()


def compile_layer(layer: nn.Module, shape, dtype):
  """jit(value_and_grad) of one layer, compiled; returns (run, temp bytes, input bytes, s)."""
  b, h, w, cin, cout = shape
  kx, kg, kp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, h, w, cin)).astype(dtype)
  params = layer.init(kp, x)['params']
  if 'conv_offset_mask' in params:  # non-zero offsets so the sampling is not a no-op
    om = params['conv_offset_mask']
    params = {**params, 'conv_offset_mask': {
        **om, 'kernel': 0.05 * jax.random.normal(kp, om['kernel'].shape)}}
  g = jax.random.normal(kg, (b, h, w, cout))

  def loss(x, params, g):  # g an argument, not a constant XLA would try to fold
    return jnp.sum(layer.apply({'params': params}, x).astype(jnp.float32) * g)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  t0 = time.perf_counter()
  compiled = step.lower(x, params, g).compile()
  compile_s = time.perf_counter() - t0
  temp = None
  try:
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # noqa: BLE001  (not every backend implements it)
    pass
  return (lambda: jax.block_until_ready(compiled(x, params, g))), temp, x.nbytes, compile_s


def bench_interleaved(layers_by_name: dict, shape, dtype, repeats: int, warmup: int) -> dict:
  """Times every layer's forward + backward, one call of each per round (so a change in the
  machine's load hits all variants alike); returns per-variant seconds and temp bytes."""
  runs = {n: compile_layer(layer, shape, dtype) for n, layer in layers_by_name.items()}
  for run, *_ in runs.values():
    for _ in range(warmup):
      run()
  times = {n: [] for n in runs}
  for _ in range(repeats):
    for n, (run, *_) in runs.items():
      t0 = time.perf_counter()
      run()
      times[n].append(time.perf_counter() - t0)
  return {n: {'median_s': statistics.median(ts), 'min_s': min(ts), 'max_s': max(ts),
              'times_s': ts, 'temp_bytes': runs[n][1], 'input_bytes': runs[n][2],
              'compile_s': runs[n][3]} for n, ts in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--variants', default='conv,default,' + ','.join(OPS))
  parser.add_argument('--out', default=None, help='JSON file for the raw results')
  args = parser.parse_args(argv)
  meta = {'date': datetime.datetime.now(datetime.UTC).isoformat(),
          'jax': jax.__version__, 'devices': str(jax.devices()), 'cpu': _cpu_name(),
          'nproc': os.cpu_count(), 'loadavg_before': os.getloadavg(), 'argv': sys.argv[1:]}
  print(f"jax {jax.__version__}, devices {jax.devices()}, load before {meta['loadavg_before']}")
  print('| shape (B, H, W, Cin->Cout) | dtype | variant | fwd+bwd median | min / max | '
        'x conv | XLA temp | x input |')
  print('|---|---|---|---:|---:|---:|---:|---:|')
  rows = []
  for shape in SHAPES:
    cout = shape[-1]
    for dtype in args.dtypes.split(','):
      made = {}
      for variant in args.variants.split(','):
        if variant == 'conv':
          made[variant] = layers.conv(cout, 3, use_bias=True, dtype=dtype)
        elif variant == 'default':
          made[variant] = deform_conv.DeformConv(cout, dtype=dtype)
        else:
          made[variant] = _DCNVariant(cout, variant, dtype=dtype)
      results = bench_interleaved(made, shape, jnp.dtype(dtype), args.repeats, args.warmup)
      conv_s = results['conv']['median_s'] if 'conv' in results else None
      for variant, r in results.items():
        ratio = r['median_s'] / conv_s if conv_s else None
        mib = None if r['temp_bytes'] is None else r['temp_bytes'] / 2**20
        tin = None if mib is None else r['temp_bytes'] / r['input_bytes']
        rows.append({'shape': shape, 'dtype': dtype, 'variant': variant, 'ratio_to_conv': ratio,
                     'temp_to_input': tin, **r})
        print(f"| {shape[:3]}, {shape[3]}->{cout} | {dtype} | {variant} | "
              f"{1e3 * r['median_s']:.1f} ms | {1e3 * r['min_s']:.1f} / {1e3 * r['max_s']:.1f} | "
              f"{'' if ratio is None else f'{ratio:.2f}x'} | "
              f"{'n/a' if mib is None else f'{mib:.1f} MiB'} | "
              f"{'' if tin is None else f'{tin:.1f}x'} |", flush=True)
  meta['loadavg_after'] = os.getloadavg()
  print(f"load after {meta['loadavg_after']}")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'meta': meta, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()

r"""CPU timing of DCNv2 (``DeformConv``) against a plain 3x3 conv of the same shape.

  python experiments/deform_conv_bench.py [--repeats 5] [--warmup 2]

For each shape, jit(value_and_grad) of sum(layer(x) * g) with respect to the input and the
params, timed after warm-up with ``block_until_ready``; the median (and min / max) of the repeats
is printed with XLA's temp memory from ``compiled.memory_analysis()`` where the backend gives it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from centernet_jax.models import layers  # noqa: E402
from centernet_jax.ops.deform_conv import DeformConv  # noqa: E402

SHAPES = [(2, 32, 32, 64, 64), (1, 128, 128, 64, 64)]  # B, H, W, Cin, Cout


def bench_layer(layer: nn.Module, shape, repeats: int, warmup: int) -> dict:
  """Times the jitted forward + backward of one layer; returns seconds and temp bytes."""
  b, h, w, cin, cout = shape
  kx, kg, kp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, h, w, cin))
  params = layer.init(kp, x)['params']
  if 'conv_offset_mask' in params:  # non-zero offsets so the sampling is not a no-op
    om = params['conv_offset_mask']
    params = {**params, 'conv_offset_mask': {
        **om, 'kernel': 0.05 * jax.random.normal(kp, om['kernel'].shape)}}
  g = jax.random.normal(kg, (b, h, w, cout))

  def loss(x, params):
    return jnp.sum(layer.apply({'params': params}, x) * g)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  compiled = step.lower(x, params).compile()
  temp = None
  try:
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # noqa: BLE001  (not every backend implements it)
    pass
  for _ in range(warmup):
    jax.block_until_ready(compiled(x, params))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(x, params))
    times.append(time.perf_counter() - t0)
  return {'median': statistics.median(times), 'min': min(times), 'max': max(times),
          'temp_bytes': temp}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args(argv)
  print(f'jax {jax.__version__}, devices {jax.devices()}')
  print('| shape (B, H, W, Cin->Cout) | layer | fwd+bwd median | min / max | XLA temp |')
  print('|---|---|---:|---:|---:|')
  for shape in SHAPES:
    cout = shape[-1]
    for name, layer in (('conv 3x3', layers.conv(cout, 3, use_bias=True)),
                        ('DCNv2 3x3', DeformConv(cout))):
      r = bench_layer(layer, shape, args.repeats, args.warmup)
      temp = 'n/a' if r['temp_bytes'] is None else f"{r['temp_bytes'] / 2**20:.1f} MiB"
      print(f"| {shape[:3]}, {shape[3]}->{cout} | {name} | {1e3 * r['median']:.1f} ms | "
            f"{1e3 * r['min']:.1f} / {1e3 * r['max']:.1f} ms | {temp} |", flush=True)


if __name__ == '__main__':
  main()

"""Time value_and_grad of one ConvTranspose 4x4/2 layer (32x32x256 -> 64x64x256) per formulation.

  python experiments/upconv_bench.py [--repeats 5]

Both formulations (``config.model.upsample``: 'subpixel', 'conv_transpose') compute the same
maths with the same parameters (tests/models_test.py checks it); this measures their cost on the
current backend, warm-up excluded, median of repeats, synchronised with block_until_ready.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from centernet_jax.models import layers  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(1), (1, 32, 32, 256))
  kernel = 0.01 * jax.random.normal(jax.random.key(2), (4, 4, 256, 256))
  for impl in layers.UPSAMPLE_IMPLS:
    fn = jax.jit(jax.value_and_grad(
        lambda x, k, impl=impl: jnp.sum(layers.conv_transpose_4x4_s2(x, k, impl) ** 2), (0, 1)))
    jax.block_until_ready(fn(x, kernel))
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(x, kernel))
      times.append(time.perf_counter() - start)
    print(f'{impl}: median {statistics.median(times) * 1e3:.1f} ms '
          f'(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) on {jax.devices()[0]}')


if __name__ == '__main__':
  main()

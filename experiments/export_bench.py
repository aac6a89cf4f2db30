r"""Latency of exported detectors against the jitted predict function, and artifact sizes (CPU).

  JAX_PLATFORMS=cpu python experiments/export_bench.py --config smoke --size 96 --repeats 30
  JAX_PLATFORMS=cpu python experiments/export_bench.py --config ctdet_resnet18_coco --size 512 \
      --num_classes 80 --repeats 10

Random-init weights (latency and size do not depend on training). Per batch size it times
``predict`` = ``inference.Predictor(config, model)`` (the task's jitted predict function) on
normalised float32 images (what ``predict.Detector`` runs after its numpy pre-processing);
``stablehlo`` = the deserialised ``jax.export`` artifact on uint8 images (normalisation inside);
``stablehlo_jit`` = the same under ``jax.jit``; ``stablehlo_sort_topk`` = the module the
SavedModel wraps (top_k lowered as a sort) run by jax; ``savedmodel`` = the reloaded SavedModel's
``serving_default`` (TF eager call); ``savedmodel_fixed_batch`` = a SavedModel exported with
``--batch`` = that batch (``chlo.top_k`` kept). They are timed in alternation, after one
warm-up call each. Prints one JSON line with medians, os.getloadavg() before and after, and
artifact sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from centernet_jax import export, inference, tasks  # noqa: E402
from centernet_jax.models import build_model  # noqa: E402
from tests.conftest import load_config  # noqa: E402


def _interleaved_medians_ms(fns: dict, repeats: int) -> dict:
  """Median wall time of each function, timed in alternation so load drifts hit all alike."""
  for fn in fns.values():
    fn()  # warm-up (compiles)
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return {f'{k}_ms': round(1e3 * statistics.median(v), 2) for k, v in times.items()}


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='smoke')
  parser.add_argument('--size', type=int, default=96)
  parser.add_argument('--num_classes', type=int, default=4)
  parser.add_argument('--batches', default='1,4')
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()

  import tensorflow as tf

  config = load_config(args.config)
  config.model.num_classes = -1  # any count the config names is replaced by --num_classes
  config = tasks.resolve_config(config, args.num_classes)
  config.model.dtype = 'float32'  # CPU serving; bfloat16 is an accelerator choice
  model = build_model(config.model)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                         np.zeros((1, args.size, args.size, 3), np.float32),
                                         train=False))()
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  serve = export.make_serving_fn(config, model, height=args.size, width=args.size)
  out = tempfile.mkdtemp(prefix='export_bench_')
  t = time.perf_counter()
  exported = export.export_stablehlo(serve, variables, batch=0, height=args.size,
                                     width=args.size, input_dtype='uint8')
  with open(os.path.join(out, 'model.stablehlo'), 'wb') as f:
    f.write(exported.serialize())
  t_hlo = time.perf_counter() - t
  t = time.perf_counter()
  export.export_savedmodel(serve, variables, os.path.join(out, 'sm'), batch=0,
                           height=args.size, width=args.size, input_dtype='uint8')
  t_sm = time.perf_counter() - t

  with open(os.path.join(out, 'model.stablehlo'), 'rb') as f:
    reloaded = jax.export.deserialize(bytearray(f.read()))
  # What the SavedModel holds (StableHLO 1.13.7, top_k as a sort), run by jax: separates the
  # cost of the sort from that of TensorFlow's XlaCallModule.
  with export._tensorflow_compatible(export.TF_STABLEHLO_REQUIREMENT):
    sorted_topk = export.export_stablehlo(serve, variables, batch=0, height=args.size,
                                          width=args.size, input_dtype='uint8')
  signature = tf.saved_model.load(os.path.join(out, 'sm')).signatures['serving_default']
  predict = inference.Predictor(config, model)
  data = config.data
  rows = []
  load_before = os.getloadavg()
  for b in (int(v) for v in args.batches.split(',')):
    images = np.random.default_rng(0).integers(0, 256, (b, args.size, args.size, 3), np.uint8)
    norm = inference.normalize(images, mean=data.mean, std=data.std,
                               channel_order=data.channel_order)
    images_tf = tf.constant(images)
    fixed_dir = os.path.join(out, f'sm_batch{b}')
    export.export_savedmodel(serve, variables, fixed_dir, batch=b, height=args.size,
                             width=args.size, input_dtype='uint8')
    fixed = tf.saved_model.load(fixed_dir).signatures['serving_default']
    call_jit = jax.jit(reloaded.call)
    fns = {
        'predict': lambda x=norm: jax.block_until_ready(predict(variables, x)),
        'stablehlo': lambda x=images: jax.block_until_ready(reloaded.call(x)),
        'stablehlo_jit': lambda x=images, f=call_jit: jax.block_until_ready(f(x)),
        'stablehlo_sort_topk': lambda x=images: jax.block_until_ready(sorted_topk.call(x)),
        'savedmodel': lambda x=images_tf: signature(images=x)['scores'].numpy(),
        'savedmodel_fixed_batch': lambda x=images_tf, f=fixed: f(images=x)['scores'].numpy(),
    }
    rows.append({'batch': b, **_interleaved_medians_ms(fns, args.repeats)})
  print(json.dumps({
      'config': args.config, 'size': args.size, 'num_classes': args.num_classes,
      'repeats': args.repeats, 'rows': rows,
      'stablehlo_bytes': os.path.getsize(os.path.join(out, 'model.stablehlo')),
      'savedmodel_bytes': _dir_bytes(os.path.join(out, 'sm')),
      'params': int(sum(x.size for x in jax.tree.leaves(variables['params']))),
      'export_s': {'stablehlo': round(t_hlo, 1), 'savedmodel': round(t_sm, 1)},
      'loadavg_before': load_before, 'loadavg_after': os.getloadavg(),
      'cpus': os.cpu_count(), 'machine': platform.processor() or platform.machine(),
      'jax': jax.__version__, 'tf': tf.__version__,
      'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}))


if __name__ == '__main__':
  main()

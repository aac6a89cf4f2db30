r"""Benchmarks: train-step time, inference latency and the input pipeline's throughput.

  python experiments/benchmark.py train --config configs/ctdet_resnet18_coco.py \
      --batch 8 --size 128 --size 512 [--dtype float32] [--out experiments/results/x.json]
  python experiments/benchmark.py input --size 512 --images 64 [--cores 1]

``train`` runs the jitted train step on synthetic on-device data (no tensorflow needed): random
images and boxes of the configured shapes, warm-up steps excluded, the device synchronised
(``block_until_ready``) before each clock read, the median of repeated runs reported, together
with the FLOPs per step from XLA's cost analysis. ``input`` writes COCO-sized JPEGs (640x480,
drawn shapes) as a COCO-format folder and times the real training iterator (decode, affine crop,
colour augmentation, normalisation, batching) pinned to ``--cores`` CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_batch(rng, batch: int, size: int, max_objs: int, num_classes: int):
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


def bench_train(config, *, batch: int, size: int, steps: int, warmup: int) -> dict:
  import jax
  import numpy as np

  from centernet_jax import optim, sharding
  from centernet_jax import steps as steps_lib
  from centernet_jax.models import build_model

  mesh = sharding.make_mesh()
  model = build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=batch, steps_per_epoch=1000,
                                      total_steps=100000)
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  state = jax.jit(functools.partial(steps_lib.init_state, model, tx,
                                    image_shape=(1, size, size, 3)), out_shardings=rep)(
                                        jax.random.PRNGKey(0))
  step = jax.jit(steps_lib.make_train_step(
      model, tx, num_classes=config.model.num_classes, down_ratio=config.model.down_ratio,
      min_overlap=config.loss.min_overlap, hm_weight=1.0, wh_weight=0.1, off_weight=1.0,
      schedule=schedule), donate_argnums=(0,), in_shardings=(rep, dat), out_shardings=(rep, rep))
  data = jax.device_put(synthetic_batch(np.random.default_rng(0), batch, size,
                                        config.data.max_objs, config.model.num_classes), dat)
  t0 = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], data)
    jax.block_until_ready(metrics)

  times = time_fn(run, steps, warmup)
  med = statistics.median(times)
  return {'kind': 'train_step', 'arch': config.model.arch, 'depth': config.model.depth,
          'dtype': config.model.dtype, 'batch': batch, 'size': size,
          'step_s_median': med, 'step_s_min': min(times), 'step_s_max': max(times),
          'images_per_s': batch / med, 'steps_timed': steps, 'compile_s': compile_s,
          'xla_flops_per_step': flops, 'achieved_gflops_per_s': flops / med / 1e9}


def make_coco_folder(root: str, n: int, seed: int = 0) -> dict:
  """``n`` 640x480 JPEGs with drawn rectangles/ellipses and a matching instances json."""
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
    name = f'{i:06d}.jpg'
    im.save(os.path.join(img_dir, name), quality=90)
    images.append({'id': i + 1, 'file_name': name, 'width': w, 'height': h})
  ann = os.path.join(root, 'instances.json')
  with open(ann, 'w') as f:
    json.dump({'images': images, 'annotations': anns,
               'categories': [{'id': c, 'name': f'c{c}'} for c in (1, 2, 3)]}, f)
  return {'ann': ann, 'images': img_dir}


def bench_input(*, size: int, n_images: int, batches: int, batch: int, cores: int) -> dict:
  if hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, set(range(cores)))
  from centernet_jax import config_lib
  from centernet_jax.data import import_tf, pipeline

  tf = import_tf()
  tf.config.threading.set_inter_op_parallelism_threads(cores)
  tf.config.threading.set_intra_op_parallelism_threads(cores)
  with tempfile.TemporaryDirectory() as tmp:
    paths = make_coco_folder(tmp, n_images)
    cfg = config_lib.data_config()
    cfg.source = 'coco_json'
    cfg.train_annotations = cfg.val_annotations = paths['ann']
    cfg.train_images = cfg.val_images = paths['images']
    cfg.input_size = size
    info = pipeline.get_dataset_info(cfg)
    it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=batch, seed=0)
    next(it)  # warm-up: graph building, first files
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    dt = time.perf_counter() - t
  return {'kind': 'input_pipeline', 'size': size, 'cores': cores, 'batch': batch,
          'images': batches * batch, 'images_per_s': batches * batch / dt,
          'images_per_s_per_core': batches * batch / dt / cores,
          'source_images': '640x480 / 480x640 JPEG q90'}


def environment() -> dict:
  env = {'date': datetime.date.today().isoformat(), 'machine': platform.machine(),
         'cpus': os.cpu_count(), 'python': platform.python_version()}
  try:
    import jax
    env.update(jax=jax.__version__, devices=[str(d) for d in jax.devices()])
  except Exception as e:  # noqa: BLE001 - report what is there
    env['jax'] = f'unavailable: {e}'
  return env


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='mode', required=True)
  tr = sub.add_parser('train', help='train-step time on synthetic device data')
  tr.add_argument('--config', default=os.path.join(ROOT, 'configs', 'ctdet_resnet18_coco.py'))
  tr.add_argument('--batch', type=int, default=8)
  tr.add_argument('--size', type=int, action='append')
  tr.add_argument('--dtype', default='float32')
  tr.add_argument('--num_classes', type=int, default=80)
  tr.add_argument('--steps', type=int, default=5)
  tr.add_argument('--warmup', type=int, default=2)
  inp = sub.add_parser('input', help='input pipeline images/s on COCO-sized JPEGs')
  inp.add_argument('--size', type=int, default=512)
  inp.add_argument('--images', type=int, default=64)
  inp.add_argument('--batch', type=int, default=8)
  inp.add_argument('--batches', type=int, default=24)
  inp.add_argument('--cores', type=int, default=1)
  for p in (tr, inp):
    p.add_argument('--out', default='')
  args = parser.parse_args()

  results = []
  if args.mode == 'train':
    config = load_config(args.config)
    config.model.dtype = args.dtype
    config.model.num_classes = args.num_classes
    for size in args.size or [512]:
      results.append(bench_train(config, batch=args.batch, size=size, steps=args.steps,
                                 warmup=args.warmup))
  else:
    results.append(bench_input(size=args.size, n_images=args.images, batches=args.batches,
                               batch=args.batch, cores=args.cores))
  report = {'environment': environment(), 'results': results}
  for r in results:
    print(' | '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in r.items()))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()

r"""Cost of agreeing on stops across processes: the smoke train step, three ways, two processes.

  .venv/bin/python experiments/agreement_bench.py [--steps 40] [--repeats 5]

Starts two CPU processes (jax.distributed on localhost) that each time the same loop of jitted
smoke train steps (global batch 8, 64 px) three ways:

  plain      the step alone, no host sync between log steps (the loop before the agreement);
  in_step    what train.py does: the step also takes the stop flags and returns their sum
             (``fault.with_stop_flags``), and the host reads the previous step's agreed flags
             after each step (``fault.StopAgreement.decide``);
  flags_only the flagged step without reading the flags (the cost inside the step alone);
  allgather  the step alone plus a host ``process_allgather`` of one int per step (the simple
             alternative: every step waits for a collective of its own).

Prints one JSON line per process: milliseconds per step (median over repeats) for each way.
Results: experiments/fault_tolerance.md ("Multi-host agreement").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(args) -> None:
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=2,
                             process_id=args.process_id)
  from centernet_jax import fault, models, optim, sharding, state, tasks
  from tests.conftest import load_config

  cfg = tasks.resolve_config(load_config('smoke'), 3)
  mesh = sharding.make_mesh()
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  model = models.build_model(cfg.model)
  tx, sched = optim.make_optimizer(cfg.optim, batch_size=8, steps_per_epoch=10, total_steps=10)
  init = jax.jit(lambda r: state.init_state(model, tx, r, (1, 64, 64, 3)), out_shardings=rep)
  step = tasks.get(cfg.task).make_train_step(cfg, model, tx, sched)
  plain = jax.jit(step, donate_argnums=(0,), in_shardings=(rep, dat), out_shardings=(rep, rep))
  flagged = jax.jit(fault.with_stop_flags(step), donate_argnums=(0,),
                    in_shardings=(rep, dat, dat), out_shardings=(rep, rep, rep))
  rng = np.random.default_rng(args.process_id)
  xy = rng.uniform(0, 40, (4, 5, 2))
  batch = sharding.host_to_global({
      'image': rng.normal(size=(4, 64, 64, 3)).astype(np.float32),
      'boxes': np.concatenate([xy, xy + 10], -1).astype(np.float32),
      'labels': rng.integers(0, 3, (4, 5)).astype(np.int32),
      'mask': np.ones((4, 5), np.float32)}, mesh)
  flags = jax.make_array_from_process_local_data(
      dat, np.zeros((len(mesh.local_devices), 3), np.float32))

  def run(way: str) -> float:
    s = init(jax.random.PRNGKey(0))
    previous = None
    multihost_utils.sync_global_devices(way)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      if way == 'plain':
        s, metrics = plain(s, batch)
      elif way == 'in_step':
        s, metrics, agreed = flagged(s, batch, flags)
        if previous is not None:
          jax.device_get(previous)
        previous = agreed
      elif way == 'flags_only':
        s, metrics, agreed = flagged(s, batch, flags)
      else:
        s, metrics = plain(s, batch)
        multihost_utils.process_allgather(np.zeros(1, np.int32))
    jax.block_until_ready((s, metrics))
    return (time.perf_counter() - t0) / args.steps * 1e3

  ways = ('plain', 'in_step', 'flags_only', 'allgather')
  for way in ways:  # compile everything first
    run(way)
  times = {w: [] for w in ways}
  for _ in range(args.repeats):
    for way in ways:
      times[way].append(run(way))
  print(json.dumps({'process': args.process_id, 'steps': args.steps, 'repeats': args.repeats,
                    **{f'{w}_ms_per_step': round(float(np.median(t)), 2)
                       for w, t in times.items()}}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--process_id', type=int, default=-1, help=argparse.SUPPRESS)
  parser.add_argument('--coordinator', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.process_id >= 0:
    return worker(args)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  procs = [subprocess.Popen(
      [sys.executable, __file__, '--steps', str(args.steps), '--repeats', str(args.repeats),
       '--process_id', str(i), '--coordinator', f'127.0.0.1:{port}'], env=env, cwd=ROOT)
      for i in range(2)]
  sys.exit(max(p.wait() for p in procs))


if __name__ == '__main__':
  main()

r"""Fault-tolerance soak test: kill a smoke training 25 times, resume, compare with a clean run.

  nice -n 10 .venv/bin/python experiments/soak.py --out /tmp/soak [--steps 80] [--seed 0]

1. Runs configs/smoke.py for ``--steps`` steps uninterrupted (the reference).
2. Runs the same command in another workdir and interrupts it 25 times (20 SIGKILL, 5 SIGTERM,
   in a seeded random order), restarting the same command after each. A SIGKILL lands either
   at a random moment (at a random step, plus a random delay that may fall into startup, a
   step or a checkpoint write) or, for every other SIGKILL, the moment an Orbax temporary
   checkpoint directory (a write in progress) appears. Then it lets the run finish.
3. Checks: every SIGTERM exits with status 143 and names a step whose checkpoint is committed;
   every restart resumes from the newest complete checkpoint (its log names the step);
   incomplete checkpoints are moved to checkpoints_partial/; the final parameters, batch
   statistics and optimiser state equal the reference's bit for bit, and so does the loss of
   every step.

Prints one JSON summary line and exits non-zero if a check failed. Results:
experiments/fault_tolerance.md. One process (the signal handling is ``centernet_jax/fault.py``;
the agreement between processes is tested in tests/multihost_test.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _command(workdir: str, steps: int, shapes_dir: str) -> list[str]:
  return [sys.executable, '-m', 'centernet_jax.train', '--config', 'configs/smoke.py',
          '--workdir', workdir, f'--config.train.num_steps={steps}',
          '--config.train.checkpoint_every=3', '--config.train.eval_every=-1',
          '--config.eval.num_images=1', f'--config.data.shapes_dir={shapes_dir}']


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:
          pass
  return out


def _last_step(workdir: str) -> int:
  return max((r['step'] for r in _metrics(workdir) if 'train/loss' in r), default=0)


def _complete_steps(workdir: str) -> list[int]:
  from centernet_jax import checkpoint

  d = checkpoint.checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d)
                if n.isdigit() and checkpoint.why_incomplete(os.path.join(d, n)) is None)


def _tmp_dirs(workdir: str) -> set[tuple[str, int, int]]:
  """Orbax tmp dirs (writes in progress, or left by a kill) as (path, inode, ctime)."""
  out = set()
  for path in glob.glob(os.path.join(workdir, 'checkpoints', '*.orbax-checkpoint-tmp*')):
    try:
      st = os.stat(path)
    except OSError:
      continue
    out.add((path, st.st_ino, st.st_ctime_ns))
  return out


def _start(cmd, log_path, cache_dir):
  log = open(log_path, 'w')  # noqa: SIM115 - closed by the caller via proc.log
  # A persistent compilation cache shortens every restart (the same executables are reused).
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
  proc.log = log
  return proc


def _finish(proc, timeout=900) -> int:
  rc = proc.wait(timeout=timeout)
  proc.log.close()
  return rc


def _variables(workdir: str, step: int):
  """Model and optimiser state of a checkpoint, as numpy leaves (restored without targets)."""
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, 'checkpoints', str(step))
  ckptr = ocp.StandardCheckpointer()
  model = ckptr.restore(os.path.join(path, 'model'))
  opt = ckptr.restore(os.path.join(path, 'opt'))
  return model, opt


def _equal_trees(a, b) -> tuple[bool, int]:
  import jax
  import numpy as np

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if len(la) != len(lb):
    return False, 0
  same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))
  return same, len(la)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='/tmp/centernet_soak')
  parser.add_argument('--steps', type=int, default=80)
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--terms', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--cache_dir', default='',
                      help='persistent JAX compilation cache (default: <out>/jax_cache)')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  shutil.rmtree(args.out, ignore_errors=True)
  os.makedirs(args.out)
  shapes_dir = os.path.join(args.out, 'shapes')
  ref, run = os.path.join(args.out, 'reference'), os.path.join(args.out, 'interrupted')
  logs = os.path.join(args.out, 'logs')
  os.makedirs(logs)
  cache = args.cache_dir or os.path.join(args.out, 'jax_cache')
  t0 = time.time()

  rc = _finish(_start(_command(ref, args.steps, shapes_dir), os.path.join(logs, 'reference.log'),
                     cache))
  if rc != 0:
    sys.exit(f'reference run failed with status {rc}; see {logs}/reference.log')
  t_ref = time.time() - t0

  events = ['kill'] * args.kills + ['term'] * args.terms
  rng.shuffle(events)
  failures, records = [], []
  kill_count = 0
  for k, event in enumerate(events):
    before = _complete_steps(run)
    start_step = _last_step(run)
    stale = _tmp_dirs(run)  # left by the previous kill: set aside at start-up, not a new write
    proc = _start(_command(run, args.steps, shapes_dir), os.path.join(logs, f'run_{k:02d}.log'),
                  cache)
    mode = 'random'
    if event == 'kill':
      kill_count += 1
      mode = 'during_write' if kill_count % 2 == 0 else 'random'
    target = start_step + rng.randint(1, 4)
    delay = rng.uniform(0.0, 1.0)
    hit_write = False
    # Wait for the moment; stop early if the run finished by itself.
    while proc.poll() is None:
      if mode == 'during_write' and _tmp_dirs(run) - stale:
        break
      if mode != 'during_write' and _last_step(run) >= target:
        time.sleep(delay)
        break
      time.sleep(0.01 if mode == 'during_write' else 0.05)
    if proc.poll() is None:
      hit_write = bool(_tmp_dirs(run) - stale)
      proc.send_signal(signal.SIGKILL if event == 'kill' else signal.SIGTERM)
    rc = _finish(proc)
    with open(os.path.join(logs, f'run_{k:02d}.log')) as f:
      text = f.read()
    resumed = re.search(r'Resuming from \S+ step (\d+)', text)
    set_aside = len(re.findall(r'Incomplete checkpoint .* moved to', text))
    rec = dict(run=k, event=event, mode=mode, rc=rc, hit_write=hit_write,
               resumed_from=int(resumed.group(1)) if resumed else None, set_aside=set_aside,
               complete_after=_complete_steps(run)[-1:] or None, last_logged=_last_step(run))
    want_resume = max(before) if before else None
    if (rec['resumed_from'] != want_resume and
        (rec['resumed_from'] is not None or rec['last_logged'] > start_step)):
      failures.append(f'run {k}: resumed from {rec["resumed_from"]}, newest complete was '
                      f'{want_resume}')
    if event == 'term' and rc != 0:
      m = re.search(r'stopped by SIGTERM after step (\d+): checkpoint of step \d+ committed', text)
      if rc != 143 or not m:
        failures.append(f'run {k}: SIGTERM gave status {rc} without the stop message')
      elif int(m.group(1)) not in _complete_steps(run):
        failures.append(f'run {k}: SIGTERM named step {m.group(1)}, not a complete checkpoint')
      else:
        rec['term_step'] = int(m.group(1))
    if event == 'kill' and rc not in (-signal.SIGKILL, 0):
      failures.append(f'run {k}: SIGKILL gave status {rc}')
    records.append(rec)
    print(json.dumps(rec), flush=True)

  # Let it finish.
  rc = _finish(_start(_command(run, args.steps, shapes_dir), os.path.join(logs, 'final.log'),
                      cache))
  if rc != 0:
    failures.append(f'final run exited with status {rc}')
  ref_model, ref_opt = _variables(ref, args.steps)
  got_model, got_opt = _variables(run, args.steps)
  same_model, n_model = _equal_trees(ref_model, got_model)
  same_opt, n_opt = _equal_trees(ref_opt, got_opt)
  if not (same_model and same_opt):
    failures.append(f'final state differs from the reference (model equal: {same_model}, '
                    f'optimiser equal: {same_opt})')
  # Loss of every step: the last record written for each step (a step redone after a SIGKILL is
  # logged twice; both must equal the reference).
  ref_loss = {r['step']: r['train/loss'] for r in _metrics(ref) if 'train/loss' in r}
  mismatched = sorted({r['step'] for r in _metrics(run)
                       if 'train/loss' in r and r['train/loss'] != ref_loss.get(r['step'])})
  if mismatched:
    failures.append(f'losses differ from the reference at steps {mismatched[:10]}')
  partial = os.path.join(run, 'checkpoints_partial')
  summary = dict(
      steps=args.steps, events=len(events), sigkill=args.kills, sigterm=args.terms,
      kills_during_write=sum(r['hit_write'] for r in records if r['event'] == 'kill'),
      runs_that_set_aside_partials=sum(r['set_aside'] > 0 for r in records),
      partial_dirs=sorted(os.listdir(partial)) if os.path.isdir(partial) else [],
      redone_steps=len([r for r in _metrics(run) if 'train/loss' in r]) - args.steps,
      model_leaves=n_model, opt_leaves=n_opt, bit_identical=same_model and same_opt,
      losses_identical=not mismatched, reference_s=round(t_ref), total_s=round(time.time() - t0),
      failures=failures)
  print(json.dumps(summary), flush=True)
  sys.exit(1 if failures else 0)


if __name__ == '__main__':
  main()

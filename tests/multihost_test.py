"""Two processes on localhost (jax.distributed, CPU collectives): they train like one process, and
they stop together (fault.StopAgreement): a signal to one of them, or a failed input on one of
them, stops both after the same step."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from centernet_jax import checkpoint
from centernet_jax.data import pipeline, shapes
from centernet_jax.metric_writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(workdir, shapes_dir, extra=()):
  return [sys.executable, '-m', 'centernet_jax.train', '--config',
          os.path.join(ROOT, 'configs', 'smoke.py'), '--workdir', workdir,
          f'--config.data.shapes_dir={shapes_dir}', '--config.train.num_steps=3',
          '--config.eval.num_images=2', *extra]


def _start_two(workdir, shapes_dir, extra=()):
  port = _free_port()
  return [subprocess.Popen(
      _cmd(workdir, shapes_dir, [*extra, f'--coordinator_address=127.0.0.1:{port}',
                                 '--num_processes=2', f'--process_id={i}']),
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _finish(procs, timeout=600):
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def _losses(workdir):
  return [r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r]


def test_two_processes_match_one(tmp_path, shapes_dir):
  single = str(tmp_path / 'single')
  proc = subprocess.run(_cmd(single, shapes_dir), cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]

  multi = str(tmp_path / 'multi')
  procs = _start_two(multi, shapes_dir)
  outs = _finish(procs)
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-4000:]
  a, b = _losses(single), _losses(multi)
  assert len(a) == 3 and len(b) == 3
  np.testing.assert_allclose(a, b, rtol=1e-4)
  assert os.path.exists(os.path.join(multi, 'eval', 'step_3', 'metrics.json'))


def test_sigterm_to_one_process_stops_both_after_the_same_step(tmp_path, shapes_dir):
  # Logs every 4 steps, no periodic checkpoint: the stop is usually decided from the flags of
  # the step before (the path that costs no wait), and the only checkpoint is the stop's.
  workdir = str(tmp_path / 'run')
  procs = _start_two(workdir, shapes_dir, ['--config.train.num_steps=400',
                                           '--config.train.log_every=4',
                                           '--config.train.checkpoint_every=1000',
                                           '--config.train.eval_every=-1'])
  try:
    deadline = time.time() + 500
    while not _losses(workdir) and procs[1].poll() is None and time.time() < deadline:
      time.sleep(0.1)
    assert procs[1].poll() is None, 'training ended before the signal'
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
  finally:
    outs = _finish(procs)
  steps = []
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 128 + signal.SIGTERM, out[-4000:]
    m = re.search(r'stopped by SIGTERM after step (\d+): checkpoint of step (\d+) committed', out)
    assert m and m.group(1) == m.group(2), out[-4000:]
    steps.append(int(m.group(1)))
  assert 'SIGTERM received' in outs[1] and 'SIGTERM received' not in outs[0]
  k = steps[0]
  assert steps == [k, k] and 4 <= k < 400
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  assert checkpoint.Checkpointer(ckpt_dir, read_only=True).all_steps() == [k]
  assert checkpoint.why_incomplete(os.path.join(ckpt_dir, str(k))) is None
  assert max(r['step'] for r in read_metrics(workdir)) <= k


def _corrupt_image_of(data_dir, step, process_index):
  """Overwrites an image that ``process_index`` of 2 reads at ``step`` (global batch 8) and the
  other process does not read at ``step + 1``; returns its path."""
  from tests.conftest import load_config

  cfg = load_config('smoke').data
  cfg.shapes_dir = data_dir
  info = pipeline.get_dataset_info(cfg)

  def batches(i):
    it = pipeline.create_train_iterator(cfg, info=info, global_batch_size=8, seed=0,
                                        process_index=i, process_count=2)
    return [next(it)['image_id'].tolist() for _ in range(step + 1)]

  mine, other = batches(process_index), batches(1 - process_index)
  image_id = next(i for i in mine[step - 1] if i not in other[step])
  paths = shapes.paths(data_dir)
  with open(paths['train_annotations']) as f:
    name = next(im['file_name'] for im in json.load(f)['images'] if im['id'] == image_id)
  bad = os.path.join(paths['train_images'], name)
  with open(bad, 'wb') as f:
    f.write(b'this is not an image')
  return bad


def test_data_error_on_one_process_stops_both_with_the_message(tmp_path, shapes_dir):
  from tests.conftest import load_config

  d = load_config('smoke').data
  shapes.ensure(shapes_dir, num_train=d.shapes_num_train, num_val=d.shapes_num_val,
                image_size=d.shapes_image_size, seed=d.shapes_seed)
  data_dir = str(tmp_path / 'shapes_broken')
  shutil.copytree(shapes_dir, data_dir)
  bad = _corrupt_image_of(data_dir, step=2, process_index=1)

  # Process 1 cannot read one image of its step-2 batch, over the skip budget: it repeats its
  # last batch, its flags carry the failure, and both learn of it from the flags of step 2
  # after step 3 (not a log step): both stop there, saving nothing.
  workdir = str(tmp_path / 'run')
  procs = _start_two(workdir, data_dir, ['--config.train.num_steps=8',
                                         '--config.train.log_every=4',
                                         '--config.train.checkpoint_every=4',
                                         '--config.train.eval_every=-1',
                                         '--config.data.max_skip_fraction=0.01'])
  outs = _finish(procs)
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 1, out[-4000:]
    assert ('stopped after step 3 on every process (nothing saved after the last checkpoint): '
            'the training input failed on process 1: DataError: cannot read image file') in out, (
                out[-4000:])
    assert bad in out
  assert 'error: stopped after step 3 on every process' in outs[0]  # fault.InputFailed
  assert 'error: cannot read image file(s)' in outs[1]  # the DataError itself
  assert checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                 read_only=True).all_steps() == []
  assert _losses(workdir) == []

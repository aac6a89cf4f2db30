"""One train step on 1 device and on 8 (forced host) devices gives the same loss and params; the
stop flags of the multi-host agreement are summed inside the step at no extra all-reduce; the
CPU conv kernel gradient by matmuls holds on a sharded batch."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_step_same_on_1_and_8_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'helpers', 'sharded_step.py')],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'SAME' in proc.stdout, proc.stdout[-3000:]
  assert 'FLAGS MERGED' in proc.stdout, proc.stdout[-3000:]
  assert 'MATMUL GRAD SHARDED' in proc.stdout, proc.stdout[-3000:]

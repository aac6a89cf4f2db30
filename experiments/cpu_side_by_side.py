r"""Our CenterNet ResNet-18 train step next to the official PyTorch one, each on one CPU core.

  # The comparison (issue 15, item 5): both steps in one process pinned to one core, timed in
  # turn (one step of each per round), float32, batch 8:
  python experiments/cpu_side_by_side.py compare --size 128 --size 512 --rounds 7 \
      [--out experiments/results/cpu_side_by_side.json]
  # Another config's step beside ours (issue 15, item 2: DLA-34 against ResNet-18):
  python experiments/cpu_side_by_side.py compare --size 128 --rounds 5 \
      --variants jax,jax@ctdet_dla34_coco
  # Where XLA:CPU spends our step: a jax.profiler trace of it, its ops grouped by what they
  # are (convolution forward, input gradient, weight gradient; BN / elementwise; the rest):
  python experiments/cpu_side_by_side.py profile --size 128 [--top 25]

The official step is ``MSRAResNet`` (msra_resnet.py, the PyTorch model our parity tests
compare against, tests/helpers/torch_models/centernet.py) with its ``CtdetLoss`` (clamped
sigmoid focal loss on ``hm``, masked L1 on ``wh`` (weight 0.1) and ``reg`` gathered at the
object indices) and Adam, its targets computed beforehand on the host as its data loader
does. Ours is ``tasks.ctdet``'s jitted train step (experiments/benchmark.py ``train_setup``),
which also draws the targets on the device; the ``jax_given_targets`` row traces the same step
with the targets passed in, so that both sides do the same work. Everything is pinned to one
core (``sched_setaffinity`` before jax and torch start their thread pools,
``torch.set_num_threads(1)``); each number is the median over the rounds of the process CPU
seconds of one step (wall seconds next to them).

The profile needs tensorflow (its ``xplane_pb2`` reads the trace); ``compare`` needs torch
(the ``test`` extra).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

CONFIG = os.path.join(ROOT, 'configs', 'ctdet_resnet18_coco.py')


def pin(core: int) -> None:
  """One core for this process and every thread it starts afterwards."""
  os.sched_setaffinity(0, {core})


def _jax_setup(size: int, batch: int, upsample: str):
  import benchmark
  config = benchmark.load_config(CONFIG)
  config.model.dtype = 'float32'
  config.model.upsample = upsample
  return config, benchmark.train_setup(config, batch=batch, size=size)


def _parse_options(spec: str) -> dict:
  """'a=1,b=true' -> {'a': 1, 'b': True} (XLA debug options for ``compile``)."""
  out = {}
  for item in filter(None, spec.split(',')):
    key, value = item.split('=', 1)
    low = value.lower()
    out[key] = (low == 'true') if low in ('true', 'false') else (
        int(value) if value.lstrip('-').isdigit() else value)
  return out


def jax_steps(size: int, batch: int, variants: list[str], upsample: str = 'subpixel') -> dict:
  """name -> a callable running one step of ours (state threaded through, blocking).

  Variants: ``jax`` (the train step as shipped), ``jax_given_targets`` (targets passed in),
  ``jax_xla_conv_grad`` (every plain conv's kernel gradient left to XLA:
  ``layers.MATMUL_GRAD_MIN_PIXELS`` out of reach), ``jax_before`` (that and the
  up-convolution's too, as before ``layers.valid_conv_tap_grad``: the step of 2026-12-02),
  ``jax[key=value,...]`` (the shipped step compiled with these XLA options),
  ``jax@<config>`` (the train step of another shipped config, e.g. ``jax@ctdet_dla34_coco``:
  its model and task with our class count, float32, the same synthetic batch; issue 15's
  DLA-34 / ResNet-18 ratio).
  """
  import benchmark
  import jax

  from centernet_jax import models, tasks
  from centernet_jax.models import layers
  config, s = _jax_setup(size, batch, upsample)
  task = tasks.get('ctdet')
  out_hw = models.output_hw(s['model'], size, size)

  def render(b):
    return task.ctdet_targets(b['boxes'] / config.model.down_ratio, b['labels'], b['mask'],
                              num_classes=config.model.num_classes, output_hw=out_hw,
                              min_overlap=config.loss.min_overlap)

  tgt = jax.block_until_ready(jax.jit(render)(s['data']))

  def step_given(state, b, t):
    with benchmark._given_targets(task, 'ctdet_targets', t):  # noqa: SLF001
      return s['inner'](state, b)

  def patched(**changes):
    """The shipped step traced with some of layers' module attributes replaced."""
    def step(state, b):
      saved = {k: getattr(layers, k) for k in changes}
      for k, v in changes.items():
        setattr(layers, k, v)
      try:
        return s['inner'](state, b)
      finally:
        for k, v in saved.items():
          setattr(layers, k, v)
    return step

  no_matmul_conv_grad = {'MATMUL_GRAD_MIN_PIXELS': 1 << 62}
  def xla_valid_conv(x, kernel):  # the up-conv's conv before layers.valid_conv_tap_grad
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  before = {'valid_conv_tap_grad': xla_valid_conv, **no_matmul_conv_grad}
  patches = {'jax_xla_conv_grad': no_matmul_conv_grad, 'jax_before': before}

  copy = jax.jit(lambda x: jax.tree.map(lambda a: a + 0, x))
  fns = {}
  for name in variants:
    state = copy(s['state'])
    if name == 'jax_given_targets':
      compiled = jax.jit(step_given, donate_argnums=(0,)).lower(state, s['data'], tgt).compile()
      args = (s['data'], tgt)
    elif name in patches:
      compiled = jax.jit(patched(**patches[name]), donate_argnums=(0,)).lower(
          state, s['data']).compile()
      args = (s['data'],)
    elif name.startswith('jax@'):
      other = benchmark.override(
          benchmark.load_config(os.path.join(ROOT, 'configs', name[4:] + '.py')),
          dtype='float32', num_classes=config.model.num_classes)
      o = benchmark.train_setup(other, batch=batch, size=size)
      state = o['state']
      compiled = o['step'].lower(state, o['data']).compile()
      args = (o['data'],)
    elif name == 'jax' or name.startswith('jax['):
      opts = _parse_options(name[4:-1]) if name.startswith('jax[') else {}
      compiled = s['step'].lower(state, s['data']).compile(compiler_options=opts or None)
      args = (s['data'],)
    else:
      raise ValueError(f'unknown variant {name!r}')
    holder = [state]

    def run(compiled=compiled, args=args, holder=holder):
      holder[0], m = compiled(holder[0], *args)
      jax.block_until_ready(m)

    fns[name] = run
  return fns


def torch_step(size: int, batch: int, num_classes: int = 80, max_objs: int = 128):
  """One official step (forward, CtdetLoss, backward, Adam) on fixed host-made targets."""
  import numpy as np
  import torch

  from tests.helpers.torch_models.centernet import MSRAResNet
  from tests.helpers.torch_models.resnet import BasicBlock
  torch.set_num_threads(1)
  torch.manual_seed(0)
  model = MSRAResNet(BasicBlock, [2, 2, 2, 2], [('hm', num_classes), ('wh', 2), ('reg', 2)],
                     head_conv=64)
  model.train()
  opt = torch.optim.Adam(model.parameters(), lr=1.25e-4)
  rng = np.random.default_rng(0)
  out = size // 4
  hm = rng.uniform(size=(batch, num_classes, out, out)).astype(np.float32) ** 20
  ind = rng.integers(0, out * out, (batch, max_objs))
  mask = (rng.uniform(size=(batch, max_objs)) < 0.3).astype(np.float32)
  for b in range(batch):  # a peak of exactly 1 at each object's centre, as the loader draws
    for k in np.flatnonzero(mask[b]):
      hm[b, rng.integers(num_classes), ind[b, k] // out, ind[b, k] % out] = 1.0
  t = {'image': torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32)),
       'hm': torch.from_numpy(hm), 'ind': torch.from_numpy(ind), 'mask': torch.from_numpy(mask),
       'wh': torch.from_numpy(rng.uniform(1, out / 2, (batch, max_objs, 2)).astype(np.float32)),
       'reg': torch.from_numpy(rng.uniform(0, 1, (batch, max_objs, 2)).astype(np.float32))}

  def focal(pred, gt):  # the official _neg_loss
    pos, neg = gt.eq(1).float(), gt.lt(1).float()
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred ** 2 * (1 - gt) ** 4 * neg).sum()
    num_pos = pos.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos

  def reg_l1(output, target):  # the official RegL1Loss
    n, c = output.shape[:2]
    feat = output.view(n, c, -1).permute(0, 2, 1)
    pred = feat.gather(1, t['ind'].unsqueeze(2).expand(-1, -1, c))
    m = t['mask'].unsqueeze(2).expand_as(pred)
    return torch.nn.functional.l1_loss(pred * m, target * m, reduction='sum') / (m.sum() + 1e-4)

  def step():
    outputs = model(t['image'])[0]
    pred = torch.clamp(outputs['hm'].sigmoid(), min=1e-4, max=1 - 1e-4)
    loss = focal(pred, t['hm']) + 0.1 * reg_l1(outputs['wh'], t['wh']) + reg_l1(
        outputs['reg'], t['reg'])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def _time(fn) -> tuple[float, float]:
  c, w = time.process_time(), time.perf_counter()
  fn()
  return time.process_time() - c, time.perf_counter() - w


def compare(sizes: list[int], batch: int, rounds: int, warmup: int, upsample: str,
            variants: list[str]) -> list[dict]:
  rows = []
  for size in sizes:
    made = jax_steps(size, batch, [v for v in variants if v != 'pytorch'], upsample)
    if 'pytorch' in variants:
      made['pytorch'] = torch_step(size, batch)
    fns = {name: made[name] for name in variants}  # timed in the order given
    for fn in fns.values():
      for _ in range(warmup):
        fn()
    times = {name: [] for name in fns}
    for r in range(rounds):
      for name, fn in fns.items():
        times[name].append(_time(fn))
      print(f'  {size} px round {r + 1}/{rounds}: ' + ', '.join(
          f'{n} {times[n][-1][0]:.3f}' for n in fns), flush=True)
    base = statistics.median(c for c, _ in times[variants[0]])
    for name, ts in times.items():
      cpu = statistics.median(c for c, _ in ts)
      rows.append({'size': size, 'batch': batch, 'step': name, 'upsample': upsample,
                   'cpu_s_median': cpu, 'cpu_s_min': min(c for c, _ in ts),
                   'cpu_s_max': max(c for c, _ in ts),
                   'wall_s_median': statistics.median(w for _, w in ts),
                   'x_first': cpu / base, 'rounds': rounds})
  return rows


# --- profile ----------------------------------------------------------------------------------

def _hlo_lines(hlo: str) -> dict[str, str]:
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = (.*)$', hlo, re.M):
    out.setdefault(m.group(1), m.group(2))
  return out


def _dims(line: str) -> list[int]:
  shape = re.match(r'\(?\w+\[([\d,]*)\]', line)
  return [int(d) for d in shape.group(1).split(',')] if shape and shape.group(1) else []


def classify(name: str, line: str, batch: int = 0) -> str:
  """What an HLO instruction of the train step is, from its name, text and op_name metadata.

  ``batch``: the step's batch size, which tells an input gradient (an activation, batch first)
  from a weight gradient (the kernel: [O or I, kh, kw, ...]) when both are small.
  """
  found = re.search(r'op_name="([^"]*)"', line)
  op = found.group(1) if found else ''
  dims = _dims(line)
  kernel_shaped = len(dims) == 4 and dims[0] <= 7 and dims[1] <= 7
  if ' dot(' in line and ('deconv_layers' in op or 'conv' in op):
    return 'conv weight gradient'  # layers.valid_conv_tap_grad's matmuls
  if 'conv_general_dilated' in op or ' convolution(' in line:
    if 'transpose(jvp' not in op:
      return 'conv forward'
    # A weight gradient's result is the kernel, [O or I, kh, kw, ...] (small spatial dims);
    # an input gradient's is an activation of the batch size.
    wgrad = (len(dims) == 4 and dims[1] == dims[2] <= 7 and dims[0] != batch
             and 'b01f_01io' not in line)
    return 'conv weight gradient' if wgrad else 'conv input gradient'
  if 'opt_state' in line:
    return 'optimizer'
  if 'rsqrt' in line or 'BatchNorm' in op or '/bn' in op:
    return 'batch norm'
  if ('reduce-window' in line or 'reduce_window' in op or 'iota' in name
      or 'scatter' in name):
    return 'max pool (and its gradient)'
  if kernel_shaped and any(k in name for k in ('copy', 'transpose', 'reverse')):
    return 'kernel layout (transpose / copy)'
  if any(k in op for k in ('loss', 'focal', 'targets', 'gaussian', 'log', 'clip')):
    return 'targets and losses'
  if any(k in name for k in ('transpose', 'copy', 'concatenate', 'pad', 'slice')):
    return 'activation layout (transpose / copy / pad / concat)'
  return 'other'


def profile(size: int, batch: int, top: int, upsample: str, trace_dir: str, steps: int = 3
            ) -> dict:
  import benchmark
  import jax
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  _, s = _jax_setup(size, batch, upsample)
  compiled = s['step'].lower(s['state'], s['data']).compile()
  lines = _hlo_lines(compiled.as_text())
  times, state = benchmark.time_train(compiled, s['state'], s['data'], steps, 1)
  with jax.profiler.trace(trace_dir):
    benchmark.time_train(compiled, state, s['data'], steps, 0)
  path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  per_op = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if 'XLA' not in line.name:  # XLA:CPU's executor threads
        continue
      for e in line.events:
        name = plane.event_metadata[e.metadata_id].name
        if name in lines:
          per_op[name] += e.duration_ps / 1e9 / steps
  groups = collections.Counter()
  for name, ms in per_op.items():
    groups[classify(name, lines[name], batch)] += ms
  total = sum(per_op.values())
  out = {'size': size, 'batch': batch, 'upsample': upsample,
         'step_s_median_untraced': statistics.median(times), 'ops_ms_per_step': total,
         'groups_ms': dict(groups.most_common()),
         'top_ops': [{'op': n, 'ms': ms, 'group': classify(n, lines[n], batch),
                      'hlo': lines[n][:400]} for n, ms in per_op.most_common(top)]}
  print(f'{size} px, batch {batch}: step {out["step_s_median_untraced"]:.3f} s untraced, '
        f'{total:.0f} ms of XLA ops per step traced')
  for g, ms in groups.most_common():
    print(f'  {g:28s} {ms:8.1f} ms  {100 * ms / total:5.1f} %')
  for row in out['top_ops']:
    op = re.search(r'op_name="([^"]*)"', row['hlo'])
    print(f'  {row["ms"]:8.1f} ms  {row["group"]:22s} {row["op"]:24s} '
          f'{row["hlo"].split(" ")[0]} {op.group(1)[-60:] if op else ""}')
  return out


def main(argv: list[str] | None = None) -> list[dict] | dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='mode', required=True)
  for mode in ('compare', 'profile'):
    m = sub.add_parser(mode)
    m.add_argument('--size', type=int, action='append')
    m.add_argument('--batch', type=int, default=8)
    m.add_argument('--core', type=int, default=0)
    m.add_argument('--upsample', default='subpixel', help='config.model.upsample of ours')
    m.add_argument('--out', default='')
  sub.choices['compare'].add_argument('--rounds', type=int, default=7)
  sub.choices['compare'].add_argument('--warmup', type=int, default=2)
  sub.choices['compare'].add_argument(
      '--variants', default='pytorch,jax,jax_given_targets',
      help='comma-separated: pytorch, jax, jax_given_targets, jax_xla_conv_grad, jax_before, '
      'jax[xla_option=value;...] (options separated by ";"), jax@<shipped config name>; the '
      'first is the ratios\' base')
  sub.choices['profile'].add_argument('--top', type=int, default=25)
  sub.choices['profile'].add_argument('--steps', type=int, default=3,
                                      help='steps timed untraced, then traced')
  args = p.parse_args(argv)
  pin(args.core)
  import benchmark
  sizes = args.size or [128]
  if args.mode == 'compare':
    variants = [v.replace(';', ',') for v in re.split(r',(?![^\[]*\])', args.variants)]
    result = compare(sizes, args.batch, args.rounds, args.warmup, args.upsample, variants)
    for r in result:
      print(f'{r["size"]:4d} px {r["step"]:18s} {r["cpu_s_median"]:7.3f} CPU s '
            f'({r["cpu_s_min"]:.3f} / {r["cpu_s_max"]:.3f}), wall {r["wall_s_median"]:.3f}, '
            f'{r["x_first"]:.2f}x {variants[0]}')
  else:
    with tempfile.TemporaryDirectory() as tmp:
      result = [profile(size, args.batch, args.top, args.upsample, tmp, args.steps)
                for size in sizes]
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'environment': benchmark.environment(), 'results': result}, f, indent=1)
  return result


if __name__ == '__main__':
  main()

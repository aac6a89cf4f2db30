"""Where a ddd run's 3D boxes go wrong: per-depth errors of the matched cars, and the AP each
error costs (that quantity replaced by the truth, one at a time and together).

Reads a run's KITTI result files (``eval/step_<N>/kitti/``) and the ground truth of its KITTI
layout. A detection is matched to the ground-truth car it overlaps most in 2D (IoU > 0.5).
Errors: depth z, lateral x, dimensions, and alpha modulo pi (a box's symmetry). Replacements:
``depth`` moves the box along its viewing ray to the true z; ``xy`` puts it on the true
viewing ray at its own z (the error of the centre the decoding projected from); ``rot`` and
``dims`` take the true rotation_y and size.

  python experiments/ddd_errors.py --run runs/ddd --step 1600 --root <kitti_root>

experiments/ddd.md has the tables of its runs.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from centernet_jax.data import kitti
from centernet_jax.evaluation import kitti as kitti_eval

FIXES = ((), ('depth',), ('xy',), ('rot',), ('dims',), ('depth', 'rot'), ('depth', 'xy'),
         ('depth', 'xy', 'rot'), ('depth', 'xy', 'rot', 'dims'))


def _match(det: dict, cars: list[dict]) -> dict | None:
  if det['type'] != 'Car' or not cars:
    return None
  iou = kitti_eval.box2d_overlap(np.array([det['bbox']], float),
                                 np.array([g['bbox'] for g in cars], float))[0]
  j = int(np.argmax(iou))
  return cars[j] if iou[j] > 0.5 else None


def replaced(det: dict, truth: dict, fix: tuple[str, ...]) -> dict:
  """``det`` with the quantities named in ``fix`` taken from ``truth``."""
  det = dict(det)
  loc, true_loc = np.array(det['location'], float), np.array(truth['location'], float)
  if 'depth' in fix:
    loc = loc * true_loc[2] / loc[2]
  if 'xy' in fix:
    loc = np.array([*(true_loc[:2] * loc[2] / true_loc[2]), loc[2]])
  if 'rot' in fix:
    det['rotation_y'] = truth['rotation_y']
  if 'dims' in fix:
    det['dimensions'] = truth['dimensions']
  det['location'] = loc.tolist()
  return det


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', required=True, help='the workdir')
  parser.add_argument('--step', required=True)
  parser.add_argument('--root', required=True, help='KITTI layout of the evaluated split')
  parser.add_argument('--min_score', type=float, default=0.3, help='for the error table')
  parser.add_argument('--min_height_scale', type=float, default=384 / 1242)
  args = parser.parse_args(argv)
  files = sorted(glob.glob(os.path.join(args.run, 'eval', f'step_{args.step}', 'kitti', '*.txt')))
  if not files:
    raise SystemExit(f'no result files in {args.run}/eval/step_{args.step}/kitti')
  ids = [int(os.path.basename(f)[:-4]) for f in files]
  gt = kitti_eval.read_label_dir(os.path.join(args.root, 'training', 'label_2'), ids)
  dets = {i: kitti.read_label_file(f) for i, f in zip(ids, files, strict=True)}
  cars = {i: [g for g in gt[i] if g['type'] == 'Car'] for i in ids}

  rows = []
  for i in ids:
    for d in dets[i]:
      g = _match(d, cars[i]) if d['score'] > args.min_score else None
      if g is not None:
        da = (d['alpha'] - g['alpha'] + np.pi / 2) % np.pi - np.pi / 2
        rows.append([g['location'][2], d['location'][2] - g['location'][2],
                     d['location'][0] - g['location'][0],
                     *(np.array(d['dimensions']) - g['dimensions']), da])
  e = np.array(rows).reshape(-1, 7)
  print(f'{len(e)} car detections matched (score > {args.min_score}, 2D IoU > 0.5 with a true '
        'car); medians:\n')
  print('| true depth | detections | z error | abs z error | abs x error | abs h, w, l error | '
        'abs alpha error mod pi |')
  print('|---|---|---|---|---|---|---|')
  for lo, hi in ((0, 15), (15, 30), (30, 60)):
    m = (e[:, 0] >= lo) & (e[:, 0] < hi)
    if m.any():
      dims = ', '.join(f'{v:.2f}' for v in np.median(abs(e[m, 3:6]), 0))
      print(f'| {lo}-{hi} m | {m.sum()} | {np.median(e[m, 1]):+.2f} m | '
            f'{np.median(abs(e[m, 1])):.2f} m | {np.median(abs(e[m, 2])):.2f} m | {dims} m | '
            f'{np.median(abs(e[m, 6])):.2f} rad |')

  print('\n| replaced by the truth | devkit BEV | devkit 3D | CenterNet BEV | CenterNet 3D |')
  print('|---|---|---|---|---|')
  for fix in FIXES:
    variant = {}
    for i in ids:
      variant[i] = []
      for d in dets[i]:
        g = _match(d, cars[i])
        variant[i].append(d if g is None else replaced(d, g, fix))
    out = []
    for table in (kitti_eval.MIN_OVERLAPS, kitti_eval.CENTERNET_MIN_OVERLAPS):
      m = kitti_eval.evaluate_kitti(gt, variant, classes=('Car',), min_overlaps=table,
                                    min_height_scale=args.min_height_scale)
      out += [m['bev_AP_Car_moderate'], m['3d_AP_Car_moderate']]
    print(f"| {' + '.join(fix) or 'nothing (as predicted)'} | "
          + ' | '.join(f'{v:.3f}' for v in out) + ' |')


if __name__ == '__main__':
  main()

"""How precise must a monocular 3D detector be for a KITTI 3D AP? Perturbed ground truth.

Every ground-truth car of a KITTI-layout validation split becomes a detection whose depth is
scaled along its viewing ray by (1 + e), e ~ N(0, depth_sd), whose rotation_y is off by
N(0, rot_sd) radians and whose h, w, l are off by N(0, dim_sd) metres each (the 2D box is kept,
so 2D AP stays 1). Scores are random, so nothing ranks the good boxes first: the AP is about the
fraction of cars whose 3D box still passes the overlap. The table gives moderate-car BEV and 3D
AP (40-point) with the devkit's overlaps (Car 0.7) and CenterNet's (Car 0.5) per error level.

First row: the upper bound of the official decoding. Perfect heads (true depth, dimensions and
alpha, the 2D box centre) through ``tasks.ddd.locate``, which puts the 3D centre where the 2D box
centre is, as the official ``ddd2locrot`` does; the projected 3D centre is elsewhere whenever
the box is seen at an angle or truncated.

  python experiments/ddd_tolerance.py --root data/shapes_ddd [--split val]

experiments/ddd.md has the table for the built-in shapes_ddd set and what it implies.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from centernet_jax.data import kitti
from centernet_jax.evaluation import kitti as kitti_eval
from centernet_jax.tasks import ddd

DEPTH_SD = (0.0, 0.02, 0.04, 0.06, 0.08)
ROT_SD = (0.0, 0.1, 0.2, 0.3)


def _cars(gt: dict, detect) -> dict:
  """image id -> [detect(car)] for the ground-truth cars of ``gt``, in file order."""
  return {image_id: [detect(o) for o in objects if o['type'] == 'Car']
          for image_id, objects in gt.items()}


def perturbed(gt: dict, rng: np.random.Generator, depth_sd: float, rot_sd: float,
              dim_sd: float) -> dict:
  """Detections: the ground-truth cars of ``gt`` with the errors drawn from ``rng``."""

  def detect(o):
    loc = np.asarray(o['location'], float)
    loc = loc * (1 + rng.normal(0, depth_sd))  # along the viewing ray (the camera is at 0)
    return dict(o, location=loc.tolist(),
                rotation_y=float(o['rotation_y'] + rng.normal(0, rot_sd)),
                dimensions=(np.asarray(o['dimensions']) + rng.normal(0, dim_sd, 3)).tolist(),
                score=float(rng.uniform(0.5, 1.0)))

  return _cars(gt, detect)


def official_decoding(gt: dict, calibs: dict, rng: np.random.Generator) -> dict:
  """Detections from perfect heads through the official decoding (the 2D box centre).

  Scores are random, as in :func:`perturbed`.
  """
  dets = {}
  for image_id, objects in gt.items():

    def detect(o, calib=calibs[image_id]):
      x1, y1, x2, y2 = o['bbox']
      loc, rot_y = ddd.locate(np.float32([[(x1 + x2) / 2, (y1 + y2) / 2]]),
                              np.float32([o['location'][2]]), np.float32([o['dimensions']]),
                              np.float32([o['alpha']]), calib)
      return dict(o, location=loc[0].tolist(), rotation_y=float(rot_y[0]),
                  score=float(rng.uniform(0.5, 1.0)))

    dets.update(_cars({image_id: objects}, detect))
  return dets


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True, help='KITTI layout (training/label_2, ImageSets)')
  parser.add_argument('--split', default='val')
  parser.add_argument('--dim_sd', type=float, default=0.1)
  parser.add_argument('--min_height_scale', type=float, default=384 / 1242,
                      help='eval.kitti_min_height_scale (shapes_ddd at 384 px: 384 / 1242)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  with open(os.path.join(args.root, 'ImageSets', f'{args.split}.txt')) as f:
    ids = [int(line) for line in f if line.strip()]
  gt = kitti_eval.read_label_dir(os.path.join(args.root, 'training', 'label_2'), ids)
  calibs = {i: kitti.read_calib(os.path.join(args.root, 'training', 'calib', f'{i:06d}.txt'))
            for i in ids}
  rng = np.random.default_rng(args.seed)

  def row(dets):
    out = []
    for table in (kitti_eval.MIN_OVERLAPS, kitti_eval.CENTERNET_MIN_OVERLAPS):
      m = kitti_eval.evaluate_kitti(gt, dets, classes=('Car',), min_overlaps=table,
                                    min_height_scale=args.min_height_scale)
      out += [m['bev_AP_Car_moderate'], m['3d_AP_Car_moderate']]
    return ' | '.join(f'{v:.2f}' for v in out) + ' |'

  print('| depth sd (relative) | rotation sd (rad) | devkit BEV | devkit 3D | CenterNet BEV | '
        'CenterNet 3D |')
  print('|---|---|---|---|---|---|')
  decoded = official_decoding(gt, calibs, rng)
  print('| perfect heads, official decoding (2D box centre) | | ' + row(decoded))
  for depth_sd in DEPTH_SD:
    for rot_sd in ROT_SD:
      print(f'| {depth_sd:.2f} | {rot_sd:.1f} | '
            + row(perturbed(gt, rng, depth_sd, rot_sd, args.dim_sd)))
  off = np.array([[abs(d['location'][k] - o['location'][k]) for k in (0, 1)]
                  for i in ids for o, d in zip([o for o in gt[i] if o['type'] == 'Car'],
                                               decoded[i], strict=True)
                  if o['truncated'] < 0.05]).reshape(-1, 2)
  print(f'\nOfficial decoding with perfect heads, {len(off)} untruncated cars: the 3D centre is '
        f'off by a median {np.median(off[:, 0]):.2f} m laterally and {np.median(off[:, 1]):.2f} m '
        'vertically.')


if __name__ == '__main__':
  main()

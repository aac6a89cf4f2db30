"""The ddd analysis scripts of experiments/ (ddd_tolerance.py, ddd_errors.py) on a tiny
generated shapes_ddd set: exact detections score 1, the known errors cost what they must."""

from __future__ import annotations

import os

import numpy as np
import pytest

from centernet_jax.data import kitti, shapes_ddd
from tests.conftest import load_experiment


def _load(name):
  return load_experiment(name)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  # 40 images: about 60 moderate cars. The devkit's AP samples 41 score thresholds, one per
  # true positive, so with fewer than 40 true objects even exact detections score below 1.
  out = str(tmp_path_factory.mktemp('sd'))
  shapes_ddd.generate(out, num_train=1, num_val=40)
  return out


def _cars(root):
  with open(os.path.join(root, 'ImageSets', 'val.txt')) as f:
    ids = [int(line) for line in f if line.strip()]
  label_dir = os.path.join(root, 'training', 'label_2')
  return {i: kitti.read_label_file(os.path.join(label_dir, f'{i:06d}.txt')) for i in ids}


def test_tolerance_table_is_exact_without_errors_and_worse_with_them(root, capsys):
  tol = _load('ddd_tolerance')
  tol.main(['--root', root])
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| 0.')]
  cells = {tuple(line.split('|')[1:3]): [float(v) for v in line.split('|')[3:7]]
           for line in lines}
  assert cells[(' 0.00 ', ' 0.0 ')] == [1.0, 1.0, 1.0, 1.0]
  assert max(cells[(' 0.08 ', ' 0.3 ')]) < 1.0


def test_perturbed_moves_cars_along_their_ray_and_only_cars(root):
  tol = _load('ddd_tolerance')
  gt = _cars(root)
  dets = tol.perturbed(gt, np.random.default_rng(0), 0.1, 0.0, 0.0)
  for i, objects in gt.items():
    cars = [o for o in objects if o['type'] == 'Car']
    assert len(dets[i]) == len(cars)
    for o, d in zip(cars, dets[i], strict=True):
      a, b = np.array(o['location']), np.array(d['location'])
      np.testing.assert_allclose(np.cross(a, b), 0, atol=1e-9 * np.linalg.norm(a) ** 2)
      assert d['rotation_y'] == o['rotation_y'] and d['dimensions'] == o['dimensions']


def test_official_decoding_is_exact_for_a_box_seen_head_on():
  """The 2D box centre is the projected 3D centre's column for a car straight ahead, seen from
  behind: the official decoding's x is right; its y (box middle, not 3D middle) is off."""
  tol = _load('ddd_tolerance')
  p2 = shapes_ddd.camera_p2(384, 128)
  car = {'type': 'Car', 'dimensions': [1.5, 1.6, 3.9], 'location': [0.0, 1.65, 12.0],
         'rotation_y': -np.pi / 2}
  _, labels = shapes_ddd.render(np.random.default_rng(0), [car],
                                np.full((256, 768, 3), 90.0), p2)
  (det,) = tol.official_decoding({0: labels}, {0: p2}, np.random.default_rng(0))[0]
  centre = np.array(kitti.project(np.array([0.0, 1.65 - 0.75, 12.0]), p2))
  box = np.array(labels[0]['bbox'])
  assert abs((box[0] + box[2]) / 2 - centre[0]) < 0.6  # pixel rounding of the box
  assert det['location'][0] == pytest.approx(0.0, abs=0.05)
  assert det['location'][2] == pytest.approx(12.0, abs=0.01)  # P2's own translation


def test_errors_of_exact_results_cost_nothing(root, tmp_path, capsys):
  errors = _load('ddd_errors')
  run = tmp_path / 'run'
  out = run / 'eval' / 'step_5' / 'kitti'
  out.mkdir(parents=True)
  for i, objects in _cars(root).items():
    kitti.write_label_file(str(out / f'{i:06d}.txt'),
                           [dict(o, score=0.9) for o in objects if o['type'] == 'Car'])
  errors.main(['--run', str(run), '--step', '5', '--root', root])
  text = capsys.readouterr().out
  rows = [line for line in text.splitlines() if line.startswith('| nothing') or
          line.startswith('| depth + xy + rot + dims')]
  for row in rows:
    assert [float(v) for v in row.split('|')[2:6]] == [1.0, 1.0, 1.0, 1.0], row
  assert '+0.00 m' in text


def test_replaced_takes_each_quantity_from_the_truth():
  errors = _load('ddd_errors')
  truth = {'location': [2.0, 1.6, 20.0], 'rotation_y': 0.5, 'dimensions': [1.5, 1.6, 3.9]}
  det = {'location': [1.0, 1.0, 10.0], 'rotation_y': -1.0, 'dimensions': [1.0, 1.0, 1.0]}
  got = errors.replaced(det, truth, ('depth',))
  np.testing.assert_allclose(got['location'], [2.0, 2.0, 20.0])  # along its own ray
  got = errors.replaced(det, truth, ('xy',))
  np.testing.assert_allclose(got['location'], [1.0, 0.8, 10.0])  # the true ray, its own z
  got = errors.replaced(det, truth, ('depth', 'xy', 'rot', 'dims'))
  np.testing.assert_allclose(got['location'], truth['location'])
  assert (got['rotation_y'], got['dimensions']) == (0.5, truth['dimensions'])

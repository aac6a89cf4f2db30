"""Monocular 3D (ddd) through predict: 3D boxes in metres from each image's camera, the json,
the picture (projected boxes and a bird's-eye view) and the camera's sources (argument, KITTI
layout, Detector, the official default with a warning); the drawing functions themselves."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from centernet_jax import (
  boxes,
  checkpoint,
  config_lib,
  export,
  inference,
  models,
  predict,
  serving,
  state,
  tasks,
)
from centernet_jax.data import kitti
from centernet_jax.evaluation import visualize
from centernet_jax.models import build_model
from centernet_jax.tasks import ddd

HW = (64, 192)  # the fit_width canvas (h, w)
NAMES = list(kitti.CLASS_NAMES)
# A camera other than the default: KITTI's scaled to a 192 px wide image.
P2 = np.array([[110.0, 0.0, 95.0, 6.0], [0.0, 110.0, 30.0, 0.1], [0.0, 0.0, 1.0, 0.005]],
              np.float32)


def _config():
  c = config_lib.base_config('ddd')
  c.data.input_hw = HW
  c.data.input_size = HW[1]
  c.data.eval_mode = 'fit_width'  # official DddDetector.pre_process
  c.data.eval_size = HW[1]
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.model.arch = 'resnet_tiny'
  c.model.head_conv = 8
  c.eval.K = 6
  return c


def _random_variables(model, seed=0):
  """He-normal kernels, zero biases, identity BatchNorm: no compilation (the test machine is
  slow at compiling an init)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, inference.abstract_variables(model, HW))


def _save(path):
  """A tiny ddd checkpoint with random weights; head biases give depths ~12 m, car-like sizes
  and 2D boxes ~6 x 5 output pixels, so the boxes lie in front of the camera."""
  c = tasks.resolve_config(_config(), 3)
  variables = _random_variables(build_model(c.model))
  params = variables['params']
  for head, bias in (('dep', [-2.5]), ('dim', [1.5, 1.6, 3.9]), ('wh', [6.0, 5.0])):
    params[head]['2']['bias'] = np.array(bias, np.float32)
  for head in ('rot', 'dep', 'dim', 'wh'):
    params[head]['2']['kernel'] *= 3.0
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(path))
  meta = {'task': c.task, 'model': c.model.to_dict(), 'class_names': NAMES,
          'category_ids': [1, 2, 3]}
  ckpt.save(state.TrainState(step=np.zeros((), np.int32), params=params,
                             batch_stats=variables['batch_stats'], opt_state={}), meta,
            force=True)
  ckpt.wait()
  ckpt.close()
  return path


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _save(str(tmp_path_factory.mktemp('ddd_workdir')))


@pytest.fixture(scope='module')
def detector(workdir):
  return predict.Detector.from_checkpoint(_config(), workdir)


def _image(h=50, w=170, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _kitti_layout(root, name, image, p2):
  """root/training/image_2/<name>.png and root/training/calib/<name>.txt; the image path."""
  for sub in ('image_2', 'calib'):
    os.makedirs(os.path.join(root, 'training', sub), exist_ok=True)
  path = os.path.join(root, 'training', 'image_2', name + '.png')
  Image.fromarray(image).save(path)
  kitti.write_calib(os.path.join(root, 'training', 'calib', name + '.txt'), p2)
  return path


def test_detector_returns_3d_boxes_from_the_camera(detector, workdir):
  """Oracles: the task's post-process on the detections mapped back (the evaluation's path);
  the 2D centre through the fit_width letterbox's inverse affine; the 3D geometry (the box's
  middle projects onto the 2D centre at the detected depth, rotation_y from alpha and the
  viewing ray, corners and their projection, the KITTI line)."""
  config, model, variables, _, _ = inference.restore(_config(), workdir)
  predictor = detector._predictor  # noqa: SLF001 - its compilation, not a second one
  image = _image()
  dets = detector([image], score_threshold=0.0, calib=P2)[0]
  assert len(dets) == config.eval.K
  batch = inference.preprocess(image, config.data)
  assert tuple(batch['input_hw'][0]) == HW
  want = ddd.ddd_post_process(predictor.detect(variables, batch), P2[None],
                              peak_thresh=-1.0)[0]
  raw = jax.device_get(predictor(variables, batch['image']))
  inverse = boxes.get_affine_transform(batch['center'][0], batch['scale'][0], HW[::-1], inv=True)
  out_h, out_w = models.output_hw(model, *HW)
  stride = np.array([HW[1] / out_w, HW[0] / out_h])
  order = np.argsort(-want['scores'], kind='stable')
  depths = []
  for det, k in zip(dets, order, strict=True):
    assert det['score'] == pytest.approx(float(want['scores'][k]), abs=1e-6)
    label = int(want['classes'][k])
    assert (det['label'], det['category_id'], det['category_name']) == (
        label, label + 1, NAMES[label])
    np.testing.assert_allclose(det['bbox_xyxy'], want['boxes'][k], atol=1e-4)
    for key, ref in (('alpha', 'alpha'), ('dimensions', 'dims'), ('location', 'locations'),
                     ('rotation_y', 'rotation_y'), ('corners', 'corners')):
      np.testing.assert_allclose(det[key], want[ref][k], rtol=1e-5, atol=1e-5)
    # The 2D centre: raw output-map centre x stride, through the inverse letterbox.
    centre = boxes.affine_transform(raw['centers'][0, k] * stride, inverse)
    x1, y1, x2, y2 = det['bbox_xyxy']
    np.testing.assert_allclose([(x1 + x2) / 2, (y1 + y2) / 2], centre, atol=1e-3)
    # The 3D geometry against the camera.
    h, w, length = det['dimensions']
    middle = np.array(det['location']) - [0.0, h / 2, 0.0]
    np.testing.assert_allclose(kitti.project(middle, P2), centre, atol=1e-2)
    ry = det['alpha'] + math.atan2(centre[0] - P2[0, 2], P2[0, 0])
    ry = ry - 2 * math.pi if ry > math.pi else ry + 2 * math.pi if ry < -math.pi else ry
    assert det['rotation_y'] == pytest.approx(ry, abs=1e-4)
    np.testing.assert_allclose(det['corners'], kitti.box3d_corners(
        np.float32([h, w, length]), np.float32(det['location']),
        np.float32(det['rotation_y'])), atol=1e-4)
    np.testing.assert_allclose(det['corners_2d'],
                               kitti.project(np.array(det['corners']), P2), atol=1e-2)
    line = kitti.parse_label_line(det['kitti'], 'det')
    assert line['type'] == NAMES[label] and line['score'] == round(det['score'], 2)
    np.testing.assert_allclose(line['location'], det['location'], atol=0.006)
    assert (line['truncated'], line['occluded']) == (0.0, 0)  # official save_results
    depths.append(middle[2])
  assert np.all(np.diff([d['score'] for d in dets]) <= 0)
  assert min(depths) > 5  # the rescaled depth head: in front of the camera
  assert len({round(d['rotation_y'], 3) for d in dets}) > 3  # angles spread


def test_where_the_camera_comes_from(detector, workdir, tmp_path, caplog):
  """calib argument > the image's KITTI calib file > the Detector's calib > the official
  default (one warning per Detector); one camera for all images or one per image."""
  image = _image(seed=1)
  given = detector([image], 0.0, calib=P2)[0]
  in_layout = _kitti_layout(str(tmp_path / 'kitti'), '000007', image, P2)
  assert predict.kitti_calib_path(in_layout) == str(tmp_path / 'kitti' / 'training' / 'calib' /
                                                    '000007.txt')
  assert detector([in_layout], 0.0)[0] == given
  calib_file = tmp_path / 'camera.txt'
  kitti.write_calib(str(calib_file), P2)
  assert detector([image], 0.0, calib=str(calib_file))[0] == given
  p2, source = detector.calibration(in_layout)
  np.testing.assert_array_equal(p2, P2)
  assert source.endswith(os.path.join('calib', '000007.txt'))
  assert detector.calibration(image, P2)[1] == 'given'

  with caplog.at_level(logging.WARNING):
    default = detector([image, image], 0.0)
  assert caplog.text.count('no camera calibration given') == 1
  assert default[0] == default[1] != given
  assert detector.calibration(image)[1] == predict.DEFAULT_CALIB_SOURCE
  np.testing.assert_array_equal(detector.calibration(image)[0], ddd.DEFAULT_CALIB)
  # Same 2D detections, other 3D boxes.
  assert [d['bbox_xyxy'] for d in default[0]] == [d['bbox_xyxy'] for d in given]

  # The Detector's own camera (a path or an array), for images without one.
  own = predict.Detector(detector.config, None, {}, {'class_names': NAMES,
                                                     'category_ids': [1, 2, 3]},
                         calib=str(calib_file))
  np.testing.assert_array_equal(own.calib, P2)
  assert own.calibration(image)[1] == 'detector'
  assert own.calibration(in_layout)[1].endswith('000007.txt')
  detector.calib = P2
  try:
    assert detector([image], 0.0)[0] == given
  finally:
    detector.calib = None
  mixed = detector([image, image, in_layout], 0.0, calib=[None, P2, ddd.DEFAULT_CALIB])
  assert mixed[0] == default[0] and mixed[1] == given
  assert mixed[2] == default[0]  # the argument beats the KITTI file
  # [3, 3] intrinsics are [K | 0].
  np.testing.assert_array_equal(predict.as_calib(P2[:, :3])[:, 3], 0.0)

  with pytest.raises(ValueError, match='2 calibrations for 1 images'):
    detector([image], calib=[P2, P2])
  with pytest.raises(ValueError, match=r'\[3, 4\] P2 or \[3, 3\] intrinsics, got shape \(2, 4\)'):
    detector([image], calib=P2[:2])
  with pytest.raises(ValueError, match='focal lengths'):
    predict.as_calib(np.zeros((3, 4)))
  with pytest.raises(ValueError, match='calib file not found: /no/calib.txt'):
    detector([image], calib='/no/calib.txt')
  ctdet, meta = config_lib.base_config('ctdet'), {'class_names': ['a'], 'category_ids': [1]}
  with pytest.raises(ValueError, match="calib is for monocular 3D models .*'ctdet'"):
    predict.Detector(ctdet, None, {}, meta, calib=P2)
  boxes_only = predict.Detector(ctdet, None, {}, meta)
  with pytest.raises(ValueError, match="calib is for monocular 3D models .*'ctdet'"):
    boxes_only([image], calib=P2)
  with pytest.raises(ValueError, match="--calib is for monocular 3D models .*'ctdet'"):
    predict.predict_files(boxes_only, [in_layout], str(tmp_path / 'no'), calib=str(calib_file))
  assert not os.path.exists(tmp_path / 'no')


def test_predict_files_write_3d_json_and_birds_eye_pictures(detector, tmp_path):
  image = _image(seed=2)
  in_layout = _kitti_layout(str(tmp_path / 'kitti'), '000003', image, P2)
  plain = str(tmp_path / 'street.png')
  Image.fromarray(image).save(plain)
  out = tmp_path / 'out'
  written = predict.predict_files(detector, [in_layout, plain], str(out), 0.0, grid=True)
  assert sorted(os.path.basename(p) for p in written) == [
      '000003.json', '000003.png', 'grid.png', 'street.json', 'street.png']
  found = json.loads((out / '000003.json').read_text())
  assert found['calib_source'].endswith('000003.txt')
  np.testing.assert_allclose(found['calib'], P2)
  assert found['detections'] == detector([in_layout], 0.0)[0]  # the json round trip is exact
  assert set(found['detections'][0]) == {
      'bbox_xyxy', 'score', 'label', 'category_id', 'category_name', 'alpha', 'dimensions',
      'location', 'rotation_y', 'corners', 'corners_2d', 'kitti'}
  defaulted = json.loads((out / 'street.json').read_text())
  assert defaulted['calib_source'] == predict.DEFAULT_CALIB_SOURCE
  np.testing.assert_allclose(defaulted['calib'], ddd.DEFAULT_CALIB)

  with Image.open(out / '000003.png') as png:
    picture = np.asarray(png.convert('RGB'))
  h, w = image.shape[:2]
  side = max(h, 256)  # the bird's-eye view's minimum side
  assert picture.shape == (side, w + side, 3)
  dets = found['detections']
  want = visualize.draw_ddd(image, np.array([d['corners_2d'] for d in dets]),
                            np.array([d['corners'] for d in dets]),
                            np.array([d['score'] for d in dets]),
                            np.array([d['label'] for d in dets]), NAMES, 0.0)
  np.testing.assert_array_equal(picture, want)
  panel = picture[:, w:]
  colors = {tuple(c) for c in panel.reshape(-1, 3).tolist()}
  assert {visualize.class_color(d['label']) for d in dets} <= colors  # every footprint drawn

  # One camera for every image: the file given wins over the KITTI layout.
  other = P2.copy()
  other[0, 0] = other[1, 1] = 150.0
  kitti.write_calib(str(tmp_path / 'other.txt'), other)
  predict.predict_files(detector, [in_layout], str(tmp_path / 'given'), 0.0,
                        calib=str(tmp_path / 'other.txt'))
  record = json.loads((tmp_path / 'given' / '000003.json').read_text())
  assert record['calib_source'] == str(tmp_path / 'other.txt')
  assert record['detections'] == detector([in_layout], 0.0, calib=other)[0]


def test_predict_command_line_takes_calib(workdir, tmp_path):
  image = _image(seed=3)
  path = str(tmp_path / 'a.png')
  Image.fromarray(image).save(path)
  kitti.write_calib(str(tmp_path / 'cam.txt'), P2)
  config_path = tmp_path / 'ddd_tiny.py'
  config_path.write_text(
      'import sys\n'
      f'sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})\n'
      'from tests.predict_ddd_test import _config\n\n\n'
      'def get_config():\n  return _config()\n')
  proc = subprocess.run(
      [sys.executable, '-m', 'centernet_jax.predict', '--config', str(config_path),
       '--workdir', workdir, '--images', path, '--calib', str(tmp_path / 'cam.txt'),
       '--score_threshold', '0', '--output', str(tmp_path / 'out')],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / 'out' / 'a.json').read_text())
  assert record['calib_source'] == str(tmp_path / 'cam.txt')
  assert len(record['detections']) == 6
  assert 'no camera calibration given' not in proc.stderr


# --- Drawing ----------------------------------------------------------------------------------


def _car(x, z, ry=0.0):
  """Corners of a 1.5 x 1.6 x 4 m box standing on y = 1.6 at (x, z)."""
  return kitti.box3d_corners(np.float32([1.5, 1.6, 4.0]), np.float32([x, 1.6, z]),
                             np.float32(ry))


def test_birds_eye_view_puts_footprints_at_their_place():
  size, depth = 301, 60.0
  ppm = (size - 1) / depth
  corners = np.stack([_car(0.0, 30.0), _car(-10.0, 15.0, math.pi / 2)])
  panel = visualize.draw_birds_eye_view(corners, [0.9, 0.8], [1, 0], 0.3, size=size,
                                        max_depth=depth)
  assert panel.shape == (size, size, 3)
  cx, cy = (size - 1) / 2, size - 1
  # The car at z = 30 heads +x (ry = 0): its front edge (x = +2 m) is a thick vertical line.
  col = round(cx + 2.0 * ppm)
  for z in (29.5, 30.0, 30.5):
    assert tuple(panel[round(cy - z * ppm), col]) == visualize.class_color(1)
  # The second box is turned: 4 m along z, 1.6 m along x, around x = -10, z = 15.
  assert tuple(panel[round(cy - 17.0 * ppm), round(cx - 10.8 * ppm)]) == visualize.class_color(0)
  # Below the threshold: not drawn.
  faint = visualize.draw_birds_eye_view(corners, [0.9, 0.1], [1, 0], 0.3, size=size,
                                        max_depth=depth)
  assert visualize.class_color(0) not in {tuple(c) for c in faint.reshape(-1, 3).tolist()}
  with pytest.raises(ValueError, match='disagree in length'):
    visualize.draw_birds_eye_view(corners, [0.9], [1, 0])


def test_boxes_3d_are_projected_and_boxes_behind_the_camera_skipped():
  image = np.zeros((120, 400, 3), np.uint8)
  corners = np.stack([_car(2.0, 12.0), _car(0.0, -5.0)])  # the second is behind the camera
  projected = kitti.project(corners, P2)
  drawn = visualize.draw_boxes_3d(image, projected, corners, [0.9, 0.9], [1, 1], NAMES)
  color = visualize.class_color(1)
  inside = 0
  for u, v in np.round(projected[0]).astype(int):  # every corner of the front box is drawn
    if 1 <= u < 399 and 1 <= v < 119:
      inside += 1
      assert color in {tuple(c) for c in drawn[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3).tolist()}
  assert inside >= 4
  alone = visualize.draw_boxes_3d(image, projected[:1], corners[:1], [0.9], [1], NAMES)
  np.testing.assert_array_equal(drawn, alone)  # the box behind the camera adds nothing
  both = visualize.draw_ddd(image, projected, corners, [0.9, 0.9], [1, 1], NAMES, 0.3,
                            min_panel=200)
  assert both.shape == (200, 600, 3)
  np.testing.assert_array_equal(both[:120, :400], drawn)
  assert not both[120:, :400].any()  # padded below the image


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_export_serves_what_objects_3d_takes(fmt, workdir, detector, tmp_path):
  """A served ddd model's outputs, mapped back unclipped (served.to_original's ddd default) and
  through the task's 3D post-process with the image's camera, are predict's 3D boxes."""
  info = export.run(_config(), workdir, fmt, str(tmp_path))
  served = serving.load(str(tmp_path))
  K = info['K']
  assert set(info['outputs']) == {'boxes', 'centers', 'wh', 'scores', 'classes', 'rot', 'depth',
                                  'dims'}
  assert info['outputs']['rot']['shape'] == ['B', K, 8]
  assert info['outputs']['depth']['units'].startswith('metres')
  assert info['outputs']['centers']['units'] == 'x, y pairs in input-canvas pixels'
  assert served.point_keys == ('boxes', 'centers', 'wh') and info['task'] == 'ddd'

  image = _image()
  canvas, inverse = serving.letterbox(image, HW, info['eval_mode'])
  out = served(np.stack([canvas, canvas]))
  np.testing.assert_array_equal(out['depth'][0], out['depth'][1])
  one = served.to_original({k: v[0] for k, v in out.items()}, inverse, image.shape[:2])
  got = ddd.objects_3d(one, P2)
  want = detector([image], score_threshold=0.0, calib=P2)[0]
  order = np.argsort(-got['scores'], kind='stable')
  np.testing.assert_allclose(got['scores'][order], [d['score'] for d in want], atol=1e-6)
  for key, ref in (('locations', 'location'), ('rotation_y', 'rotation_y'),
                   ('dims', 'dimensions'), ('boxes', 'bbox_xyxy')):
    np.testing.assert_allclose(got[key][order], [d[ref] for d in want], rtol=1e-4, atol=1e-3)
  # Clipping the centres to the image (the other tasks' default) would move the 3D boxes whose
  # centre lies in the canvas padding; the ddd default leaves them as the evaluation does.
  unclipped = served.to_original({k: v[0] for k, v in out.items()}, inverse, image.shape[:2],
                                 clip=False)
  np.testing.assert_array_equal(unclipped['centers'], one['centers'])


@pytest.mark.parametrize('arch,depth,hw', [('dla', 34, (384, 1280)), ('resnet', 18, (128, 384))])
def test_full_size_ddd_model_exports_by_shape(arch, depth, hw):
  """The official-size models behind configs/ddd_dla34_kitti.py and shapes_ddd.py: the serving
  function's outputs at their canvas, by eval_shape (no compute)."""
  c = _config()
  c.model.arch, c.model.depth, c.model.head_conv = arch, depth, 256 if arch == 'dla' else 64
  c = tasks.resolve_config(c, 3)
  model = build_model(c.model)
  serve = export.make_serving_fn(c, model, height=hw[0], width=hw[1])
  variables = inference.abstract_variables(model, hw)
  out = jax.eval_shape(serve, variables, jax.ShapeDtypeStruct((2, *hw, 3), np.uint8))
  K = c.eval.K
  assert {k: v.shape for k, v in out.items()} == {
      'boxes': (2, K, 4), 'centers': (2, K, 2), 'wh': (2, K, 2), 'scores': (2, K),
      'classes': (2, K), 'rot': (2, K, 8), 'depth': (2, K), 'dims': (2, K, 3)}

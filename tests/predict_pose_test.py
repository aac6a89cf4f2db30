"""multi_pose through predict (per-image keypoints, json, skeleton pictures) and export /
serving (keypoints and keypoint_scores served, scaled as the boxes, named in export.json)."""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
import optax
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
from centernet_jax.evaluation import visualize
from centernet_jax.models import build_model

SIZE = 64
CANVAS = 96  # keep_res: (64 | 31) + 1
NAMES = [f'{side}_{part}' if side else part for side, part in
         [('', 'nose'), ('left', 'eye'), ('right', 'eye'), ('left', 'hand'), ('right', 'hand')]]
SKELETON = [[0, 1], [0, 2], [1, 3], [2, 4]]


def _config(num_joints=5):
  c = config_lib.base_config('multi_pose')
  c.data.input_size = SIZE
  c.data.num_joints = num_joints
  c.data.flip_pairs = ((1, 2), (3, 4)) if num_joints == 5 else c.data.flip_pairs
  c.eval.oks_sigmas = (0.05,) * num_joints
  c.model.arch = 'resnet_tiny'
  c.model.head_conv = 8
  c.eval.K = 6
  return c


def _save(path, num_joints, meta_extra):
  """A tiny multi_pose checkpoint, rescaled so scores, sizes and joint offsets spread."""
  c = tasks.resolve_config(_config(num_joints), 1)
  model = build_model(c.model)
  init = functools.partial(state.init_state, model, optax.adam(1e-3),
                           image_shape=(1, SIZE, SIZE, 3))
  initial = jax.jit(init)(jax.random.PRNGKey(0))
  params = dict(initial.params)
  params['deconv_layers'] = jax.tree.map(lambda x: x * 100.0 if x.ndim == 4 else x,
                                         params['deconv_layers'])
  for head, factor in (('wh', 20.0), ('hps', 20.0), ('hm_hp', 30.0)):
    params[head] = jax.tree.map(lambda x, f=factor: x * f, params[head])
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(path))
  meta = {'task': c.task, 'model': c.model.to_dict(), 'class_names': ['person'],
          'category_ids': [1], **meta_extra}
  ckpt.save(initial.replace(params=params), meta, force=True)
  ckpt.wait()
  ckpt.close()
  return path


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _save(str(tmp_path_factory.mktemp('pose_workdir')), 5,
               {'keypoint_names': NAMES, 'skeleton': SKELETON})


@pytest.fixture(scope='module')
def detector(workdir):
  return predict.Detector.from_checkpoint(_config(), workdir)


def _images():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
          rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)]


def test_detector_returns_keypoints_in_original_pixels(detector, workdir):
  """Oracle: the task's raw predictions (output map) times the stride, through the letterbox's
  inverse affine, clipped to the image."""
  assert detector.keypoint_names == NAMES and detector.skeleton == [tuple(s) for s in SKELETON]
  config, model, variables, _, _ = inference.restore(_config(), workdir)
  predict_fn = jax.jit(tasks.get('multi_pose').make_predict_fn(config, model))
  for image in _images():
    dets = detector([image], score_threshold=0.0)[0]
    assert len(dets) == config.eval.K
    batch = inference.preprocess(image, config.data)
    raw = jax.device_get(predict_fn(variables, batch['image']))
    in_h, in_w = batch['input_hw'][0]
    out_h, out_w = models.output_hw(model, int(in_h), int(in_w))
    inverse = boxes.get_affine_transform(batch['center'][0], batch['scale'][0], (in_w, in_h),
                                         inv=True)
    h, w = image.shape[:2]
    for k, det in enumerate(dets):  # scores are distinct: same order
      assert det['score'] == pytest.approx(float(raw['scores'][0, k]), abs=1e-6)
      canvas = raw['keypoints'][0, k] * np.array([in_w / out_w, in_h / out_h])
      want = boxes.affine_transform(canvas, inverse)
      want = np.clip(want, 0, [w, h])
      np.testing.assert_allclose(det['keypoints'], want, atol=1e-3)
      np.testing.assert_allclose(det['keypoint_scores'], raw['keypoint_scores'][0, k], atol=1e-6)
    kps = np.array([d['keypoints'] for d in dets])
    assert kps.shape == (config.eval.K, 5, 2)
    assert len(np.unique(np.round(kps, 2))) > 10  # joints spread, not all one point
  snapped = np.array([d['keypoint_scores'] for im in _images()
                      for d in detector([im], score_threshold=0.0)[0]])
  assert np.all((snapped == 0) | (snapped > config.eval.hp_threshold))


def test_predict_files_write_keypoints_and_skeletons(detector, tmp_path):
  path = tmp_path / 'person.png'
  image = _images()[0]
  Image.fromarray(image).save(path)
  written = predict.predict_files(detector, [str(path)], str(tmp_path / 'out'), 0.0)
  record = json.loads((tmp_path / 'out' / 'person.json').read_text())
  assert record['keypoint_names'] == NAMES and record['skeleton'] == SKELETON
  dets = record['detections']
  assert dets == detector([str(path)], score_threshold=0.0)[0]  # floats survive the json round trip
  assert all(len(d['keypoints']) == 5 and len(d['keypoint_scores']) == 5 for d in dets)
  with Image.open(written[1]) as png:
    picture = np.asarray(png.convert('RGB'))
  boxes_only = visualize.draw_detections(
      image, np.array([d['bbox_xyxy'] for d in dets]), np.array([d['score'] for d in dets]),
      np.zeros(len(dets), np.int32), ['person'], score_threshold=0.0)
  changed = np.any(picture != boxes_only, axis=-1)
  assert changed.any()  # the skeletons
  colors = {tuple(c) for c in picture[changed].tolist()}
  assert {visualize.SIDE_COLORS[visualize.LEFT], visualize.SIDE_COLORS[visualize.RIGHT]} <= colors


def test_coco_defaults_without_meta(tmp_path):
  """A checkpoint without keypoint names (e.g. converted official weights) with 17 joints uses
  the COCO names and skeleton; the same with 5 joints knows no names and draws no limbs."""
  path = _save(str(tmp_path / 'coco'), 17, {})
  det = predict.Detector.from_checkpoint(_config(17), path)
  assert det.keypoint_names == list(visualize.COCO_KEYPOINT_NAMES)
  assert det.skeleton == list(visualize.COCO_SKELETON)
  assert len(det([_images()[0]], score_threshold=0.0)[0][0]['keypoints']) == 17


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_export_serves_keypoints(fmt, workdir, detector, tmp_path):
  info = export.run(_config(), workdir, fmt, str(tmp_path))
  served = serving.load(str(tmp_path))
  K = info['K']
  assert info['outputs']['keypoints'] == {'dtype': 'float32', 'shape': ['B', K, 5, 2],
                                          'units': 'x, y pairs in input-canvas pixels'}
  assert info['outputs']['keypoint_scores']['shape'] == ['B', K, 5]
  assert 'snapped' in info['outputs']['keypoint_scores']['units']
  assert set(info['outputs']) == {'boxes', 'scores', 'classes', 'keypoints', 'keypoint_scores'}
  assert (info['task'], info['num_joints'], info['keypoint_names']) == ('multi_pose', 5, NAMES)
  assert info['skeleton'] == SKELETON and info['flip_pairs'] == [[1, 2], [3, 4]]
  assert served.point_keys == ('boxes', 'keypoints')

  image = _images()[0]
  canvas, inverse = serving.letterbox(image, (CANVAS, CANVAS), info['eval_mode'])
  out = served(np.stack([canvas, canvas]))  # a batch of 2 through the symbolic batch
  assert out['keypoints'].shape == (2, K, 5, 2) and out['keypoint_scores'].dtype == np.float32
  np.testing.assert_array_equal(out['keypoints'][0], out['keypoints'][1])
  one = served.to_original({k: v[0] for k, v in out.items()}, inverse, image.shape[:2])
  want = detector([image], score_threshold=0.0)[0]
  np.testing.assert_allclose(one['scores'], [d['score'] for d in want], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one['boxes'], [d['bbox_xyxy'] for d in want], atol=1e-3)
  np.testing.assert_allclose(one['keypoints'], [d['keypoints'] for d in want], atol=1e-3)
  np.testing.assert_allclose(one['keypoint_scores'], [d['keypoint_scores'] for d in want],
                             atol=1e-5)
  assert os.path.isfile(os.path.join(str(tmp_path), serving.METADATA_FILE))

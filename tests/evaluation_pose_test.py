"""Keypoint evaluation (OKS with pycocotools), keypoint results, skeleton drawing, and the
task-generic Evaluator on multi_pose results."""

from __future__ import annotations

import copy
import json
import types

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from centernet_jax.evaluation import coco as coco_eval
from centernet_jax.evaluation import visualize

THRESHOLDS = Params(iouType='keypoints').iouThrs  # OKS .50:.05:.95
COCO_SIGMAS = Params(iouType='keypoints').kpt_oks_sigmas


def _silent(_):
  pass


def _person(rng, image_id, ann_id, num_joints, side, cat=1):
  """A person annotation: box of side x side * 1.2 px, joints inside, v in {0, 1, 2}."""
  x, y = rng.uniform(0, 40, 2)
  w, h = side, side * 1.2
  xy = np.stack([rng.uniform(x, x + w, num_joints), rng.uniform(y, y + h, num_joints)], -1)
  v = rng.choice([0, 1, 2], num_joints, p=[0.2, 0.2, 0.6])
  v[0] = 2  # at least one labelled joint
  xy[v == 0] = 0.0  # COCO writes unlabelled joints as (0, 0)
  kps = np.concatenate([np.round(xy, 2), v[:, None]], -1).reshape(-1).tolist()
  return {'id': ann_id, 'image_id': image_id, 'category_id': cat, 'bbox': [x, y, w, h],
          'area': w * h * 0.7, 'iscrowd': 0, 'keypoints': kps,
          'num_keypoints': int((v > 0).sum())}


def _gt(anns, image_ids, num_joints, extra_categories=()):
  return {
    'images': [{'id': i, 'width': 400, 'height': 300, 'file_name': f'{i}.jpg'}
               for i in image_ids],
    'annotations': anns,
    'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person',
                    'keypoints': [f'j{k}' for k in range(num_joints)], 'skeleton': []},
                   *extra_categories],
  }


def _as_detection(ann, score=1.0, shift=None):
  kps = np.asarray(ann['keypoints'], np.float64).reshape(-1, 3)
  xy = kps[:, :2] + (0 if shift is None else shift)
  return {'image_id': ann['image_id'], 'category_id': ann['category_id'],
          'bbox': list(ann['bbox']), 'score': score,
          'keypoints': np.concatenate([xy, np.ones_like(xy[:, :1])], -1).reshape(-1).tolist()}


def oks_oracle(gt_kps, area, dt_xy, sigmas):
  """OKS from the formula: mean over labelled joints of exp(-d^2 / (2 s (2 sigma)^2))."""
  gt_kps = np.asarray(gt_kps, np.float64).reshape(-1, 3)
  d2 = np.sum((np.asarray(dt_xy, np.float64) - gt_kps[:, :2]) ** 2, -1)
  e = np.exp(-d2 / (2 * area * (2 * np.asarray(sigmas)) ** 2))
  return float(e[gt_kps[:, 2] > 0].mean())


def test_perfect_keypoints_give_one():
  rng = np.random.default_rng(0)
  # Areas 0.7 * 1.2 * side^2: 50 -> medium, 150 -> large.
  anns = [_person(rng, img, 10 + k, 17, side) for k, (img, side) in
          enumerate([(1, 50), (1, 150), (2, 60), (3, 140)])]
  gt = _gt(anns, [1, 2, 3, 4], 17)
  dets = [_as_detection(a, score=0.5 + 0.1 * k) for k, a in enumerate(anns)]
  before = copy.deepcopy(dets)
  metrics = coco_eval.evaluate_keypoints(gt, dets, log=_silent)
  assert dets == before
  assert list(metrics) == list(coco_eval.KEYPOINT_METRIC_NAMES)
  assert metrics == {name: pytest.approx(1.0) for name in coco_eval.KEYPOINT_METRIC_NAMES}
  # The same results carry boxes: the box metrics read them and ignore the keypoints.
  assert coco_eval.evaluate_detections(gt, dets, log=_silent)['AP'] == pytest.approx(1.0)
  # Image 4 has no person: evaluated over every image, a detection there is a false positive.
  fp = dict(dets[0], image_id=4, score=0.9)
  assert coco_eval.evaluate_keypoints(gt, dets + [fp], log=_silent)['kp_AP'] < 0.95
  assert coco_eval.evaluate_keypoints(gt, dets + [fp], image_ids=[1, 2, 3],
                                      log=_silent)['kp_AP'] == pytest.approx(1.0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_shifted_joints_lower_oks_as_the_formula_says(seed):
  """One person per image; its detection's joints shifted at random. Alone on its image, the
  detection matches at every OKS threshold <= its OKS: kp_AP = share of thresholds passed."""
  rng = np.random.default_rng(seed)
  num_joints = 5
  sigmas = rng.uniform(0.03, 0.12, num_joints)
  anns = [_person(rng, img, img, num_joints, side=rng.uniform(40, 160)) for img in range(1, 7)]
  gt = _gt(anns, range(1, 7), num_joints)
  seen = set()
  for ann in anns:
    shift = rng.normal(0, rng.uniform(1.0, 12.0), (num_joints, 2))
    det = _as_detection(ann, shift=shift)
    oks = oks_oracle(ann['keypoints'], ann['area'],
                     np.asarray(det['keypoints']).reshape(-1, 3)[:, :2], sigmas)
    assert np.min(np.abs(oks - THRESHOLDS)) > 1e-6  # no tie with a threshold
    m = coco_eval.evaluate_keypoints(gt, [det], image_ids=[ann['image_id']], log=_silent,
                                     oks_sigmas=sigmas)
    assert m['kp_AP'] == pytest.approx(np.mean(oks >= THRESHOLDS), abs=1e-12), oks
    assert m['kp_AP50'] == pytest.approx(float(oks >= .5))
    assert m['kp_AP75'] == pytest.approx(float(oks >= .75))
    assert m['kp_AR'] == pytest.approx(np.mean(oks >= THRESHOLDS), abs=1e-12)
    medium = 32 ** 2 <= ann['area'] <= 96 ** 2
    assert (m['kp_APm'] == -1) != medium and (m['kp_APl'] == -1) == medium
    seen.add(round(m['kp_AP'], 6))
  assert len(seen) >= 3  # the shifts span several thresholds


@pytest.mark.parametrize('seed', [0, 1])
def test_matches_direct_pycocotools(seed, tmp_path):
  """Several people per image, noisy detections and false positives (some without a box):
  the same stats as pycocotools' own loadRes + COCOeval('keypoints')."""
  rng = np.random.default_rng(seed)
  anns, dets, k = [], [], 0
  for img in range(1, 6):
    for _ in range(int(rng.integers(0, 4))):
      k += 1
      anns.append(_person(rng, img, k, 17, side=rng.uniform(30, 170)))
      dets.append(_as_detection(anns[-1], score=float(rng.uniform(0.1, 1)),
                                shift=rng.normal(0, rng.uniform(0.5, 8), (17, 2))))
    for _ in range(2):
      fp = _as_detection(_person(rng, img, 0, 17, side=rng.uniform(30, 170)),
                         score=float(rng.uniform(0, 1)))
      dets.append(fp)
  dets[-1].pop('bbox')  # keypoints-only result: area from the joints, as loadRes
  gt = _gt(anns, range(1, 6), 17)
  path = tmp_path / 'gt.json'
  path.write_text(json.dumps(gt))
  ours = coco_eval.evaluate_keypoints(str(path), dets, log=_silent)

  coco_gt = COCO(str(path))
  ref_dets = copy.deepcopy(dets)
  # loadRes picks its branch from the first entry (bbox): it needs the bbox on every entry.
  x, y = ref_dets[-1]['keypoints'][0::3], ref_dets[-1]['keypoints'][1::3]
  ref_dets[-1]['bbox'] = [min(x), min(y), max(x) - min(x), max(y) - min(y)]
  ref = COCOeval(coco_gt, coco_gt.loadRes(ref_dets), 'keypoints')
  ref.evaluate()
  ref.accumulate()
  ref.summarize()
  want = dict(zip(coco_eval.KEYPOINT_METRIC_NAMES, ref.stats.tolist(), strict=True))
  assert 0.05 < want['kp_AP'] < 0.95  # not degenerate
  assert ours == pytest.approx(want, abs=1e-12)


def test_box_only_categories_and_errors():
  rng = np.random.default_rng(3)
  person = _person(rng, 1, 1, 17, 80)
  ball = {'id': 2, 'image_id': 1, 'category_id': 5, 'bbox': [1, 1, 5, 5], 'area': 25,
          'iscrowd': 0}
  gt = _gt([person, ball], [1], 17, extra_categories=[{'id': 5, 'name': 'ball'}])
  ball_det = {'image_id': 1, 'category_id': 5, 'bbox': [1, 1, 5, 5], 'score': 0.9}
  m = coco_eval.evaluate_keypoints(gt, [_as_detection(person), ball_det], log=_silent)
  assert m['kp_AP'] == pytest.approx(1.0)  # the ball category is not part of the metric

  with pytest.raises(ValueError, match=r'16 OKS sigmas for 17 joints.*config.eval.oks_sigmas'):
    coco_eval.evaluate_keypoints(gt, [], oks_sigmas=COCO_SIGMAS[:16], log=_silent)
  short = dict(_as_detection(person), keypoints=[1.0] * 30)
  with pytest.raises(ValueError, match=r'detection 0 keypoints must be 51 finite numbers'):
    coco_eval.evaluate_keypoints(gt, [short], log=_silent)
  with pytest.raises(ValueError, match=r"detection 0 lacks key 'keypoints'"):
    coco_eval.evaluate_keypoints(gt, [dict(ball_det, category_id=1)], log=_silent)
  with pytest.raises(ValueError, match=r'category ids \[9\]'):
    coco_eval.evaluate_keypoints(gt, [dict(_as_detection(person), category_id=9)], log=_silent)
  boxes_only = _gt([ball], [1], 0, extra_categories=[{'id': 5, 'name': 'ball'}])
  boxes_only['categories'] = boxes_only['categories'][1:]
  with pytest.raises(ValueError, match='no keypoints'):
    coco_eval.evaluate_keypoints(boxes_only, [], log=_silent)
  bare = dict(person, id=3)
  del bare['keypoints']
  no_kps = _gt([bare, person], [1], 17)
  with pytest.raises(ValueError, match=r"annotation 3 \(category 1\) has no 'keypoints'"):
    coco_eval.evaluate_keypoints(no_kps, [], log=_silent)


def test_num_keypoints_filled_from_visibility():
  rng = np.random.default_rng(4)
  ann = _person(rng, 1, 1, 17, 80)
  del ann['num_keypoints']
  coco = coco_eval.load_gt(_gt([ann], [1], 17))
  v = np.asarray(ann['keypoints'])[2::3]
  assert coco.anns[1]['num_keypoints'] == int((v > 0).sum())
  assert 'num_keypoints' not in ann  # the input is not modified


def test_detections_to_coco_with_keypoints():
  boxes = np.array([[10.123, 20.456, 30.781, 40.0], [0.0, 1.0, 2.5, 4.0]], np.float32)
  kps = np.array([[[1.234, 5.678], [9.999, 0.004]], [[3.0, 4.0], [5.5, 6.5]]], np.float32)
  dets = coco_eval.detections_to_coco(boxes, np.array([0.876, 0.5], np.float32), [0, 0], 7,
                                      [1], keypoints=kps)
  assert dets[0] == {'image_id': 7, 'category_id': 1, 'bbox': [10.12, 20.46, 20.66, 19.54],
                     'score': 0.88, 'keypoints': [1.23, 5.68, 1.0, 10.0, 0.0, 1.0]}
  assert dets[1]['keypoints'] == [3.0, 4.0, 1.0, 5.5, 6.5, 1.0]
  assert all(type(v) is float for d in dets for v in d['keypoints'])
  raw = coco_eval.detections_to_coco(boxes, [0.9, 0.5], [0, 0], 7, [1], round_results=False,
                                     keypoints=kps)
  np.testing.assert_allclose(np.reshape(raw[0]['keypoints'], (2, 3))[:, :2], kps[0], atol=1e-6)
  assert coco_eval.detections_to_coco(np.zeros((0, 4)), [], [], 1, [1],
                                      keypoints=np.zeros((0, 17, 2))) == []
  with pytest.raises(ValueError, match=r'keypoints must be \[N=2, J, 2\]'):
    coco_eval.detections_to_coco(boxes, [0.9, 0.5], [0, 0], 7, [1], keypoints=kps[:1])


# --- Drawing -------------------------------------------------------------------------------

_NAMES = ('nose', 'left_hand', 'right_hand', 'left_foot', 'right_foot')
_LIMBS = ((0, 1), (0, 2), (1, 3), (2, 4))
_JOINTS = np.array([[[60, 40], [30, 50], [90, 50], [30, 110], [90, 110]]], np.float32)


def _midpoint(a, b):
  x, y = np.round((_JOINTS[0, a] + _JOINTS[0, b]) / 2).astype(int)
  return int(y), int(x)


def test_joint_sides_and_layout():
  np.testing.assert_array_equal(visualize.joint_sides(5, _NAMES), [2, 0, 1, 0, 1])
  np.testing.assert_array_equal(visualize.joint_sides(5, flip_pairs=((1, 2), (3, 4))),
                                [2, 0, 1, 0, 1])
  np.testing.assert_array_equal(visualize.joint_sides(3), [2, 2, 2])
  coco = visualize.joint_sides(17, visualize.COCO_KEYPOINT_NAMES)
  from centernet_jax.tasks import multi_pose
  np.testing.assert_array_equal(coco, visualize.joint_sides(17, flip_pairs=multi_pose.
                                                            COCO_FLIP_PAIRS))
  names, skeleton = visualize.keypoint_layout(17)
  assert names == list(visualize.COCO_KEYPOINT_NAMES) and len(skeleton) == 19
  assert min(min(limb) for limb in skeleton) == 0 and max(max(limb) for limb in skeleton) == 16
  assert visualize.keypoint_layout(None) == (None, None)
  assert visualize.keypoint_layout(5) == (None, [])
  assert visualize.keypoint_layout(5, _NAMES, _LIMBS) == (list(_NAMES), list(_LIMBS))
  with pytest.raises(ValueError, match=r'limbs \[\(0, 5\)\]'):
    visualize.keypoint_layout(5, None, [(0, 5)])
  with pytest.raises(ValueError, match='3 keypoint names for num_joints=5'):
    visualize.keypoint_layout(5, _NAMES[:3])


@pytest.mark.parametrize('by', ['names', 'flip_pairs'])
def test_draw_skeleton_colours_left_and_right(by):
  image = np.zeros((128, 128, 3), np.uint8)
  sides = {'keypoint_names': _NAMES} if by == 'names' else {'flip_pairs': ((1, 2), (3, 4))}
  out = visualize.draw_detections(image, [[20, 10, 100, 120]], [0.9], [0], ['person'],
                                  keypoints=_JOINTS, skeleton=_LIMBS, **sides)
  colors = visualize.SIDE_COLORS
  assert tuple(out[_midpoint(1, 3)]) == colors[visualize.LEFT]
  assert tuple(out[_midpoint(2, 4)]) == colors[visualize.RIGHT]
  assert tuple(out[_midpoint(0, 1)]) == colors[visualize.CENTRE]
  for (x, y), side in zip(_JOINTS[0].astype(int), [2, 0, 1, 0, 1], strict=True):
    assert tuple(out[y, x]) == colors[side]  # the joints' dots
  assert np.all(out[80, 50:70] == 0)  # nothing between the limbs

  # A joint under the threshold is hidden with its limbs; the rest still drawn.
  scores = np.array([[0.5, 0.5, 0.5, 0.05, 0.5]])
  hidden = visualize.draw_detections(image, [[20, 10, 100, 120]], [0.9], [0], ['person'],
                                     keypoints=_JOINTS, keypoint_scores=scores, skeleton=_LIMBS,
                                     keypoint_threshold=0.1, **sides)
  assert np.all(hidden[_midpoint(1, 3)] == 0) and np.all(hidden[110, 30] == 0)
  assert tuple(hidden[_midpoint(2, 4)]) == colors[visualize.RIGHT]
  # A person under the score threshold draws no skeleton either.
  low = visualize.draw_detections(image, [[20, 10, 100, 120]], [0.1], [0], keypoints=_JOINTS,
                                  skeleton=_LIMBS, **sides)
  assert not low.any()


def test_draw_keypoint_errors():
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=r'keypoints must be \[N=1, J, 2\]'):
    visualize.draw_detections(image, [[0, 0, 5, 5]], [1.0], [0], keypoints=np.zeros((2, 5, 2)))
  with pytest.raises(ValueError, match=r'keypoint_scores must be \[N=1, J=5\]'):
    visualize.draw_detections(image, [[0, 0, 5, 5]], [1.0], [0], keypoints=_JOINTS,
                              keypoint_scores=np.zeros((1, 4)))
  with pytest.raises(ValueError, match='outside'):
    visualize.draw_detections(image, [[0, 0, 5, 5]], [1.0], [0], keypoints=_JOINTS,
                              skeleton=[(0, 7)])


# --- The Evaluator, generic over tasks -----------------------------------------------------


def test_evaluator_runs_the_tasks_results_and_metrics(tmp_path, monkeypatch):
  """multi_pose rows (dicts of arrays, scores 0 for suppressed entries) go through the task's
  coco_results and evaluate: metrics.json holds box and keypoint metrics, detections.json the
  keypoints."""
  from centernet_jax import config_lib, evaluate, models, tasks

  rng = np.random.default_rng(5)
  anns = [_person(rng, img, img, 17, side=rng.uniform(50, 150)) for img in (1, 2, 3)]
  gt = _gt(anns, [1, 2, 3], 17)
  config = config_lib.base_config('multi_pose')
  config.model.arch = 'resnet_tiny'
  config.model.head_conv = 8
  config.eval.K = 3
  config = tasks.resolve_config(config, 1)
  info = types.SimpleNamespace(category_ids=[1], val_image_ids=[1, 2, 3], val_gt=gt, num_val=3)
  evaluator = evaluate.Evaluator(config, models.build_model(config.model), info)

  rows = []
  for ann in anns:
    x, y, w, h = ann['bbox']
    kps = np.asarray(ann['keypoints'], np.float32).reshape(-1, 3)[:, :2]
    rows.append((ann['image_id'], {
      'boxes': np.array([[x, y, x + w, y + h], [0, 0, 9, 9], [0, 0, 1, 1]], np.float32),
      'scores': np.array([0.9, 0.3, 0.0], np.float32),  # the last one suppressed
      'classes': np.zeros(3, np.int32),
      'keypoints': np.stack([kps, kps + 50, kps]),
      'keypoint_scores': rng.uniform(0, 1, (3, 17)).astype(np.float32)}))
  spec = {k: (v.shape, v.dtype) for k, v in rows[0][1].items()}
  monkeypatch.setattr(evaluator, '_predict_rows', lambda variables: (rows, spec))
  metrics = evaluator({}, str(tmp_path))
  assert set(metrics) == set(coco_eval.METRIC_NAMES) | set(coco_eval.KEYPOINT_METRIC_NAMES)
  assert metrics['kp_AP'] == pytest.approx(1.0)  # each true person outscores the false one
  assert metrics['AP'] == pytest.approx(1.0)
  assert json.loads((tmp_path / 'metrics.json').read_text()) == pytest.approx(metrics)
  written = json.loads((tmp_path / 'detections.json').read_text())
  assert len(written) == 6 and all(len(d['keypoints']) == 51 for d in written)
  assert written[0]['keypoints'][:3] == [round(v, 2) for v in anns[0]['keypoints'][:2]] + [1.0]


def test_evaluator_on_shapes_pose(tmp_path):
  """The real pipeline: a tiny untrained multi_pose model on the built-in keypoint set, two test
  scales (merged after mapping back): every image's K people with 3J keypoint numbers."""
  import functools

  import jax
  import jax.numpy as jnp

  from centernet_jax import config_lib, evaluate, models, tasks
  from centernet_jax.data import pipeline

  c = config_lib.base_config('multi_pose')
  c.data.source = 'shapes_pose'
  c.data.shapes_dir = str(tmp_path / 'data')
  c.data.shapes_num_train, c.data.shapes_num_val = 2, 3
  c.data.shapes_image_size = c.data.input_size = 64
  c.model.arch, c.model.head_conv = 'resnet_tiny', 8
  c.eval.K, c.eval.batch_size, c.eval.test_scales = 4, 2, (1.0, 0.5)
  info = pipeline.get_dataset_info(c.data)
  c = tasks.resolve_config(c, info.num_classes)
  model = models.build_model(c.model)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  metrics = evaluate.Evaluator(c, model, info)(variables, str(tmp_path / 'eval'))
  assert set(metrics) == set(coco_eval.METRIC_NAMES) | set(coco_eval.KEYPOINT_METRIC_NAMES)
  dets = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
  assert sorted({d['image_id'] for d in dets}) == sorted(info.val_image_ids)
  assert len(dets) == c.eval.K * 3  # no score is exactly 0 at init
  assert all(len(d['keypoints']) == 3 * c.data.num_joints and d['keypoints'][2::3] ==
             [1.0] * c.data.num_joints for d in dets)

"""Tests for centernet_jax.evaluation (COCO metrics, results conversion, drawing)."""

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from centernet_jax.evaluation import coco as coco_eval_lib
from centernet_jax.evaluation import visualize

CATEGORY_IDS = [3, 7, 12]  # Non-contiguous on purpose: label -> original id.

# (image_id, category_id, [x, y, w, h]); at most one object per class per image, so a perfect
# detector also gets AR1 = 1. Areas cover small (< 32^2), medium and large.
_OBJECTS = [
  (1, 3, [10, 10, 150, 120]),   # large
  (1, 7, [200, 30, 20, 20]),    # small
  (2, 12, [50, 60, 60, 50]),    # medium
  (2, 3, [250, 150, 25, 20]),   # small
  (5, 7, [30, 40, 70, 60]),     # medium
  (5, 12, [120, 20, 180, 200]),  # large
  (9, 3, [100, 100, 40, 40]),   # medium
]
_CROWD = (2, 7, [0, 100, 120, 120])
_IMAGE_IDS = [1, 2, 4, 5, 9]  # Image 4 has no annotations.


def _silent(_):
  pass


def make_gt():
  """A tiny COCO gt dict (no 'info'/'licenses' keys, as a minimal writer would make)."""
  anns = []
  for k, (img, cat, bbox) in enumerate([*_OBJECTS, _CROWD]):
    anns.append({'id': 100 + k, 'image_id': img, 'category_id': cat, 'bbox': list(bbox),
                 'area': bbox[2] * bbox[3], 'iscrowd': int((img, cat, bbox) == _CROWD)})
  return {
    'images': [{'id': i, 'width': 320, 'height': 240, 'file_name': f'{i}.jpg'}
               for i in _IMAGE_IDS],
    'annotations': anns,
    'categories': [{'id': c, 'name': n} for c, n in zip(CATEGORY_IDS, 'abc', strict=True)],
  }


def perfect_detections(image_ids=None, score=1.0):
  return [{'image_id': img, 'category_id': cat, 'bbox': [float(v) for v in bbox],
           'score': score}
          for img, cat, bbox in _OBJECTS if image_ids is None or img in image_ids]


def jittered_detections(seed):
  """Noisy true positives plus false positives (on the empty image and the crowd too)."""
  rng = np.random.default_rng(seed)
  boxes, scores, labels, image_ids = [], [], [], []
  for img, cat, (x, y, w, h) in _OBJECTS:
    for _ in range(2):
      noise = rng.normal(0, 0.15, 4) * [w, h, w, h]
      boxes.append([x + noise[0], y + noise[1], x + w + noise[2], y + h + noise[3]])
      scores.append(rng.uniform(0.05, 1.0))
      labels.append(CATEGORY_IDS.index(cat))
      image_ids.append(img)
  for img in _IMAGE_IDS:
    for _ in range(3):
      x, y = rng.uniform(0, 250), rng.uniform(0, 180)
      boxes.append([x, y, x + rng.uniform(5, 70), y + rng.uniform(5, 60)])
      scores.append(rng.uniform(0.0, 1.0))
      labels.append(int(rng.integers(0, 3)))
      image_ids.append(img)
  boxes.append([5, 105, 60, 200])  # Inside the crowd region.
  scores.append(0.9)
  labels.append(1)
  image_ids.append(2)
  boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
  labels, image_ids = np.asarray(labels), np.asarray(image_ids)
  dets = []
  for img in _IMAGE_IDS:
    sel = image_ids == img
    dets += coco_eval_lib.detections_to_coco(
      boxes[sel], scores[sel], labels[sel], img, CATEGORY_IDS)
  return dets


def test_perfect_detections_give_one_crowd_ignored():
  metrics = coco_eval_lib.evaluate_detections(make_gt(), perfect_detections(), log=_silent)
  assert list(metrics) == list(coco_eval_lib.METRIC_NAMES)
  for name, value in metrics.items():
    assert isinstance(value, float)
    assert value == pytest.approx(1.0), name
  # A detection on the crowd region matches the (ignored) crowd and is not a false positive.
  dets = perfect_detections() + [
    {'image_id': 2, 'category_id': 7, 'bbox': [10.0, 110.0, 50.0, 60.0], 'score': 1.0}]
  metrics = coco_eval_lib.evaluate_detections(make_gt(), dets, log=_silent)
  assert metrics['AP'] == pytest.approx(1.0)


@pytest.mark.parametrize('seed', [0, 1])
def test_matches_direct_pycocotools(tmp_path, seed):
  dets = jittered_detections(seed)
  gt = make_gt()
  gt_path = tmp_path / 'gt.json'
  gt_path.write_text(json.dumps(gt))
  dets_before = copy.deepcopy(dets)

  ours = coco_eval_lib.evaluate_detections(gt, dets, log=_silent)
  assert dets == dets_before  # Not mutated (pycocotools' loadRes would add keys).
  from_path = coco_eval_lib.evaluate_detections(str(gt_path), dets, log=_silent)

  coco_gt = COCO(str(gt_path))
  coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
  ref = COCOeval(coco_gt, coco_dt, 'bbox')
  ref.evaluate()
  ref.accumulate()
  ref.summarize()
  expected = dict(zip(coco_eval_lib.METRIC_NAMES, ref.stats[:9].tolist(), strict=True))
  assert 0.05 < expected['AP'] < 0.95  # The case is not degenerate.
  assert ours == pytest.approx(expected, abs=1e-12)
  assert from_path == pytest.approx(expected, abs=1e-12)


def test_images_without_detections_count():
  gt = make_gt()
  half = coco_eval_lib.evaluate_detections(gt, perfect_detections({1, 2}), log=_silent)
  assert half['AP'] < 0.9 and half['AR100'] < 0.9
  # Evaluating only the images with detections would hide the misses (docs/parity.md 4.11).
  only = coco_eval_lib.evaluate_detections(
    gt, perfect_detections({1, 2}), image_ids=[1, 2], log=_silent)
  assert only['AP'] == pytest.approx(1.0)
  # False positives on the image without annotations count too.
  dets = perfect_detections(score=0.5) + [
    {'image_id': 4, 'category_id': c, 'bbox': [10.0, 10.0, 50.0, 50.0], 'score': 0.9}
    for c in CATEGORY_IDS]
  with_fp = coco_eval_lib.evaluate_detections(gt, dets, log=_silent)
  assert with_fp['AP'] < 0.9
  without_4 = coco_eval_lib.evaluate_detections(gt, dets, image_ids=[1, 2, 5, 9], log=_silent)
  assert without_4['AP'] == pytest.approx(1.0)


def test_empty_detections_give_zeros():
  lines = []
  metrics = coco_eval_lib.evaluate_detections(make_gt(), [], log=lines.append)
  assert metrics == {name: 0.0 for name in coco_eval_lib.METRIC_NAMES}
  assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in lines[0]


def test_load_gt_fills_defaults_without_mutating():
  gt = make_gt()
  for ann in gt['annotations'][:2]:
    del ann['area'], ann['iscrowd'], ann['id']
  before = copy.deepcopy(gt)
  coco = coco_eval_lib.load_gt(gt)
  assert gt == before
  assert len(coco.getAnnIds()) == len(gt['annotations'])
  assert coco.dataset['info'] == {} and coco.dataset['licenses'] == []
  ann = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[3]))[0]
  assert ann['area'] == 150 * 120 and ann['iscrowd'] == 0
  assert coco_eval_lib.load_gt(coco) is coco
  metrics = coco_eval_lib.evaluate_detections(gt, perfect_detections(), log=_silent)
  assert metrics['AP'] == pytest.approx(1.0)


def test_detections_to_coco():
  boxes = np.array([[10.123, 20.456, 30.781, 40.0], [0.0, 1.0, 2.5, 4.0]], np.float32)
  scores = np.array([0.876, 0.5], np.float32)
  dets = coco_eval_lib.detections_to_coco(boxes, scores, np.array([2, 0]), np.int64(42),
                                          CATEGORY_IDS)
  assert dets == [
    {'image_id': 42, 'category_id': 12, 'bbox': [10.12, 20.46, 20.66, 19.54], 'score': 0.88},
    {'image_id': 42, 'category_id': 3, 'bbox': [0.0, 1.0, 2.5, 3.0], 'score': 0.5},
  ]
  for det in dets:
    assert type(det['image_id']) is int and type(det['category_id']) is int
    assert all(type(v) is float for v in [*det['bbox'], det['score']])
  json.dumps(dets)

  raw = coco_eval_lib.detections_to_coco(boxes, scores, [2, 0], 42, CATEGORY_IDS,
                                         round_results=False)
  np.testing.assert_allclose(raw[0]['bbox'], [10.123, 20.456, 20.658, 19.544], atol=1e-5)
  assert raw[0]['score'] == pytest.approx(0.876, abs=1e-6)

  assert coco_eval_lib.detections_to_coco(np.zeros((0, 4)), [], [], 1, CATEGORY_IDS) == []
  with pytest.raises(ValueError, match='3'):
    coco_eval_lib.detections_to_coco(boxes, scores, [3, 0], 1, CATEGORY_IDS)
  with pytest.raises(ValueError, match='length'):
    coco_eval_lib.detections_to_coco(boxes, scores[:1], [0, 0], 1, CATEGORY_IDS)


def test_bad_ids_raise():
  dets = perfect_detections()
  bad_cat = dets + [{'image_id': 1, 'category_id': 5, 'bbox': [0, 0, 5, 5], 'score': 0.3}]
  with pytest.raises(ValueError, match=r'category ids \[5\]'):
    coco_eval_lib.evaluate_detections(make_gt(), bad_cat, log=_silent)
  bad_img = dets + [{'image_id': 77, 'category_id': 3, 'bbox': [0, 0, 5, 5], 'score': 0.3}]
  with pytest.raises(ValueError, match=r'image ids \[77\]'):
    coco_eval_lib.evaluate_detections(make_gt(), bad_img, log=_silent)
  with pytest.raises(ValueError, match='77'):
    coco_eval_lib.evaluate_detections(make_gt(), dets, image_ids=[1, 77], log=_silent)
  with pytest.raises(ValueError, match='score'):
    coco_eval_lib.evaluate_detections(
      make_gt(), [{'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 5, 5]}], log=_silent)


def test_write_json_atomic(tmp_path):
  path = tmp_path / 'a' / 'b' / 'metrics.json'
  coco_eval_lib.write_json(path, {'AP': np.float32(0.5), 'n': np.int64(3), 'v': np.arange(2)})
  assert json.loads(path.read_text()) == {'AP': 0.5, 'n': 3, 'v': [0, 1]}
  coco_eval_lib.write_json(path, [1])
  assert json.loads(path.read_text()) == [1]
  assert os.listdir(path.parent) == ['metrics.json']


def test_draw_detections_and_grid(tmp_path):
  image = np.full((120, 160, 3), 128, np.uint8)
  boxes = np.array([[10, 20, 80, 100], [90, 10, 150, 60], [0, 0, 5, 5]], np.float32)
  scores = np.array([0.9, 0.6, 0.1])
  out = visualize.draw_detections(image, boxes, scores, [0, 2, 1], ['cat', 'dog', 'bird'])
  assert out.shape == image.shape and out.dtype == np.uint8
  assert np.any(out[20:101, 10] != 128)  # Left edge of the first box.
  assert np.any(out[10:61, 150] != 128)  # Right edge of the second box.
  assert np.all(out[70:90, 30:60] == 128)  # Inside the first box, below its caption.
  assert np.all(out[2:4, 2:4] == 128)  # Below the score threshold: not drawn.
  assert np.array_equal(image, np.full_like(image, 128))  # Input untouched.
  assert visualize.class_color(1) == visualize.class_color(1) != visualize.class_color(2)
  same = visualize.draw_detections(image, boxes, scores, [0, 2, 1], {0: 'cat', 2: 'bird'})
  assert np.array_equal(same, out)  # Same names from a dict.

  path = tmp_path / 'viz' / 'grid.png'
  grid = visualize.save_grid([out, image, out[:60, :80]], path, cols=2)
  with Image.open(path) as png:
    assert png.format == 'PNG'
    read = np.asarray(png.convert('RGB'))
  assert np.array_equal(read, grid)
  assert grid.shape == (2 * 120 + 2, 2 * 160 + 2, 3)

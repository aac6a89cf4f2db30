"""Tests of the person keypoints input: COCO keypoints files, the keypoint transforms, the
training batches of multi_pose and the built-in shapes_pose set."""

from __future__ import annotations

import copy
import filecmp
import json
import logging
import math
import os

import numpy as np
import pytest

from centernet_jax import boxes as boxes_lib
from centernet_jax import config_lib
from centernet_jax.data import coco, pipeline, shapes, shapes_pose, sources, transforms
from centernet_jax.data.config import data_config
from centernet_jax.data.errors import DataError
from tests.helpers.coco_folder import NO_AUG, coco_cfg, write_coco

tf = transforms.tf

J = 3  # joints of the tiny files: a head and a left / right hand
POSE_CATEGORIES = [{'id': 5, 'name': 'person', 'keypoints': ['head', 'left_hand', 'right_hand'],
                    'skeleton': [[1, 2], [1, 3]]}]


def _kps(*joints) -> list:
  return [float(v) for joint in joints for v in joint]


# id, image_id, bbox xywh, iscrowd, keypoints (3J numbers)
POSE_ANNS = [
    (1, 1, [4, 5, 20, 30], 0, _kps((10, 6, 2), (20, 20, 1), (5, 21, 2))),
    (2, 1, [0, 0, 48, 40], 1, _kps((0, 0, 0), (0, 0, 0), (0, 0, 0))),  # crowd: no joints
    (3, 1, [30, 10, 15, 25], 0, _kps((37, 12, 2), (44, 30, 2), (0, 0, 0))),
    (4, 2, [2.5, 3.5, 20, 30], 0, _kps((12.5, 4, 2), (21, 20, 2), (3, 19, 2))),
    (5, 3, [10, 10, 15, 5], 0, _kps((12, 11, 1), (24, 14, 2), (11, 14, 2)))]


def _ann(ann_id, image_id, bbox, iscrowd, kps, category_id=5):
  return {'id': ann_id, 'image_id': image_id, 'category_id': category_id, 'bbox': bbox,
          'iscrowd': iscrowd, 'area': bbox[2] * bbox[3], 'keypoints': kps}


def write_pose(root: str, anns=POSE_ANNS, name: str = 'person_keypoints.json',
               categories=POSE_CATEGORIES) -> str:
  """The tiny COCO folder's images with person keypoints annotations (image 4 is empty)."""
  return write_coco(root, name=name, categories=categories,
                    raw={'annotations': [_ann(*a) for a in anns]})


def pose_cfg(root: str, ann_file: str, **kw):
  """The multi_pose ``config.data`` (J joints, one flip pair) over the tiny folder."""
  cfg = coco_cfg(root, ann_file, **kw)
  cfg.num_joints = J
  cfg.flip_pairs = ((1, 2),)
  return cfg


@pytest.fixture(scope='module')
def pose_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pose'))
  return root, write_pose(root)


# --- COCO keypoints files ----------------------------------------------------------------------


def test_load_coco_keypoints(pose_dir):
  root, ann_file = pose_dir
  data = coco.load_coco(ann_file, root, num_joints=J)
  assert data.keypoint_names == ['head', 'left_hand', 'right_hand']
  assert data.skeleton == [(0, 1), (0, 2)]
  a, gray, png, empty = data.images
  assert a.keypoints.shape == (3, J, 3) and a.keypoints.dtype == np.float32
  for rec in data.images:
    assert len(rec.keypoints) == len(rec.boxes) == len(rec.labels)
  by_id = {a[0]: np.reshape(a[4], (J, 3)) for a in POSE_ANNS}
  np.testing.assert_array_equal(a.keypoints, np.stack([by_id[1], by_id[2], by_id[3]]))
  np.testing.assert_array_equal(png.keypoints[0], by_id[5])
  assert empty.keypoints.shape == (0, J, 3)
  assert data.num_empty_skipped == 0 and len(data.images) == 4


def test_box_config_ignores_keypoints_with_one_warning(pose_dir, caplog):
  root, ann_file = pose_dir
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(ann_file, root)
  assert all(rec.keypoints is None for rec in data.images)
  assert data.keypoint_names is None and data.skeleton is None
  warnings = [r for r in caplog.records if 'keypoints' in r.getMessage()]
  assert len(warnings) == 1
  assert 'trains boxes only' in warnings[0].getMessage()
  assert 'multi_pose' in warnings[0].getMessage()


def test_box_file_without_keypoint_warning(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    coco.load_coco(write_coco(str(tmp_path)), str(tmp_path))
  assert 'keypoints' not in caplog.text


def test_skip_empty_leaves_out_images_without_objects(pose_dir, caplog):
  root, ann_file = pose_dir
  with caplog.at_level(logging.INFO):
    data = coco.load_coco(ann_file, root, num_joints=J, skip_empty=True)
  assert [r.image_id for r in data.images] == [1, 2, 3] and data.num_empty_skipped == 1
  assert 'left out 1 images without objects' in caplog.text
  assert 'skip_empty_train_images' in caplog.text


def _bad_kps(tmp_path, kps, **load):
  anns = POSE_ANNS[:3] + [(4, 2, [2.5, 3.5, 20, 30], 0, kps)] + POSE_ANNS[4:]
  ann_file = write_pose(str(tmp_path), anns=anns, name='bad.json')
  return coco.load_coco(ann_file, str(tmp_path), num_joints=J, **load)


GOOD = _kps((12.5, 4, 2), (21, 20, 2), (3, 19, 2))


@pytest.mark.parametrize('kps, match', [
    (GOOD[:-3], r"has 6 numbers in 'keypoints'; expected 3 \* config.data.num_joints = 9"),
    (GOOD + [1.0, 2.0, 2.0], r"has 12 numbers in 'keypoints'"),
    (GOOD[:2] + [3.0] + GOOD[3:], r"has visibility 3\.0 in 'keypoints'; expected 0"),
    (GOOD[:2] + [0.5] + GOOD[3:], r'has visibility 0\.5'),
    (GOOD[:2] + [-1] + GOOD[3:], r'has visibility -1\.0'),
    ([math.nan] + GOOD[1:], r"has nan in 'keypoints'; expected .* finite numbers"),
    (GOOD[:3] + [math.inf] + GOOD[4:], r"has inf in 'keypoints'"),
    (GOOD[:3] + ['12'] + GOOD[4:], r"has '12' in 'keypoints'"),
    (GOOD[:3] + [True] + GOOD[4:], r"has True in 'keypoints'"),
    ({'x': 1}, r"has 'keypoints' = \{'x': 1\} of type dict"),
])
def test_bad_keypoints_name_file_annotation_and_image(tmp_path, kps, match):
  with pytest.raises(DataError, match=r'bad\.json: annotation id 4 \(image gray\.jpg\) ' + match):
    _bad_kps(tmp_path, kps)


def test_missing_keypoints_field(tmp_path):
  ann_file = write_coco(str(tmp_path), name='bad.json', categories=POSE_CATEGORIES,
                        raw={'annotations': [{'id': 7, 'image_id': 3, 'category_id': 5,
                                              'bbox': [1, 1, 4, 4]}]})
  with pytest.raises(DataError, match=r"bad\.json: annotation id 7 \(image sub/c\.png\) has no "
                     r"'keypoints' field"):
    coco.load_coco(ann_file, str(tmp_path), num_joints=J)


def test_bad_keypoints_are_skipped_within_the_budget(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    data = _bad_kps(tmp_path, GOOD[:-1], max_bad_fraction=0.25)
  assert data.num_invalid == 1
  gray = data.images[1]
  assert gray.boxes.shape == (0, 4) and gray.keypoints.shape == (0, J, 3)
  assert 'annotation id 4 (image gray.jpg) has 8 numbers' in caplog.text
  with pytest.raises(DataError, match='1 of 5 annotations fail validation'):
    _bad_kps(tmp_path, GOOD[:-1], max_bad_fraction=0.1)


def test_degenerate_box_drops_its_keypoints_too(tmp_path):
  anns = POSE_ANNS + [(6, 3, [5, 5, 0, 4], 0, GOOD)]
  data = coco.load_coco(write_pose(str(tmp_path), anns=anns), str(tmp_path), num_joints=J)
  png = data.images[2]
  assert data.num_degenerate == 1 and png.keypoints.shape == (1, J, 3)


@pytest.mark.parametrize('categories, match', [
    # A box file with a pose config.
    ([{'id': 5, 'name': 'person'}],
     r"bad\.json: category id 5 has no 'keypoints' list of joint names; "
     r'config.data.num_joints=3 needs a person keypoints file'),
    ([dict(POSE_CATEGORIES[0], keypoints=['a', 'b'])],
     r"bad\.json: category id 5 lists 2 joints in 'keypoints', but config.data.num_joints=3"),
    ([dict(POSE_CATEGORIES[0], keypoints='head')], r'category id 5 has no .keypoints. list'),
    ([dict(POSE_CATEGORIES[0], skeleton=[[1, 4]])],
     r"bad\.json: category id 5 has 'skeleton' = \[\[1, 4\]\]; expected pairs of 1-based"),
    ([dict(POSE_CATEGORIES[0], skeleton=[[0, 1]])], r"'skeleton' = \[\[0, 1\]\]"),
])
def test_bad_keypoint_categories(tmp_path, categories, match):
  ann_file = write_pose(str(tmp_path), name='bad.json', categories=categories)
  with pytest.raises(DataError, match=match):
    coco.load_coco(ann_file, str(tmp_path), num_joints=J)


def test_box_file_with_pose_config(tmp_path):
  ann_file = write_coco(str(tmp_path), name='boxes.json')
  with pytest.raises(DataError, match=r"boxes\.json: category id 3 has no 'keypoints' list.*"
                     'config.data.num_joints=3'):
    coco.load_coco(ann_file, str(tmp_path), num_joints=J)


def test_unused_category_needs_no_keypoints(tmp_path):
  cats = POSE_CATEGORIES + [{'id': 9, 'name': 'dog'}]
  data = coco.load_coco(write_pose(str(tmp_path), categories=cats), str(tmp_path), num_joints=J)
  assert data.category_ids == [5, 9] and data.keypoint_names[0] == 'head'
  assert data.skeleton == [(0, 1), (0, 2)]


# --- Keypoint transforms -------------------------------------------------------------------------


def test_hflip_keypoints_mirrors_and_swaps_pairs():
  rng = np.random.default_rng(0)
  kps = rng.uniform(0, 50, (4, 5, 3)).astype(np.float32)
  got = transforms.hflip_keypoints(tf.constant(kps), 50, ((1, 2), (3, 4))).numpy()
  want = kps[:, [0, 2, 1, 4, 3]].copy()
  want[..., 0] = 50 - 1 - want[..., 0]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(transforms.flip_permutation(4, ((0, 3),)), [3, 1, 2, 0])


def test_affine_keypoints_keeps_visibility():
  rng = np.random.default_rng(1)
  kps = rng.uniform(0, 50, (3, 4, 3)).astype(np.float32)
  kps[..., 2] = rng.integers(0, 3, (3, 4))
  trans = rng.normal(size=(2, 3)).astype(np.float32)
  got = transforms.affine_keypoints(tf.constant(kps), tf.constant(trans)).numpy()
  want_xy = kps[..., :2] @ trans[:, :2].T + trans[:, 2]
  np.testing.assert_allclose(got[..., :2], want_xy, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(got[..., 2], kps[..., 2])


def _random_people(rng, n, height, width, num_joints):
  """n people: keypoints [n, J, 3] in the image and their boxes = the joints' min / max."""
  kps = np.zeros((n, num_joints, 3), np.float32)
  kps[..., 0] = rng.uniform(0, width - 1, (n, num_joints))
  kps[..., 1] = rng.uniform(0, height - 1, (n, num_joints))
  kps[..., 2] = rng.integers(0, 3, (n, num_joints))
  boxes = np.concatenate([kps[..., :2].min(1), kps[..., :2].max(1)], axis=1)
  return kps, boxes


@pytest.mark.parametrize('flip', [0.0, 1.0])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_train_transform_keypoints_match_a_numpy_oracle(flip, seed):
  rng = np.random.default_rng(seed)
  h, w, size, num_joints, pairs = 40, 56, 48, 5, ((1, 2), (3, 4))
  kps, boxes = _random_people(rng, 4, h, w, num_joints)
  image = tf.constant(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
  tf_seed = tf.constant([seed, 7], tf.int64)
  kwargs = dict(input_size=size, scale_choices=np.arange(0.6, 1.4, 0.1), rand_crop=True,
                flip=flip, color_aug=False, max_objs_policy='first')
  out = transforms.train_transform(image, tf.constant(boxes), tf.zeros([4], tf.int32), tf_seed,
                                   max_objs=6, keypoints=tf.constant(kps), flip_pairs=pairs,
                                   **kwargs)
  # The draws of train_transform, then the official numpy maths.
  seeds = tf.random.experimental.stateless_split(tf_seed, 3)
  center, s = transforms.random_crop(seeds[0], h, w, scale_choices=kwargs['scale_choices'],
                                     rand_crop=True, shift=0.1, scale=0.4)
  center = center.numpy().astype(np.float64)
  want = kps.astype(np.float64).copy()
  if flip:
    center[0] = w - center[0] - 1
    want[..., 0] = w - 1 - want[..., 0]
    want = want[:, [0, 2, 1, 4, 3]]
  trans = boxes_lib.get_affine_transform(center, float(s), (size, size))
  want[..., :2] = want[..., :2] @ trans[:, :2].T + trans[:, 2]
  got = out['keypoints'].numpy()
  assert got.shape == (6, num_joints, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got[:4], want, rtol=1e-5, atol=1e-3)
  assert not got[4:].any() and out['mask'].numpy().tolist() == [1, 1, 1, 1, 0, 0]
  # The boxes went through the same mirror and affine: still the joints' min / max.
  np.testing.assert_allclose(out['boxes'].numpy()[:4, :2], got[:4, :, :2].min(1), atol=1e-3)
  np.testing.assert_allclose(out['boxes'].numpy()[:4, 2:], got[:4, :, :2].max(1), atol=1e-3)


@pytest.mark.parametrize('policy', ['visible_first', 'first'])
@pytest.mark.parametrize('flip', [0.0, 1.0])
def test_keypoint_rows_follow_the_boxes_through_truncation(policy, flip):
  rng = np.random.default_rng(3)
  h = w = 32
  kps, boxes = _random_people(rng, 7, h, w, 3)
  kps[[0, 2, 5], :, :2] += 200  # outside the image: hidden after the warp
  boxes[[0, 2, 5]] += 200
  labels = np.arange(7, dtype=np.int32)
  out = transforms.train_transform(
      tf.zeros([h, w, 3], tf.uint8), tf.constant(boxes), tf.constant(labels),
      tf.constant([0, 1], tf.int64), input_size=32, max_objs=5, scale_choices=[1.0],
      keypoints=tf.constant(kps), flip_pairs=((1, 2),), max_objs_policy=policy,
      **dict(NO_AUG, flip=flip))
  order = out['labels'].numpy()
  assert order.tolist() == ([1, 3, 4, 6, 0] if policy == 'visible_first' else [0, 1, 2, 3, 4])
  got = out['keypoints'].numpy()
  np.testing.assert_allclose(out['boxes'].numpy()[:, :2], got[:, :, :2].min(1), atol=1e-3)
  np.testing.assert_allclose(out['boxes'].numpy()[:, 2:], got[:, :, :2].max(1), atol=1e-3)
  want_v = kps[order][:, [0, 2, 1] if flip else [0, 1, 2], 2]
  np.testing.assert_array_equal(got[..., 2], want_v)


def test_pad_objects_is_unchanged_by_the_split():
  boxes = tf.constant([[100.0, 100, 110, 110], [2, 2, 8, 8], [10, 10, 20, 20]])
  b, labels, m = transforms.pad_objects(boxes, tf.constant([0, 1, 2]), 4, (64, 64))
  assert labels.numpy().tolist() == [1, 2, 0, 0] and m.numpy().tolist() == [1, 1, 1, 0]
  np.testing.assert_array_equal(b.numpy()[2], [100, 100, 110, 110])
  assert not b.numpy()[3].any()


# --- Training batches and data set information --------------------------------------------------


@pytest.mark.parametrize('train_on_crowd', [False, True])
def test_training_batches_carry_keypoints(pose_dir, train_on_crowd):
  cfg = pose_cfg(*pose_dir, train_on_crowd=train_on_crowd, channel_order='RGB', **NO_AUG)
  info = pipeline.get_dataset_info(cfg)
  assert info.keypoint_names == ['head', 'left_hand', 'right_hand']
  assert info.skeleton == [(0, 1), (0, 2)]
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=1))
  assert batch['keypoints'].shape == (4, 4, J, 3) and batch['keypoints'].dtype == np.float32
  got, want = [], []
  for b in range(4):
    for m, kps in zip(batch['mask'][b], batch['keypoints'][b], strict=True):
      if m:
        got.append(tuple(np.round(kps, 3).reshape(-1)))
      else:
        assert not kps.any()
  for rec in info.train_data.images:
    trans = boxes_lib.get_affine_transform((rec.width / 2, rec.height / 2),
                                           max(rec.width, rec.height), (64, 64))
    for kps, crowd in zip(rec.keypoints, rec.iscrowd, strict=True):
      if train_on_crowd or not crowd:
        xy = boxes_lib.affine_transform(kps[:, :2], trans)
        want.append(tuple(np.round(np.concatenate([xy, kps[:, 2:]], 1), 3).reshape(-1)))
  assert sorted(got) == sorted(want) and len(got) == (5 if train_on_crowd else 4)


def test_flipped_batches_swap_the_pairs(pose_dir):
  cfg = pose_cfg(*pose_dir, **dict(NO_AUG, flip=1.0))
  info = pipeline.get_dataset_info(cfg)
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=1))
  rows = {int(i): b for b, i in enumerate(batch['image_id'])}
  rec = info.train_data.images[3 - 1]  # sub/c.png, 40 x 40, one person
  trans = boxes_lib.get_affine_transform((rec.width / 2 - 1, rec.height / 2),
                                         rec.width, (64, 64))
  kps = rec.keypoints[0][[0, 2, 1]]
  xy = boxes_lib.affine_transform(np.stack([rec.width - 1 - kps[:, 0], kps[:, 1]], 1), trans)
  np.testing.assert_allclose(batch['keypoints'][rows[3], 0, :, :2], xy, atol=1e-3)
  np.testing.assert_array_equal(batch['keypoints'][rows[3], 0, :, 2], kps[:, 2])


def test_skip_empty_train_images_keeps_every_val_image(pose_dir):
  cfg = pose_cfg(*pose_dir, skip_empty_train_images=True)
  info = pipeline.get_dataset_info(cfg)
  assert (info.num_train, info.num_val) == (3, 4)
  assert info.val_image_ids == [1, 2, 3, 4]


def test_box_config_batches_have_no_keypoints(pose_dir):
  cfg = coco_cfg(*pose_dir)
  info = pipeline.get_dataset_info(cfg)
  assert info.keypoint_names is None and info.skeleton is None
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
  assert 'keypoints' not in batch


def test_tfds_refuses_keypoints_and_skip_empty():
  cfg = config_lib.base_config('multi_pose').data
  cfg.unlock()
  cfg.source = 'tfds'
  with pytest.raises(DataError, match=r"TFDS coco/2017 does not hold.*source='coco_json'.*"
                     'person_keypoints_train2017.json'):
    sources.open_splits(cfg)
  cfg = data_config()
  cfg.source = 'tfds'
  cfg.skip_empty_train_images = True
  with pytest.raises(DataError, match='skip_empty_train_images needs a COCO-json source'):
    sources.open_splits(cfg)


@pytest.mark.parametrize('num_joints, pairs, match', [
    (0, (), 'num_joints must be a positive integer, got 0'),
    (3, ((1, 3),), r'flip_pairs=\(\(1, 3\),\) must be pairs of distinct 0-based joint'),
    (3, ((1, 2, 0),), 'flip_pairs'),
    (3, ((1, 2), (2, 0)), 'each joint in at most one pair'),
])
def test_bad_keypoint_config(pose_dir, num_joints, pairs, match):
  cfg = pose_cfg(*pose_dir)
  cfg.num_joints = num_joints
  cfg.flip_pairs = pairs
  with pytest.raises(DataError, match=match):
    pipeline.get_dataset_info(cfg)


def test_pose_config_on_a_box_file(tmp_path):
  cfg = pose_cfg(str(tmp_path), write_coco(str(tmp_path)))
  with pytest.raises(DataError, match=r"category id 3 has no 'keypoints'"):
    pipeline.get_dataset_info(cfg)


# --- The shapes_pose set ---------------------------------------------------------------------


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def test_generate_is_deterministic(tmp_path):
  shapes_pose.generate(str(tmp_path / 'a'), num_train=3, num_val=1, image_size=48, seed=5)
  shapes_pose.generate(str(tmp_path / 'b'), num_train=3, num_val=1, image_size=48, seed=5)
  names = _files(tmp_path / 'a')
  assert len(names) == 3 + 1 + 2 + 1 and names == _files(tmp_path / 'b')
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', names, shallow=False)
  assert not mismatch and not errors


def test_people_match_the_spec():
  size, counts, vis, heights = 128, [], [], []
  for i in range(40):
    image, people = shapes_pose.render_image(np.random.default_rng([0, 0, i]), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    counts.append(len(people))
    for p in people:
      kps = p['keypoints']
      assert kps.shape == (17, 3)
      x, y, w, h = p['bbox']
      assert 0 <= x and 0 <= y and x + w <= size + 1e-6 and y + h <= size + 1e-6
      assert p['area'] == pytest.approx(w * h, abs=0.02)
      on = kps[:, 2] > 0
      assert not kps[~on].any()  # joints outside the image: 0, 0, 0
      assert (kps[on, :2] >= 0).all() and (kps[on, :2] <= size - 1).all()
      assert (kps[on, 0] >= x).all() and (kps[on, 0] <= x + w).all()
      assert (kps[on, 1] >= y).all() and (kps[on, 1] <= y + h).all()
      # Facing the camera: each left joint of a pair lies right of its right joint.
      for a, b in ((5, 6), (11, 12)):
        if on[a] and on[b]:
          assert kps[a, 0] > kps[b, 0]
      vis.append(kps[:, 2])
      if on[1] and on[15]:
        heights.append(kps[15, 1] - kps[1, 1])
  assert set(counts) <= {1, 2, 3} and {1, 2, 3} <= set(counts)
  vis = np.concatenate(vis)
  assert set(np.unique(vis)) == {0, 1, 2} and (vis == 2).mean() > 0.9
  assert 0.2 * size < min(heights) and max(heights) < 0.9 * size


def test_generated_file_is_a_coco_keypoints_file(tmp_path):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  paths = shapes_pose.generate(str(tmp_path), num_train=2, num_val=6, image_size=64, seed=1)
  gt = COCO(paths['val_annotations'])
  (cat,) = gt.loadCats(gt.getCatIds())
  assert cat['name'] == 'person' and cat['keypoints'] == list(shapes_pose.COCO_KEYPOINT_NAMES)
  assert len(cat['skeleton']) == 19 and [6, 7] in cat['skeleton']  # 1-based shoulders
  anns = gt.loadAnns(gt.getAnnIds())
  assert anns and all(a['num_keypoints'] == sum(v > 0 for v in a['keypoints'][2::3])
                      for a in anns)
  # Ground truth as detections: keypoint AP 1.
  dets = [{'image_id': a['image_id'], 'category_id': 1, 'keypoints': a['keypoints'],
           'score': 1.0} for a in copy.deepcopy(anns)]
  ev = COCOeval(gt, gt.loadRes(dets), 'keypoints')
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  assert ev.stats[0] == pytest.approx(1.0)
  data = coco.load_coco(paths['val_annotations'], paths['val_images'], num_joints=17)
  assert data.skeleton == list(shapes_pose.COCO_SKELETON) and len(data.images) == 6


def test_ensure_generates_once_and_refuses_other_data(tmp_path):
  out = str(tmp_path / 'pose')
  params = dict(num_train=2, num_val=1, image_size=32, seed=1)
  paths = shapes_pose.ensure(out, **params)
  stamp = os.path.getmtime(paths['train_annotations'])
  assert shapes_pose.ensure(out, **params) == paths
  assert os.path.getmtime(paths['train_annotations']) == stamp
  with pytest.raises(ValueError, match='delete it or set config.data.shapes_dir'):
    shapes_pose.ensure(out, **dict(params, seed=2))
  boxes_dir = str(tmp_path / 'boxes')
  shapes.ensure(boxes_dir, **params)
  with pytest.raises(ValueError, match='not a shapes_pose data set'):
    shapes_pose.ensure(boxes_dir, **params)


def test_shapes_pose_source_with_the_multi_pose_config(tmp_path):
  cfg = config_lib.base_config('multi_pose').data
  cfg.unlock()
  cfg.update(source='shapes_pose', shapes_dir=str(tmp_path / 'sp'), shapes_num_train=3,
             shapes_num_val=2, shapes_image_size=64, input_size=64, max_objs=4,
             num_parallel_calls=2)
  info = pipeline.get_dataset_info(cfg)
  assert info.keypoint_names == list(shapes_pose.COCO_KEYPOINT_NAMES)
  assert info.skeleton == list(shapes_pose.COCO_SKELETON)
  assert (info.num_classes, info.class_names, info.num_val) == (1, ['person'], 2)
  assert info.val_gt.endswith('person_keypoints_val.json')
  with open(info.val_gt) as f:
    assert len(json.load(f)['annotations'][0]['keypoints']) == 51
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
  assert batch['keypoints'].shape == (2, 4, 17, 3)
  assert batch['boxes'].shape == (2, 4, 4) and batch['image'].shape == (2, 64, 64, 3)
  v = batch['keypoints'][..., 2]
  assert set(np.unique(v)) <= {0, 1, 2} and (v[batch['mask'] > 0] > 0).any()
  assert not batch['keypoints'][batch['mask'] == 0].any()
  assert sources.default_shapes_pose_dir(cfg).endswith('shapes_pose_v1_64_3_2_0')


def test_default_dirs_differ():
  cfg = data_config()
  assert sources.default_shapes_pose_dir(cfg) != sources.default_shapes_dir(cfg)


def test_coco_json_source_decodes_keypoints(pose_dir):
  source = pipeline.get_dataset_info(pose_cfg(*pose_dir)).train_source
  ds = source.read(tf.data.Dataset.from_tensor_slices({'index': np.array([0, 3], np.int64)}), 1)
  a, empty = list(ds.map(source.decode).as_numpy_iterator())
  assert a['keypoints'].shape == (3, J, 3) and empty['keypoints'].shape == (0, J, 3)
  np.testing.assert_array_equal(a['keypoints'][2], np.reshape(POSE_ANNS[2][4], (J, 3)))

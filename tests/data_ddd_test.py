"""Tests of the ddd data path: KITTI sources ('kitti', 'shapes_ddd') -> training batches,
'fit_width' evaluation, DatasetInfo (docs/parity.md 4.13)."""

import os

import numpy as np
import pytest
from PIL import Image

from centernet_jax import boxes, config_lib, inference
from centernet_jax.data import errors, kitti, pipeline, shapes_ddd, sources, transforms
from centernet_jax.data.errors import DataError
from centernet_jax.tasks import ddd

tf = transforms.tf
HW = (96, 288)  # image h, w of the test sets
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def obj(kind, bbox, depth=20.0, dims=(1.5, 1.6, 3.9), alpha=0.3):
  return {'type': kind, 'truncated': 0.0, 'occluded': 0, 'alpha': alpha, 'bbox': list(bbox),
          'dimensions': list(dims), 'location': [1.0, 1.5, depth], 'rotation_y': 0.5}


def write_set(root, images: dict, splits: dict, hw=HW, seed=0):
  """A KITTI layout under root: images {name: objects} with random pixels, splits {file: names}."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, 'training')
  for d in ('image_2', 'label_2', 'calib'):
    os.makedirs(os.path.join(base, d), exist_ok=True)
  for name, objects in images.items():
    pixels = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(base, 'image_2', name + '.png'))
    kitti.write_calib(os.path.join(base, 'calib', name + '.txt'),
                      shapes_ddd.camera_p2(hw[1], hw[0]))
    kitti.write_label_file(os.path.join(base, 'label_2', name + '.txt'), objects)
  out = {'kitti_root': str(root)}
  for key, names in splits.items():
    out[key] = os.path.join(root, key + '.txt')
    with open(out[key], 'w') as f:
      f.write('\n'.join(names) + '\n')
  return out


ORDERED = [obj('Tram', (10, 20, 40, 60)), obj('Car', (50, 30, 90, 70), depth=12.5),
           obj('DontCare', (100, 10, 120, 30)), obj('Pedestrian', (130, 20, 140, 60)),
           obj('Van', (150, 30, 200, 80)), obj('Cyclist', (210, 20, 230, 70)),
           obj('Person_sitting', (240, 40, 250, 60))]


def data_cfg(paths, **over):
  c = config_lib.base_config('ddd')
  c.unlock()
  d = c.data
  d.source = 'kitti'
  d.update(paths)
  d.input_hw, d.input_size = HW, HW[1]
  d.eval_mode = 'fit_width'
  d.max_objs = 8
  d.mean, d.std = MEAN, STD
  d.num_parallel_calls = 2
  d.update(over)
  return d


@pytest.fixture(scope='module')
def kitti_set(tmp_path_factory):
  root = tmp_path_factory.mktemp('kitti')
  images = {'000000': ORDERED, '000001': [obj('Car', (5, 5, 60, 50), depth=33.0)],
            '000002': [obj('Pedestrian', (100, 40, 120, 90)), obj('DontCare', (0, 0, 9, 9))],
            '000003': [obj('Cyclist', (30, 20, 70, 80), alpha=-2.0)]}
  return write_set(root, images, {'train_split': ['000000', '000001'],
                                  'val_split': ['000003', '000002']})


def first_batch(d, batch=1, seed=0):
  info = pipeline.get_dataset_info(d)
  return info, next(pipeline.create_train_iterator(d, info=info, global_batch_size=batch,
                                                   seed=seed))


def unnormalize(image):
  """The pipeline's normalised BGR canvas -> RGB 0-255."""
  return ((np.asarray(image) * STD + MEAN) * 255.0)[..., ::-1]


def affine_oracle(hw, in_hw, u=None, n=None, aug=0.5, scale=0.4, shift=0.1):
  """Official datasets/sample/ddd.py crop and the official three-point affine, in numpy."""
  h, w = hw
  c = np.array([w / 2.0, h / 2.0])
  s = np.array([w, h], np.int32)
  if u is not None and u < aug:
    s = s * np.clip(n[0] * scale + 1, 1 - scale, 1 + scale)
    c[0] += w * np.clip(n[1] * shift, -2 * shift, 2 * shift)
    c[1] += h * np.clip(n[2] * shift, -2 * shift, 2 * shift)
  return boxes.get_affine_transform(c, s, (in_hw[1], in_hw[0]))


def draws(seed):
  """The uniform and normal draws of transforms.ddd_center_scale for a [2] seed (its dtype
  matters to the draws: the pipeline's are int64)."""
  seeds = tf.random.experimental.stateless_split(tf.constant(seed), 2)
  return (float(tf.random.stateless_uniform([], seeds[0])),
          tf.random.stateless_normal([3], seeds[1]).numpy().astype(np.float64))


def box_oracle(bbox, trans):
  pts = boxes.affine_transform(np.asarray(bbox, np.float32).reshape(2, 2), trans)
  return np.concatenate([pts.min(0), pts.max(0)])


# --- Training batches --------------------------------------------------------------------------


def test_batch_keys_shapes_and_dtypes(kitti_set):
  d = data_cfg(kitti_set)
  info, b = first_batch(d, batch=2)
  m = d.max_objs
  want = {'image': ((2,) + HW + (3,), np.float32), 'boxes': ((2, m, 4), np.float32),
          'labels': ((2, m), np.int32), 'mask': ((2, m), np.float32),
          'depth': ((2, m), np.float32), 'dims': ((2, m, 3), np.float32),
          'alpha': ((2, m), np.float32), 'aug': ((2,), np.float32),
          'center3d': ((2, m, 2), np.float32),
          'image_id': ((2,), np.int64), 'skipped': ((2,), bool),
          'dropped_objects': ((2,), np.int32)}
  for key, (shape, dtype) in want.items():
    assert b[key].shape == shape and b[key].dtype == dtype, key
  assert set(ddd.BATCH_KEYS) <= set(b)
  assert info.source == 'kitti' and info.num_train == 2 and info.num_val == 2


def test_objects_in_file_order_with_the_official_codes(kitti_set):
  d = data_cfg(kitti_set, max_objs=5, ddd_aug=0.0, train_split=kitti_set['train_split'])
  info = pipeline.get_dataset_info(d)
  it = pipeline.create_train_iterator(d, info=info, global_batch_size=2, seed=0)
  b = next(it)
  row = int(np.flatnonzero(b['image_id'] == 0)[0])
  # Official num_objs = min(len(anns), max_objs): the first five lines, Tram keeps its slot.
  np.testing.assert_array_equal(b['labels'][row], [-99, 1, -1, 0, -3])
  np.testing.assert_array_equal(b['mask'][row], [1, 1, 1, 1, 1])
  np.testing.assert_allclose(b['depth'][row, :2], [20.0, 12.5])
  np.testing.assert_allclose(b['alpha'][row, 1], 0.3, atol=1e-6)
  np.testing.assert_allclose(b['dims'][row, 1], [1.5, 1.6, 3.9], atol=1e-6)
  assert b['dropped_objects'][row] == 2  # Cyclist and Person_sitting, visible, left out
  other = 1 - row
  np.testing.assert_array_equal(b['mask'][other], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(b['labels'][other], [1, 0, 0, 0, 0])


@pytest.mark.parametrize('aug', [0.0, 1.0])
def test_boxes_and_depth_follow_the_official_affine(kitti_set, aug):
  d = data_cfg(kitti_set, ddd_aug=aug, scale=0.4, shift=0.1)
  info = pipeline.get_dataset_info(d)
  seed = 7
  b = next(pipeline.create_train_iterator(d, info=info, global_batch_size=2, seed=seed))
  for i in range(2):  # stream element i of step 0 is seeded by fold_in((seed, 2), i)
    elem_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, pipeline._AUG_STREAM], tf.int64), tf.constant(i, tf.int64)).numpy()
    u, n = draws(elem_seed)
    trans = affine_oracle(HW, HW, u, n, aug=aug)
    rec = {r.image_id: r for r in info.train_source.kitti_data.records}[int(b['image_id'][i])]
    k = min(len(rec.labels), d.max_objs)
    want = np.stack([box_oracle(rec.boxes[j], trans) for j in range(k)])
    np.testing.assert_allclose(b['boxes'][i, :k], want, rtol=1e-5, atol=2e-3)
    np.testing.assert_allclose(b['depth'][i, :k], rec.depth[:k])
    # The projected 3D centre: P2 @ (location - (0, h / 2, 0)), then the same affine.
    for j in range(k):
      if rec.locations[j, 2] > 0.1:
        middle = rec.locations[j] - [0.0, rec.dims[j, 0] / 2, 0.0]
        hom = rec.calib[:, :3] @ middle + rec.calib[:, 3]
        uv = trans[:, :2] @ (hom[:2] / hom[2]) + trans[:, 2]
        np.testing.assert_allclose(b['center3d'][i, j], uv, rtol=1e-5, atol=2e-3)
      else:  # DontCare: the 2D box centre
        np.testing.assert_allclose(b['center3d'][i, j], (want[j, :2] + want[j, 2:]) / 2,
                                   rtol=1e-5, atol=2e-3)
    assert b['aug'][i] == float(aug == 1.0)
  if aug:
    assert not np.allclose(b['boxes'][0, :1], affine_oracle(HW, HW)[:, 2][None, :1])


def test_center_scale_draws_match_the_official_distribution():
  hw = (375, 1242)
  centers, scales, augs = [], [], []
  for k in range(300):
    c, s, a = transforms.ddd_center_scale(tf.constant([3, k], tf.int64), hw[0], hw[1],
                                          ddd_aug=0.5, scale=0.4, shift=0.1)
    centers.append(c.numpy())
    scales.append(float(s))
    augs.append(bool(a))
  centers, scales, augs = np.array(centers), np.array(scales), np.array(augs)
  assert 0.4 < augs.mean() < 0.6
  np.testing.assert_array_equal(centers[~augs], [[621.0, 187.5]] * int((~augs).sum()))
  np.testing.assert_array_equal(scales[~augs], 1242.0)
  assert scales[augs].min() >= 1242 * 0.6 - 1e-3 and scales[augs].max() <= 1242 * 1.4 + 1e-3
  offsets = (centers[augs] - [621.0, 187.5]) / [1242.0, 375.0]
  assert np.abs(offsets).max() <= 0.2 + 1e-6 and offsets.std() > 0.05


def test_no_aug_warp_is_the_fit_width_letterbox(kitti_set):
  d = data_cfg(kitti_set, ddd_aug=0.0, input_hw=(64, 256))
  info, b = first_batch(d, batch=2)
  assert np.all(b['aug'] == 0)
  for i in range(2):
    rec = {r.image_id: r for r in info.train_source.kitti_data.records}[int(b['image_id'][i])]
    pixels = np.asarray(Image.open(rec.path).convert('RGB'))
    want, _ = boxes.letterbox(pixels, (64, 256), 'fit_width')
    got = unnormalize(b['image'][i])
    diff = np.abs(got - want.astype(np.float32))
    # Bilinear weights in 1/8 steps make exact .5 ties common: float noise rounds them apart.
    assert diff.max() < 1.01 and (diff > 0.01).mean() < 0.05


def test_crop_width_is_a_window_of_the_whole_canvas(kitti_set):
  """data.ddd_crop_width: the same warp as the whole canvas, then a random window of columns."""
  full_cfg = data_cfg(kitti_set, ddd_aug=0.0)
  crop_cfg = data_cfg(kitti_set, ddd_aug=0.0, ddd_crop_width=96)
  offsets = set()
  for seed in range(6):
    _, full = first_batch(full_cfg, batch=2, seed=seed)
    _, crop = first_batch(crop_cfg, batch=2, seed=seed)
    assert crop['image'].shape == (2, HW[0], 96, 3)
    np.testing.assert_array_equal(crop['image_id'], full['image_id'])
    for i in range(2):
      # The window's offset: where the crop's pixels sit in the whole canvas.
      errs = [np.abs(full['image'][i, :, x:x + 96] - crop['image'][i]).max()
              for x in range(HW[1] - 96 + 1)]
      x0 = int(np.argmin(errs))
      assert errs[x0] < 1e-5
      offsets.add(x0)
      real = full['mask'][i] > 0
      np.testing.assert_allclose(crop['boxes'][i][real], full['boxes'][i][real] - [x0, 0, x0, 0],
                                 atol=1e-4)
      for key in ('mask', 'depth', 'dims', 'alpha', 'aug'):
        np.testing.assert_array_equal(crop[key][i], full[key][i])
  assert len(offsets) >= 4 and max(offsets) <= HW[1] - 96


def test_same_seed_same_batch_other_seed_other_batch(kitti_set):
  d = data_cfg(kitti_set, ddd_aug=0.5)
  _, a = first_batch(d, batch=2, seed=5)
  _, b = first_batch(d, batch=2, seed=5)
  _, c = first_batch(d, batch=2, seed=6)
  for key in ddd.BATCH_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a[k], c[k]) for k in ('image', 'boxes', 'image_id'))


def test_batches_train_the_ddd_targets(kitti_set):
  d = data_cfg(kitti_set, ddd_aug=0.0)
  _, b = first_batch(d, batch=2)
  t = ddd.ddd_targets(b['boxes'] / 4, b['labels'], b['mask'], b['depth'], b['dims'],
                      b['alpha'], b['aug'], num_classes=3, output_hw=(HW[0] // 4, HW[1] // 4))
  assert float(np.asarray(t["rot_mask"]).sum()) == 4  # Car, Pedestrian, Cyclist; Car
  assert float(np.asarray(t['hm']).max()) == 1.0


# --- Evaluation ----------------------------------------------------------------------------


@pytest.mark.parametrize('canvas', [HW, (64, 256), (128, 320)])
def test_eval_center_scale_map_points_back(kitti_set, canvas):
  d = data_cfg(kitti_set, input_hw=canvas)
  info = pipeline.get_dataset_info(d)
  b = next(pipeline.create_eval_iterator(d, info=info, batch_size=2))
  assert b['image'].shape == (2,) + tuple(canvas) + (3,)
  np.testing.assert_array_equal(b['image_id'], info.val_image_ids)
  np.testing.assert_array_equal(b['center'], [[HW[1] / 2, HW[0] / 2]] * 2)
  np.testing.assert_array_equal(b['input_hw'], [canvas] * 2)
  np.testing.assert_array_equal(b['orig_hw'], [HW] * 2)
  # A point of the original image -> canvas (the eval affine) -> output map -> back.
  pts = np.array([[[10.0, 20.0, 250.0, 80.0]]] * 2, np.float32)
  trans = boxes.get_affine_transform(b['center'][0], b['scale'][0], (canvas[1], canvas[0]))
  np.testing.assert_allclose(trans[0, 0], canvas[1] / HW[1], rtol=1e-6)  # scaled to the width
  out = boxes.affine_transform(pts.reshape(2, 1, 2, 2), trans).reshape(pts.shape) / 4
  back = inference.to_original({'boxes': out}, b, (4.0, 4.0), ('boxes',))['boxes']
  np.testing.assert_allclose(back, pts, atol=1e-3)
  # The eval canvas is the numpy letterbox, and inference.preprocess gives the same batch.
  rec = info.val_source.kitti_data.records[0]
  pixels = np.asarray(Image.open(rec.path).convert('RGB'))
  want, _ = boxes.letterbox(pixels, canvas, 'fit_width')
  assert np.abs(unnormalize(b['image'][0]) - want).max() < 1.01
  pre = inference.preprocess(pixels, d)
  for key in ('center', 'scale', 'input_hw', 'orig_hw'):
    np.testing.assert_allclose(pre[key][0], b[key][0])
  assert np.abs(pre['image'][0] - b['image'][0]).max() < 1.01 / 255 / min(STD)


def test_dataset_info_holds_the_kitti_ground_truth(kitti_set):
  info = pipeline.get_dataset_info(data_cfg(kitti_set))
  assert info.num_classes == 3 and info.class_names == list(kitti.CLASS_NAMES)
  assert info.category_ids == [1, 2, 3] and info.source == 'kitti'
  assert info.val_image_ids == [3, 2]  # split-file order
  assert set(info.val_gt) == {2, 3}
  gt = info.val_gt[2]
  np.testing.assert_allclose(gt['calib'], shapes_ddd.camera_p2(HW[1], HW[0]), rtol=1e-6)
  assert gt['calib'].shape == (3, 4)
  assert [o['type'] for o in gt['objects']] == ['Pedestrian', 'DontCare']
  assert gt['objects'][0]['bbox'] == [100.0, 40.0, 120.0, 90.0]
  counts = pipeline.data_counts(info)
  assert counts == {'skipped_label_lines': 0, 'skipped_images': 0,
                    'val_skipped_label_lines': 0, 'val_skipped_images': 0}


def test_shapes_ddd_source(tmp_path):
  c = config_lib.base_config('ddd')
  c.unlock()
  d = c.data
  d.source, d.shapes_dir = 'shapes_ddd', str(tmp_path / 'sd')
  d.shapes_num_train, d.shapes_num_val, d.shapes_ddd_hw = 4, 2, HW
  d.input_hw, d.eval_mode, d.max_objs = HW, 'fit_width', 16
  info, b = first_batch(d, batch=2)
  assert info.num_train == 4 and info.num_val == 2 and info.source == 'kitti'
  assert info.val_image_ids == [4, 5] and set(info.val_gt) == {4, 5}
  assert b['image'].shape == (2,) + HW + (3,) and b['mask'].sum() > 0
  d2 = data_cfg({}, source='shapes_ddd', shapes_dir='', shapes_ddd_hw=(64, 192))
  name = os.path.basename(sources.default_shapes_ddd_dir(d2))
  assert name == f'shapes_ddd_v{shapes_ddd.VERSION}_64x192_{d2.shapes_num_train}_' \
                 f'{d2.shapes_num_val}_{d2.shapes_seed}'


# --- Bad input -------------------------------------------------------------------------------


def test_kitti_source_needs_its_paths():
  with pytest.raises(DataError, match='config.data.kitti_root, config.data.val_split'):
    pipeline.get_dataset_info(data_cfg({'train_split': 'x.txt'}))


def test_missing_calib_and_bad_label_line_are_named(tmp_path):
  paths = write_set(tmp_path, {'000000': [obj('Car', (5, 5, 60, 50))],
                               '000001': [obj('Car', (5, 5, 60, 50))]},
                    {'train_split': ['000000'], 'val_split': ['000001']})
  calib = os.path.join(tmp_path, 'training', 'calib', '000001.txt')
  os.remove(calib)
  with pytest.raises(DataError, match='000001'):
    pipeline.get_dataset_info(data_cfg(paths))
  kitti.write_calib(calib, shapes_ddd.camera_p2(HW[1], HW[0]))
  label = os.path.join(tmp_path, 'training', 'label_2', '000001.txt')
  with open(label, 'a') as f:
    f.write('Car 0.00 0 oops 1 2 3 4 1 1 1 1 1 1 1\n')
  with pytest.raises(DataError, match=f'{label}:2: alpha'):
    pipeline.get_dataset_info(data_cfg(paths))


def test_bad_training_lines_are_skipped_and_counted(tmp_path):
  images = {f'{i:06d}': [obj('Car', (5, 5, 60, 50))] * 3 for i in range(4)}
  paths = write_set(tmp_path, images, {'train_split': list(images)[:3], 'val_split': ['000003']})
  with open(os.path.join(tmp_path, 'training', 'label_2', '000001.txt'), 'a') as f:
    f.write('Car 0.00 0\n')
  info = pipeline.get_dataset_info(data_cfg(paths, max_skip_fraction=0.5))
  assert pipeline.data_counts(info)['skipped_label_lines'] == 1
  assert [len(r.labels) for r in info.train_source.kitti_data.records] == [3, 3, 3]


def test_empty_training_split_is_refused(tmp_path):
  paths = write_set(tmp_path, {'000000': [obj('DontCare', (5, 5, 60, 50))],
                               '000001': [obj('Car', (5, 5, 60, 50))]},
                    {'train_split': ['000000'], 'val_split': ['000001']})
  with pytest.raises(DataError, match='no object to train on'):
    pipeline.get_dataset_info(data_cfg(paths))


def test_unreadable_training_image_is_skipped_and_named(tmp_path):
  images = {f'{i:06d}': [obj('Car', (5, 5, 60, 50))] for i in range(5)}
  paths = write_set(tmp_path, images, {'train_split': list(images)[:4], 'val_split': ['000004']})
  bad = os.path.join(tmp_path, 'training', 'image_2', '000002.png')
  with open(bad, 'rb') as f:
    head = f.read(64)  # the PNG header (the size) survives, the pixels do not
  with open(bad, 'wb') as f:
    f.write(head)
  d = data_cfg(paths, max_skip_fraction=0.5)
  info = pipeline.get_dataset_info(d)
  it = pipeline.create_train_iterator(d, info=info, global_batch_size=4, seed=0,
                                      log_skips=False)
  b = next(it)
  assert b['skipped'].sum() == 1
  (reason,) = [r for r in b['skip_reasons'] if r]
  assert bad in reason
  counts = errors.TrainInputCounts(d.max_objs)
  counts.update(b)
  assert counts.skipped_images == 1


# --- Config validation -----------------------------------------------------------------------


@pytest.mark.parametrize('key,value,expect', [
    ('input_hw', (100, 320), 'config.data.input_hw must be () (data.input_size square) or a pair'),
    ('input_hw', (96,), 'config.data.input_hw must be'),
    ('ddd_aug', 1.5, 'config.data.ddd_aug must be a number from 0 to 1'),
    ('ddd_crop_width', 100, 'config.data.ddd_crop_width must be 0 (the whole canvas) or a pos'),
    ('ddd_crop_width', 416, 'no wider than the canvas (384)'),
    ('shapes_ddd_hw', (0, 384), 'config.data.shapes_ddd_hw must be a pair'),
    ('eval_mode', 'fit', 'config.data.eval_mode must be one of keep_res, fixed_res, fit_width'),
])
def test_validation_names_the_key(key, value, expect):
  c = config_lib.base_config('ddd')
  c.unlock()
  c.data.source, c.data.input_hw, c.data.eval_mode = 'shapes_ddd', (128, 384), 'fit_width'
  config_lib.validate(c)
  c.data[key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert expect in str(e.value)


def test_input_hw_needs_a_kitti_source_or_fit_width():
  c = config_lib.base_config('ctdet')
  c.unlock()
  c.data.input_hw = (384, 1280)
  with pytest.raises(config_lib.ConfigError, match='data.input_hw must be'):
    config_lib.validate(c)
  c.data.eval_mode = 'fit_width'
  config_lib.validate(c)
  assert inference.input_hw(c) == (384, 1280)

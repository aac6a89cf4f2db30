"""Tests of the input pipelines over COCO-json sources (data/pipeline.py, data/sources.py)."""

import os

import numpy as np
import pytest
from PIL import Image

from centernet_jax import boxes as boxes_lib
from centernet_jax.data import pipeline, sources, transforms
from centernet_jax.data.config import data_config
from centernet_jax.data.errors import DataError
from tests.helpers.coco_folder import IMAGES, NO_AUG, coco_cfg, np_warp, write_coco

tf = transforms.tf


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco'))
  return root, write_coco(root)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_dataset_info(coco_dir):
  info = pipeline.get_dataset_info(coco_cfg(*coco_dir))
  assert (info.num_classes, info.class_names, info.category_ids) == (3, ['car', 'train', 'zebra'],
                                                                     [3, 7, 12])
  assert info.val_gt == coco_dir[1] and info.val_image_ids == [1, 2, 3, 4]
  assert (info.num_train, info.num_val, info.source) == (4, 4, 'coco_json')
  assert info.train_data.ann_file == info.val_data.ann_file == coco_dir[1]
  assert isinstance(info.train_source, sources.CocoJsonSource) and len(info.val_source) == 4


def test_coco_json_source_reads_and_decodes_by_index(coco_dir):
  root, _ = coco_dir
  source = pipeline.get_dataset_info(coco_cfg(*coco_dir)).train_source
  ds = source.read(tf.data.Dataset.from_tensor_slices({'index': np.array([2, 0], np.int64)}), 1)
  png, a = list(ds.map(source.decode).as_numpy_iterator())
  np.testing.assert_array_equal(png['image'], np.asarray(Image.open(os.path.join(root,
                                                                                 'sub/c.png'))))
  assert png['image_id'] == 3 and png['labels'].tolist() == [0]
  assert a['image_id'] == 1 and a['iscrowd'].tolist() == [False, True, False]
  np.testing.assert_allclose(a['boxes'], [[4, 5, 14, 13], [0, 0, 48, 40], [40, 30, 60, 50]])
  assert source.describe(1) == f'{os.path.join(root, "gray.jpg")} (image id 2)'
  assert source.check(1) is None


def test_decode_grayscale_and_png(coco_dir):
  root, _ = coco_dir
  gray = sources.decode_image(tf.io.read_file(os.path.join(root, 'gray.jpg'))).numpy()
  assert gray.shape == (44, 36, 3) and gray.dtype == np.uint8
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  png = sources.decode_image(tf.io.read_file(os.path.join(root, 'sub/c.png'))).numpy()
  np.testing.assert_array_equal(png, np.asarray(Image.open(os.path.join(root, 'sub/c.png'))))


@pytest.mark.parametrize('train_on_crowd', [False, True])
def test_train_geometry_without_augmentation(coco_dir, train_on_crowd):
  cfg = coco_cfg(*coco_dir, train_on_crowd=train_on_crowd, channel_order='RGB', **NO_AUG)
  info = pipeline.get_dataset_info(cfg)
  # Global batch = N: step 0 is one epoch, every image exactly once.
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=1))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.float32
  assert batch['boxes'].shape == (4, 4, 4) and batch['labels'].dtype == np.int32
  got, want = [], []
  for b in range(4):
    for m, label, box in zip(batch['mask'][b], batch['labels'][b], batch['boxes'][b], strict=True):
      if m:
        got.append((int(label), *np.round(box, 3)))
  for rec in info.train_data.images:
    trans = boxes_lib.get_affine_transform((rec.width / 2, rec.height / 2),
                                           max(rec.width, rec.height), (64, 64))
    for box, label, crowd in zip(rec.boxes, rec.labels, rec.iscrowd, strict=True):
      if train_on_crowd or not crowd:
        mapped = boxes_lib.affine_transform(box.reshape(2, 2), trans).reshape(4)
        want.append((int(label), *np.round(mapped, 3)))
  assert sorted(got) == sorted(want)
  # The PNG (lossless) is warped exactly as cv2.warpAffine would (then rounded to uint8).
  b = [i for i in range(4) if batch['mask'][i].sum() == 1 and batch['labels'][i, 0] == 0][0]
  img = np.asarray(Image.open(os.path.join(coco_dir[0], 'sub/c.png')), np.float64)
  trans = boxes_lib.get_affine_transform((20, 20), 40, (64, 64))
  want_img = np.round(np_warp(img, trans, (64, 64))) / 255
  np.testing.assert_allclose(batch['image'][b], want_img, atol=1.01 / 255)


def test_train_stream_is_deterministic_and_process_independent(coco_dir):
  cfg = coco_cfg(*coco_dir)
  info = pipeline.get_dataset_info(cfg)
  make = lambda **kw: pipeline.create_train_iterator(cfg, info=info, global_batch_size=4,
                                                     seed=7, **kw)
  one = _take(make(), 3)
  again = _take(make(), 3)
  p0 = _take(make(process_index=0, process_count=2), 3)
  p1 = _take(make(process_index=1, process_count=2), 3)
  resumed = _take(make(start_step=1), 2)
  for step in range(3):
    for key in one[step]:
      np.testing.assert_array_equal(one[step][key], again[step][key])
      np.testing.assert_array_equal(
          one[step][key], np.concatenate([p0[step][key], p1[step][key]]), err_msg=key)
      if step:
        np.testing.assert_array_equal(one[step][key], resumed[step - 1][key])
  assert not np.array_equal(one[0]['image'], one[1]['image'])
  other_seed = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=8))
  assert not np.array_equal(one[0]['image'], other_seed['image'])


def test_epoch_permutation_covers_every_image():
  ids = [int(pipeline.train_example_index(i, 5, seed=3)) for i in range(15)]
  for e in range(3):
    assert sorted(ids[5 * e:5 * e + 5]) == list(range(5))
  assert ids[:5] != ids[5:10]


@pytest.mark.parametrize('policy, want', [
    # Object 0 lies outside its image (hidden after the warp), objects 1 and 2 are visible. The
    # json gives no image size, so the loader cannot tell (with one it skips such a box:
    # data_integrity_test).
    ('visible_first', [1, 2]), ('first', [0, 1])])
def test_max_objs_policy_decides_which_objects_survive(tmp_path, policy, want):
  categories = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}, {'id': 3, 'name': 'c'}]
  anns = [(1, 1, 1, [100, 100, 5, 5], 0), (2, 1, 2, [2, 2, 8, 8], 0),
          (3, 1, 3, [15, 15, 10, 10], 0)]
  ann_file = write_coco(str(tmp_path), images=[(1, 'a.jpg', (32, 32), 'RGB')], anns=anns,
                        categories=categories, raw={'images': [{'id': 1, 'file_name': 'a.jpg'}]})
  cfg = coco_cfg(str(tmp_path), ann_file, input_size=32, max_objs=2, max_objs_policy=policy,
                 **NO_AUG)
  info = pipeline.get_dataset_info(cfg)
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=1, seed=0))
  assert batch['labels'][0].tolist() == want and batch['mask'][0].tolist() == [1, 1]


# --- Evaluation ------------------------------------------------------------------------------


def test_eval_keep_res_center_scale_map_back(coco_dir):
  cfg = coco_cfg(*coco_dir, channel_order='RGB', mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  info = pipeline.get_dataset_info(cfg)
  batches = list(pipeline.create_eval_iterator(cfg, info=info, batch_size=3))
  assert [b['valid'].tolist() for b in batches] == [[True] * 3, [True, False, False]]
  flat = {k: np.concatenate([b[k] for b in batches])[:4] for k in ('image_id', 'center', 'scale',
                                                                    'input_hw', 'orig_hw')}
  assert flat['image_id'].tolist() == [1, 2, 3, 4]
  for k, rec in enumerate(info.val_data.images):
    h, w = rec.height, rec.width
    inp_h, inp_w = (h | 31) + 1, (w | 31) + 1
    assert flat['orig_hw'][k].tolist() == [h, w] and flat['input_hw'][k].tolist() == [inp_h, inp_w]
    np.testing.assert_array_equal(flat['center'][k], [w // 2, h // 2])
    np.testing.assert_array_equal(flat['scale'][k], [inp_w, inp_h])
    # Boxes through the input affine, to output coordinates (/4), and back with transform_preds.
    trans = boxes_lib.get_affine_transform(flat['center'][k], flat['scale'][k], (inp_w, inp_h))
    if len(rec.boxes):
      out = boxes_lib.affine_transform(rec.boxes.reshape(-1, 2), trans).reshape(-1, 4) / 4
      back = boxes_lib.transform_preds(out, flat['center'][k], flat['scale'][k],
                                       (inp_w // 4, inp_h // 4))
      np.testing.assert_allclose(back, rec.boxes, atol=1e-4)
  # The PNG sits where the affine puts it, unchanged; the rest of its window is zero.
  png = np.asarray(Image.open(os.path.join(coco_dir[0], 'sub/c.png')), np.float32) / 255
  image = batches[0]['image'][2]
  x0, y0 = (int(v) for v in boxes_lib.affine_transform(
      np.zeros(2), boxes_lib.get_affine_transform((20, 20), (64, 64), (64, 64))))
  np.testing.assert_allclose(image[y0:y0 + 40, x0:x0 + 40], png, atol=1e-6)
  assert image[:64, :64].sum() == pytest.approx(png.sum(), rel=1e-5)


def test_eval_fixed_res_and_process_split(coco_dir):
  cfg = coco_cfg(*coco_dir, eval_mode='fixed_res', eval_size=64)
  info = pipeline.get_dataset_info(cfg)
  ids = []
  for p in range(2):
    for b in pipeline.create_eval_iterator(cfg, info=info, batch_size=1, process_index=p,
                                           process_count=2, num_images=3):
      assert b['image'].shape == (1, 64, 64, 3)
      ids += b['image_id'][b['valid']].tolist()
      k = info.val_image_ids.index(int(b['image_id'][0]))
      rec = info.val_data.images[k]
      np.testing.assert_array_equal(b['scale'][0], [max(rec.width, rec.height)] * 2)
      np.testing.assert_array_equal(b['center'][0], [rec.width / 2, rec.height / 2])
      if b['valid'][0] and len(rec.boxes):
        trans = boxes_lib.get_affine_transform(b['center'][0], b['scale'][0], (64, 64))
        out = boxes_lib.affine_transform(rec.boxes.reshape(-1, 2), trans).reshape(-1, 4) / 4
        back = boxes_lib.transform_preds(out, b['center'][0], b['scale'][0], (16, 16))
        np.testing.assert_allclose(back, rec.boxes, atol=1e-4)
  assert sorted(ids) == [1, 2, 3]


def test_load_image_for_predict(coco_dir):
  cfg = coco_cfg(*coco_dir)
  path = os.path.join(coco_dir[0], 'sub/c.png')
  from_path = pipeline.load_image_for_predict(path, cfg)
  from_array = pipeline.load_image_for_predict(np.asarray(Image.open(path)), cfg)
  for key in from_path:
    np.testing.assert_array_equal(from_path[key], from_array[key])
  assert from_path['image'].shape == (1, 64, 64, 3)
  gray = pipeline.load_image_for_predict(np.zeros((10, 20), np.uint8), cfg)
  assert gray['image'].shape == (1, 32, 32, 3) and gray['orig_hw'].tolist() == [[10, 20]]


# --- Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize('content', [b'not an image at all', b''])
def test_corrupt_image_names_the_file(tmp_path, content):
  images = IMAGES + [(5, 'broken.jpg', (8, 8), 'RGB')]
  (tmp_path / 'broken.jpg').write_bytes(content)
  cfg = coco_cfg(str(tmp_path), write_coco(str(tmp_path), images=images))
  info = pipeline.get_dataset_info(cfg)
  assert info.train_source.check(4) and info.train_source.check(0) is None
  match = r'(?s)cannot read image file.*instances\.json:\n  .*broken\.jpg \(image id 5\): ' \
          r'(Unknown image|Input)'
  with pytest.raises(DataError, match=match):
    _take(pipeline.create_train_iterator(cfg, info=info, global_batch_size=5, seed=0), 2)
  with pytest.raises(DataError, match=r'broken\.jpg'):
    list(pipeline.create_eval_iterator(cfg, info=info, batch_size=2))


def test_unset_paths_and_unknown_source():
  cfg = data_config()
  cfg.source = 'coco_json'
  with pytest.raises(DataError, match='config.data.train_annotations'):
    pipeline.get_dataset_info(cfg)
  cfg.source = 'voc'
  with pytest.raises(DataError,
                     match="source must be 'coco_json', 'shapes', 'shapes_pose' or 'tfds'"):
    pipeline.get_dataset_info(cfg)

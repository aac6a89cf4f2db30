"""Tests of the input side: COCO-format reading, TFDS conversion, transforms, pipelines."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from centernet_jax import boxes as boxes_lib
from centernet_jax import config_lib
from centernet_jax.data import coco, pipeline, transforms
from centernet_jax.data.coco import DataError

tf = transforms.tf

# Tiny COCO folder: non-contiguous, unsorted category ids; a grayscale JPEG; a PNG in a
# sub-folder; an image without objects; a crowd box; a box partly outside its image.
CATEGORIES = [{'id': 12, 'name': 'zebra'}, {'id': 3, 'name': 'car'}, {'id': 7, 'name': 'train'}]
IMAGES = [  # id, file_name, (H, W), mode
    (1, 'a.jpg', (40, 48), 'RGB'), (2, 'gray.jpg', (44, 36), 'L'),
    (3, 'sub/c.png', (40, 40), 'RGB'), (4, 'empty.jpg', (32, 32), 'RGB')]
ANNOTATIONS = [  # id, image_id, category_id, bbox xywh, iscrowd
    (1, 1, 7, [4, 5, 10, 8], 0), (2, 1, 3, [0, 0, 48, 40], 1), (3, 1, 12, [40, 30, 20, 20], 0),
    (4, 2, 12, [2.5, 3.5, 20, 30], 0), (5, 3, 3, [10, 10, 15, 5], 0)]
LABEL = {3: 0, 7: 1, 12: 2}


def _pixels(h, w, mode, seed):
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8))
  img = img.resize((w, h), Image.BILINEAR)  # smooth: JPEG keeps it close
  return img.convert(mode)


def _write_coco(root, images=IMAGES, anns=ANNOTATIONS, name='instances.json', raw=None):
  """Writes the images (if absent) and the json; ``raw`` replaces top-level json entries."""
  os.makedirs(root, exist_ok=True)
  for image_id, file_name, (h, w), mode in images:
    path = os.path.join(root, file_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
      _pixels(h, w, mode, image_id).save(path)
  data = {'images': [{'id': i, 'file_name': f, 'height': h, 'width': w}
                     for i, f, (h, w), _ in images],
          'annotations': [{'id': a, 'image_id': i, 'category_id': c, 'bbox': b, 'iscrowd': z,
                           'area': b[2] * b[3]} for a, i, c, b, z in anns],
          'categories': CATEGORIES}
  data.update(raw or {})
  ann_file = os.path.join(root, name)
  with open(ann_file, 'w') as f:
    json.dump(data, f)
  return ann_file


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco'))
  return root, _write_coco(root)


def _cfg(root, ann_file, **kw):
  cfg = config_lib.data_config()
  cfg.source = 'coco_json'
  cfg.train_annotations = cfg.val_annotations = ann_file
  cfg.train_images = cfg.val_images = root
  cfg.input_size = 64
  cfg.max_objs = 4
  cfg.num_parallel_calls = 2
  cfg.update(kw)
  return cfg


NO_AUG = dict(rand_crop=False, shift=0.0, scale=0.0, flip=0.0, color_aug=False,
              mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _np_warp(img, trans, out_hw):
  """cv2.warpAffine oracle: bilinear, zero border, integer pixel centres."""
  inv = np.linalg.inv(np.vstack([trans, [0, 0, 1]]))[:2]
  ys, xs = np.mgrid[0:out_hw[0], 0:out_hw[1]]
  sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  h, w = img.shape[:2]

  def at(y, x):
    ok = ((y >= 0) & (y < h) & (x >= 0) & (x < w))[..., None]
    return np.where(ok, img[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0.0)

  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
          fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


# --- COCO-format reading ---------------------------------------------------------------------


def test_load_coco_labels_and_boxes(coco_dir):
  root, ann_file = coco_dir
  data = coco.load_coco(ann_file, root)
  assert data.category_ids == [3, 7, 12]
  assert data.class_names == ['car', 'train', 'zebra']
  assert [r.image_id for r in data.images] == [1, 2, 3, 4]
  a, gray, png, empty = data.images
  np.testing.assert_allclose(a.boxes, [[4, 5, 14, 13], [0, 0, 48, 40], [40, 30, 60, 50]])
  np.testing.assert_array_equal(a.labels, [1, 0, 2])
  np.testing.assert_array_equal(a.iscrowd, [False, True, False])
  np.testing.assert_allclose(gray.boxes, [[2.5, 3.5, 22.5, 33.5]])
  assert png.path == os.path.join(root, 'sub/c.png') and png.labels.tolist() == [0]
  assert empty.boxes.shape == (0, 4) and empty.labels.dtype == np.int32
  assert data.num_degenerate == 0


def test_dataset_info(coco_dir):
  info = pipeline.get_dataset_info(_cfg(*coco_dir))
  assert (info.num_classes, info.class_names, info.category_ids) == (3, ['car', 'train', 'zebra'],
                                                                     [3, 7, 12])
  assert info.val_gt == coco_dir[1] and info.val_image_ids == [1, 2, 3, 4]
  assert (info.num_train, info.num_val) == (4, 4)


def test_decode_grayscale_and_png(coco_dir):
  root, _ = coco_dir
  gray = pipeline.decode_image(tf.io.read_file(os.path.join(root, 'gray.jpg'))).numpy()
  assert gray.shape == (44, 36, 3) and gray.dtype == np.uint8
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  png = pipeline.decode_image(tf.io.read_file(os.path.join(root, 'sub/c.png'))).numpy()
  np.testing.assert_array_equal(png, np.asarray(Image.open(os.path.join(root, 'sub/c.png'))))


@pytest.mark.parametrize('train_on_crowd', [False, True])
def test_train_geometry_without_augmentation(coco_dir, train_on_crowd):
  cfg = _cfg(*coco_dir, train_on_crowd=train_on_crowd, channel_order='RGB', **NO_AUG)
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
  want_img = np.round(_np_warp(img, trans, (64, 64))) / 255
  np.testing.assert_allclose(batch['image'][b], want_img, atol=1.01 / 255)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_stream_is_deterministic_and_process_independent(coco_dir):
  cfg = _cfg(*coco_dir)
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


# --- Evaluation ------------------------------------------------------------------------------


def test_eval_keep_res_center_scale_map_back(coco_dir):
  cfg = _cfg(*coco_dir, channel_order='RGB', mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
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
  cfg = _cfg(*coco_dir, eval_mode='fixed_res', eval_size=64)
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
  cfg = _cfg(*coco_dir)
  path = os.path.join(coco_dir[0], 'sub/c.png')
  from_path = pipeline.load_image_for_predict(path, cfg)
  from_array = pipeline.load_image_for_predict(np.asarray(Image.open(path)), cfg)
  for key in from_path:
    np.testing.assert_array_equal(from_path[key], from_array[key])
  assert from_path['image'].shape == (1, 64, 64, 3)
  gray = pipeline.load_image_for_predict(np.zeros((10, 20), np.uint8), cfg)
  assert gray['image'].shape == (1, 32, 32, 3) and gray['orig_hw'].tolist() == [[10, 20]]


# --- Bad input: one clear message naming the file and the record -----------------------------


def _bad(tmp_path, raw):
  return coco.load_coco(_write_coco(str(tmp_path), name='bad.json', raw=raw), str(tmp_path))


def test_bad_json(tmp_path):
  path = tmp_path / 'bad.json'
  path.write_text('{"images": [\n  {"id": 1,}\n]}')
  with pytest.raises(DataError, match=r'bad\.json: invalid JSON at line 2 column 12'):
    coco.load_coco(str(path), str(tmp_path))
  with pytest.raises(DataError, match='annotation file not found: .*nope.json'):
    coco.load_coco(str(tmp_path / 'nope.json'), str(tmp_path))


@pytest.mark.parametrize('overrides, match', [
    (dict(categories=None), r"bad\.json: 'categories' is a NoneType"),
    (dict(annotations=[{'id': 9, 'image_id': 1, 'category_id': 99, 'bbox': [1, 1, 2, 2]}]),
     r'bad\.json: annotation id 9 \(image a\.jpg\) has category_id 99, which is not in'),
    (dict(annotations=[{'id': 9, 'image_id': 5, 'category_id': 3, 'bbox': [1, 1, 2, 2]}]),
     r'bad\.json: annotation id 9 refers to image id 5'),
    (dict(annotations=[{'id': 9, 'image_id': 1, 'category_id': 3, 'bbox': [1, 1, 2]}]),
     r"bad\.json: annotation id 9 \(image a\.jpg\) has 'bbox' = \[1, 1, 2\]"),
    (dict(annotations=[{'image_id': 1, 'category_id': 3, 'bbox': [1, 1, 2, 2]}]),
     r"bad\.json: annotations\[0\] has no 'id' field"),
    (dict(images=[{'id': 1}]), r"bad\.json: images\[0\] \(id 1\) has no 'file_name' field"),
])
def test_bad_records(tmp_path, overrides, match):
  with pytest.raises(DataError, match=match):
    _bad(tmp_path, overrides)


def test_missing_top_level_key(tmp_path):
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps({'images': [], 'annotations': []}))
  with pytest.raises(DataError, match=r"bad\.json: missing top-level key\(s\) \['categories'\]"):
    coco.load_coco(str(path), str(tmp_path))


def test_missing_image_file(tmp_path):
  ann_file = _write_coco(str(tmp_path), name='bad.json')
  os.remove(tmp_path / 'gray.jpg')
  with pytest.raises(DataError, match=r'1 of 4 image files not found:\n  .*gray\.jpg \(image id 2'):
    coco.load_coco(ann_file, str(tmp_path))


def test_degenerate_box_is_skipped_with_a_warning(tmp_path, caplog):
  anns = ANNOTATIONS + [(8, 3, 7, [5, 5, 0, 4], 0), (9, 3, 7, [5, 5, 3, -1], 0)]
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(_write_coco(str(tmp_path), anns=anns, name='bad.json'),
                          str(tmp_path))
  assert data.num_degenerate == 2
  assert data.images[2].labels.tolist() == [0]
  assert 'bad.json: skipping annotation id 8 (image sub/c.png)' in caplog.text
  assert 'annotation id 9 (image sub/c.png)' in caplog.text


@pytest.mark.parametrize('content', [b'not an image at all', b''])
def test_corrupt_image_names_the_file(tmp_path, content):
  images = IMAGES + [(5, 'broken.jpg', (8, 8), 'RGB')]
  (tmp_path / 'broken.jpg').write_bytes(content)
  cfg = _cfg(str(tmp_path), _write_coco(str(tmp_path), images=images))
  info = pipeline.get_dataset_info(cfg)
  match = r'(?s)cannot read image file.*instances\.json:\n  .*broken\.jpg: (Unknown image|Input)'
  with pytest.raises(DataError, match=match):
    _take(pipeline.create_train_iterator(cfg, info=info, global_batch_size=5, seed=0), 2)
  with pytest.raises(DataError, match=r'broken\.jpg'):
    list(pipeline.create_eval_iterator(cfg, info=info, batch_size=2))


def test_unset_paths_and_unknown_source():
  cfg = config_lib.data_config()
  cfg.source = 'coco_json'
  with pytest.raises(DataError, match='config.data.train_annotations'):
    pipeline.get_dataset_info(cfg)
  cfg.source = 'voc'
  with pytest.raises(DataError, match="source must be 'coco_json', 'shapes' or 'tfds'"):
    pipeline.get_dataset_info(cfg)


# --- TFDS ------------------------------------------------------------------------------------


def test_coco_2017_categories():
  ids = [i for i, _ in coco.COCO_2017_CATEGORIES]
  assert len(set(ids)) == 80 and ids == sorted(ids) and ids[-1] == 90


def test_tfds_category_ids():
  assert coco.tfds_category_ids(['person', 'traffic light', 'hair_drier', 'toothbrush']) == [
      1, 10, 89, 90]
  assert coco.tfds_category_ids([str(i) for i in range(80)])[-3:] == [88, 89, 90]
  with pytest.raises(DataError, match=r"\['unicorn'\] are not COCO 2017 category names"):
    coco.tfds_category_ids(['person', 'unicorn'])


def test_tfds_objects_to_pixels():
  objects = {'bbox': np.array([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.3, 0.5], [0, 0, 1, 1]],
                              np.float32),
             'label': np.array([0, 5, 79]), 'is_crowd': np.array([False, False, True]),
             'area': np.array([10, 0, 20000])}
  label_map = np.arange(80, dtype=np.int32)[::-1].copy()
  out = coco.tfds_objects_to_pixels(objects, 100, 200, label_map)
  np.testing.assert_allclose(out['boxes'].numpy(), [[40, 10, 120, 50], [0, 0, 200, 100]],
                             rtol=1e-6)
  assert out['labels'].numpy().tolist() == [79, 0]
  assert out['iscrowd'].numpy().tolist() == [False, True]
  assert out['area'].numpy().tolist() == [10, 20000]
  assert int(out['num_degenerate']) == 1


def _fake_tfds(n=3):
  """as_dataset_fn for tfds.testing.mock_data: hand-made coco/2017 records (JPEG bytes)."""
  import io

  def example(i):
    buf = io.BytesIO()
    _pixels(30 + 2 * i, 40, 'RGB', i).save(buf, 'JPEG')
    return {'image': buf.getvalue(), 'image/filename': f'{i}.jpg', 'image/id': 100 + i,
            'objects': {'id': np.array([i], np.int64), 'area': np.array([50], np.int64),
                        'bbox': np.array([[0.1, 0.25, 0.5, 0.75]], np.float32),
                        'label': np.array([i], np.int64), 'is_crowd': np.array([False])}}

  spec = {'image': tf.TensorSpec([], tf.string), 'image/filename': tf.TensorSpec([], tf.string),
          'image/id': tf.TensorSpec([], tf.int64),
          'objects': {'id': tf.TensorSpec([None], tf.int64),
                      'area': tf.TensorSpec([None], tf.int64),
                      'bbox': tf.TensorSpec([None, 4], tf.float32),
                      'label': tf.TensorSpec([None], tf.int64),
                      'is_crowd': tf.TensorSpec([None], tf.bool)}}

  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_generator(lambda: (example(i) for i in range(n)),
                                          output_signature=spec)

  return as_dataset


def test_tfds_pipeline_on_mock_records():
  import tensorflow_datasets as tfds

  cfg = config_lib.data_config()
  cfg.update(source='tfds', input_size=32, max_objs=2, num_parallel_calls=1, shuffle_buffer=4)
  with tfds.testing.mock_data(as_dataset_fn=_fake_tfds()):
    info = pipeline.get_dataset_info(cfg)
    assert info.num_classes == 80 and info.category_ids[:3] == [1, 2, 3]
    assert (info.num_train, info.num_val, info.val_image_ids) == (3, 3, [100, 101, 102])
    ann = info.val_gt['annotations'][1]
    assert ann['image_id'] == 101 and ann['category_id'] == 2 and ann['area'] == 50
    np.testing.assert_allclose(ann['bbox'], [10, 3.2, 20, 12.8], rtol=1e-5)
    assert info.val_gt['images'][1] == {'id': 101, 'height': 32, 'width': 40,
                                        'file_name': '1.jpg'}
    batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
    assert batch['image'].shape == (2, 32, 32, 3) and batch['mask'].sum() == 2
    evals = list(pipeline.create_eval_iterator(cfg, info=info, batch_size=2))
    assert [b['image_id'][b['valid']].tolist() for b in evals] == [[100, 101], [102]]


# --- Transforms ------------------------------------------------------------------------------


@pytest.mark.parametrize('center, scale, size', [
    ((20.0, 30.0), 50.0, (64, 64)), ((100.5, 7.0), (130.0, 90.0), (32, 24)),
    ((0.0, 0.0), 640.0, (512, 512)), ((319.0, 240.0), (672.0, 512.0), (168, 128))])
@pytest.mark.parametrize('inv', [False, True])
def test_affine_matches_boxes_module(center, scale, size, inv):
  want = boxes_lib.get_affine_transform(center, scale, size, inv=inv)
  got = transforms.get_affine_transform(center, scale, size, inv=inv).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_warp_moves_pixels_where_the_affine_says():
  img = np.zeros((20, 30, 3), np.float32)
  img[4, 6] = [1, 2, 3]
  trans = transforms.get_affine_transform((8.0, 5.0), 15.0, (60, 40))  # zoom 4
  out = transforms.warp_affine(tf.constant(img), trans, (40, 60)).numpy()
  x, y = boxes_lib.affine_transform(np.array([6.0, 4.0]), trans.numpy())
  assert np.unravel_index(out[..., 2].argmax(), out.shape[:2]) == (int(y), int(x))
  np.testing.assert_allclose(out[int(y), int(x)], [1, 2, 3], atol=1e-5)
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 255, (17, 23, 3)).astype(np.float32)
  trans = transforms.get_affine_transform((9.3, 7.1), 13.7, (31, 29))
  trans = transforms.compose_affine(trans, transforms.hflip_affine(23))
  out = transforms.warp_affine(tf.constant(img), trans, (29, 31)).numpy()
  np.testing.assert_allclose(out, _np_warp(img, trans.numpy(), (29, 31)), atol=1e-3)


def test_flip_composed_into_the_warp_equals_mirror_then_warp():
  rng = np.random.default_rng(1)
  img = rng.uniform(0, 255, (12, 15, 3)).astype(np.float32)
  trans = transforms.get_affine_transform((5.0, 6.0), 11.0, (16, 16))
  one = transforms.warp_affine(
      tf.constant(img), transforms.compose_affine(trans, transforms.hflip_affine(15)), (16, 16))
  two = transforms.warp_affine(tf.constant(img[:, ::-1].copy()), trans, (16, 16))
  np.testing.assert_allclose(one.numpy(), two.numpy(), atol=1e-3)
  boxes = tf.constant([[1.0, 2.0, 4.0, 9.0]])
  np.testing.assert_allclose(transforms.hflip_boxes(boxes, 15).numpy(), [[10, 2, 13, 9]])


def _official_border(border, size):
  i = 1
  while size - border // i <= border // i:
    i *= 2
  return border // i


@pytest.mark.parametrize('size', [1, 2, 3, 100, 128, 200, 256, 257, 640])
def test_get_border(size):
  assert int(transforms.get_border(tf.constant(size))) == _official_border(128, size)


def test_random_crop_ranges():
  choices = np.arange(0.6, 1.4, 0.1)
  for i in range(20):
    seed = tf.constant([i, 5], tf.int64)
    center, s = transforms.random_crop(seed, 300, 200, scale_choices=choices, rand_crop=True,
                                       shift=0.1, scale=0.4)
    assert np.isclose(choices * 300, float(s)).any()
    assert 64 <= center[0] < 200 - 64 and 128 <= center[1] < 300 - 128
    center, s = transforms.random_crop(seed, 300, 200, scale_choices=choices, rand_crop=False,
                                       shift=0.1, scale=0.4)
    assert 0.6 * 300 - 1e-3 <= float(s) <= 1.4 * 300 + 1e-3
    assert np.all(np.abs(center.numpy() - [100, 150]) <= 0.2 * 300 + 1e-3)


def test_color_augment():
  img = tf.constant(np.random.default_rng(0).uniform(0, 1, (8, 9, 3)), tf.float32)
  seed = tf.constant([1, 2], tf.int64)
  out = transforms.color_augment(img, seed)
  assert out.shape == (8, 9, 3) and out.dtype == tf.float32
  np.testing.assert_array_equal(out.numpy(), transforms.color_augment(img, seed).numpy())
  assert not np.allclose(out, transforms.color_augment(img, tf.constant([1, 3], tf.int64)))
  # A gray image stays gray up to the per-channel PCA lighting offset.
  gray = tf.fill([4, 4, 3], 0.5)
  diff = (transforms.color_augment(gray, seed) - gray).numpy()
  np.testing.assert_allclose(diff - diff[:1, :1], 0, atol=1e-6)


@pytest.mark.parametrize('center, scale, out, flip', [
    ((20.0, 15.0), 40.0, 48, False), ((20.0, 15.0), 40.0, 48, True),
    ((5.0, 30.0), 70.0, 64, True), ((33.0, 2.0), 18.0, 32, False)])
@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_axis_aligned_warp_matches_cv2_oracle(center, scale, out, flip, dtype):
  img = np.random.default_rng(2).uniform(0, 255, (31, 41, 3)).astype(dtype)
  trans = transforms.get_affine_transform(center, scale, (out, out))
  if flip:
    trans = transforms.compose_affine(trans, transforms.hflip_affine(41))
  got = transforms.warp_axis_aligned(tf.constant(img), trans, (out, out)).numpy()
  want = _np_warp(img.astype(np.float64), trans.numpy(), (out, out))
  np.testing.assert_allclose(got, want, atol=2e-3)
  assert (want == 0).any() and (want > 0).any()  # the zero border is exercised


@pytest.mark.parametrize('channel_order', ['BGR', 'RGB'])
@pytest.mark.parametrize('color_aug', [True, False])
def test_color_normalize_affine_equals_the_colour_chain(channel_order, color_aug):
  x = np.round(np.random.default_rng(3).uniform(0, 255, (9, 11, 3))).astype(np.float32)
  mean, std = (0.40, 0.45, 0.47), (0.29, 0.27, 0.28)
  seed = tf.constant([4, 5], tf.int64)
  want = transforms.to_channel_order(tf.constant(x) / 255.0, channel_order)
  if color_aug:
    want = transforms.color_augment(want, seed, bgr=channel_order == 'BGR')
  want = transforms.normalize(want, mean, std).numpy()
  m, b = transforms.color_normalize_affine(x.mean((0, 1)), seed, color_aug=color_aug,
                                           channel_order=channel_order, mean=mean, std=std)
  np.testing.assert_allclose(x @ m.numpy() + b.numpy(), want, atol=1e-5)


def test_train_transform_equals_the_two_pass_chain_up_to_ties():
  """The fast path differs from warp_affine -> round -> colour only where rounding ties flip."""
  rng = np.random.default_rng(4)
  img = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((4, 4, 1))).astype(np.uint8)
  mean, std = (0.40, 0.45, 0.47), (0.29, 0.27, 0.28)
  kw = dict(input_size=64, max_objs=4, scale_choices=np.arange(0.6, 1.4, 0.1), mean=mean,
            std=std)
  seed = tf.constant([6, 7], tf.int64)
  got = transforms.train_transform(tf.constant(img), tf.zeros([0, 4]), tf.zeros([0], tf.int32),
                                   seed, **kw)['image'].numpy()
  # The same draws as train_transform, then the original ten-pass chain.
  seeds = tf.random.experimental.stateless_split(seed, 3)
  center, s = transforms.random_crop(seeds[0], 48, 64, scale_choices=kw['scale_choices'],
                                     rand_crop=True, shift=0.1, scale=0.4)
  flipped = tf.random.stateless_uniform([], seeds[1]) < 0.5
  center = tf.where(flipped, tf.stack([63.0 - center[0], center[1]]), center)
  trans = transforms.get_affine_transform(center, s, (64, 64))
  trans = tf.where(flipped, transforms.compose_affine(trans, transforms.hflip_affine(64)), trans)
  inp = tf.round(transforms.warp_affine(tf.constant(img, tf.float32), trans, (64, 64))) / 255.0
  inp = transforms.color_augment(inp[..., ::-1], seeds[2])
  want = transforms.normalize(inp, mean, std).numpy()
  level = 1.0 / (255 * min(std))  # one uint8 step after normalisation
  assert np.abs(got - want).max() <= level * 1.01
  assert (np.abs(got - want) > 1e-4).mean() < 0.03


def test_pad_objects_keeps_visible_objects_first():
  boxes = tf.constant([[-20, -20, -5, -5], [1, 1, 5, 5], [70, 0, 80, 5]], tf.float32)
  b, labels, m = transforms.pad_objects(boxes, tf.constant([0, 1, 2]), 2, (64, 64))
  np.testing.assert_allclose(b.numpy(), [[1, 1, 5, 5], [-20, -20, -5, -5]])
  assert labels.numpy().tolist() == [1, 0] and m.numpy().tolist() == [1, 1]
  b, _, m = transforms.pad_objects(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 3, (64, 64))
  assert b.shape == (3, 4) and m.numpy().tolist() == [0, 0, 0]

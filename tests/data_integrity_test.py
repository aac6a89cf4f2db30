"""Nothing lost without a word (issue 16): every input the loader, the pipeline, the evaluator or
the checkpoint code would otherwise drop or bend silently is an error, or a logged, counted skip.

Tiny COCO-format folders (images of at most 64 px); no model is built.
"""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from centernet_jax import checkpoint
from centernet_jax.data import coco, errors, pipeline, sources, transforms
from centernet_jax.data.errors import DataError
from centernet_jax.evaluation import coco as coco_eval
from centernet_jax.state import TrainState
from tests.helpers.coco_folder import ANNOTATIONS, IMAGES, NO_AUG, coco_cfg, pixels, write_coco

tf = transforms.tf

# --- 1. EXIF orientation -------------------------------------------------------------------


def _save_oriented(path: str, img: Image.Image, orientation: int) -> None:
  exif = Image.Exif()
  exif[0x0112] = orientation
  img.save(path, exif=exif.tobytes())


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
  rng = np.random.default_rng(orientation)
  stored = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
  png = str(tmp_path / 'x.png')
  _save_oriented(png, stored, orientation)
  assert coco.image_orientation(png) == (orientation, (7, 5))
  shown = np.asarray(ImageOps.exif_transpose(Image.open(png)).convert('RGB'))
  np.testing.assert_array_equal(sources.read_image(png), shown)  # lossless: exact
  np.testing.assert_array_equal(sources.read_image(png, 'ignore'), np.asarray(stored))

  jpg = str(tmp_path / 'x.jpg')
  _save_oriented(jpg, pixels(32, 48, 'RGB', orientation), orientation)
  assert coco.image_orientation(jpg) == (orientation, (48, 32))
  shown = np.asarray(ImageOps.exif_transpose(Image.open(jpg)).convert('RGB'), np.float32)
  ours = sources.read_image(jpg).astype(np.float32)
  assert ours.shape == shown.shape and np.abs(ours - shown).mean() < 2.0


def test_orientation_of_files_without_exif(tmp_path):
  pixels(8, 6, 'RGB', 0).save(tmp_path / 'plain.jpg')
  pixels(8, 6, 'RGB', 0).save(tmp_path / 'plain.bmp')
  assert coco.image_orientation(str(tmp_path / 'plain.jpg')) == (1, (6, 8))
  assert coco.image_orientation(str(tmp_path / 'plain.bmp')) == (1, None)
  _save_oriented(str(tmp_path / 'odd.jpg'), pixels(8, 6, 'RGB', 0), 9)  # not an orientation
  assert coco.image_orientation(str(tmp_path / 'odd.jpg'))[0] == 1


# A phone photo: stored 48 wide x 32 tall, EXIF 6 (shown rotated 90 degrees clockwise, 32 x 48);
# the annotation tool saw (and the json records) the rotated image.
PHONE_ANNS = [(1, 1, 3, [4, 20, 10, 20], 0)]


def _phone_folder(root: str, json_hw=(48, 32)) -> str:
  os.makedirs(root, exist_ok=True)
  _save_oriented(os.path.join(root, 'phone.jpg'), pixels(32, 48, 'RGB', 5), 6)
  h, w = json_hw
  return write_coco(root, images=[(1, 'phone.jpg', (h, w), 'RGB')], anns=PHONE_ANNS,
                    categories=[{'id': 3, 'name': 'car'}])


def _decode(source, index: int = 0) -> dict:
  element = tf.data.Dataset.from_tensors({'index': tf.constant(index, tf.int64)})
  return source.decode(next(iter(source.read(element, 1))))


def test_exif_orientation_in_training_evaluation_and_predict(tmp_path):
  root = str(tmp_path)
  ann_file = _phone_folder(root)
  path = os.path.join(root, 'phone.jpg')
  shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert('RGB'), np.float32)
  assert shown.shape == (48, 32, 3)

  cfg = coco_cfg(root, ann_file, **NO_AUG)
  info = pipeline.get_dataset_info(cfg)
  assert info.train_data.images[0].orientation == 6 and info.train_data.num_oriented == 1
  assert pipeline.data_counts(info)['exif_oriented_images'] == 1
  image = _decode(info.train_source)['image'].numpy().astype(np.float32)
  assert image.shape == (48, 32, 3) and np.abs(image - shown).mean() < 2.0

  batch = next(pipeline.create_eval_iterator(cfg, info=info, batch_size=1))
  assert batch['orig_hw'].tolist() == [[48, 32]]
  assert pipeline.load_image_for_predict(path, cfg)['orig_hw'].tolist() == [[48, 32]]

  # Training: no augmentation, s = 48 -> 64: the box (in the shown image) lands where its
  # pixels are.
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=1, seed=0))
  k = 64 / 48
  np.testing.assert_allclose(batch['boxes'][0, 0], [(4 - 16) * k + 32, (20 - 24) * k + 32,
                                                    (14 - 16) * k + 32, (40 - 24) * k + 32],
                             atol=1e-4)

  cfg.exif_orientation = 'ignore'
  info = pipeline.get_dataset_info(cfg)
  assert info.train_data.images[0].orientation == 1
  assert _decode(info.train_source)['image'].shape == (32, 48, 3)
  assert pipeline.load_image_for_predict(path, cfg)['orig_hw'].tolist() == [[32, 48]]
  cfg.exif_orientation = 'rotate'
  with pytest.raises(DataError, match=r"config.data.exif_orientation must be one of \('apply', "):
    pipeline.get_dataset_info(cfg)


def test_exif_size_disagreeing_with_the_json_is_an_error(tmp_path):
  root = str(tmp_path)
  ann_file = _phone_folder(root, json_hw=(32, 48))  # the json records the stored size
  with pytest.raises(DataError, match=(
      r"(?s)instances\.json: 1 image\(s\) whose size after their EXIF orientation disagrees.*"
      r"phone\.jpg \(image id 1\): EXIF orientation 6 shows its stored 48x32 pixels as 32x48, "
      r"but the annotation file says 48x32.*config\.data\.exif_orientation='ignore'")):
    coco.load_coco(ann_file, root)
  data = coco.load_coco(ann_file, root, exif_orientation='ignore')
  assert data.images[0].orientation == 1

  # The decode-time check, should a header say otherwise than the pixels.
  data.images[0].orientation = 6
  reason = sources.CocoJsonSource(data).check(0)
  assert reason is not None and 'phone.jpg: size after the EXIF orientation 6 disagrees' in reason


# --- 2. One file under two image ids; 3. boxes outside their image ---------------------------


def test_same_file_under_two_image_ids_is_named(tmp_path, caplog):
  images = IMAGES + [(9, 'a.jpg', (40, 48), 'RGB')]
  ann_file = write_coco(str(tmp_path), images=images)
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(ann_file, str(tmp_path))
  assert data.num_duplicate_files == 1
  assert (f'instances.json: image ids 1 and 9 both name the file {tmp_path}/a.jpg'
          in caplog.text)


def test_box_outside_its_image_is_skipped_logged_and_counted(tmp_path, caplog):
  anns = ANNOTATIONS + [(8, 1, 7, [48, 5, 4, 4], 0), (9, 1, 7, [-10, 5, 10, 4], 0),
                        (10, 1, 7, [-10, 5, 10.5, 4], 0)]  # 10 keeps half a pixel: kept
  ann_file = write_coco(str(tmp_path), anns=anns)
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(ann_file, str(tmp_path))
  assert data.num_outside == 2 and data.num_degenerate == 0
  assert len(data.images[0].labels) == 4
  assert ('skipping annotation id 8 (image a.jpg): bbox [48, 5, 4, 4] lies entirely outside '
          'the 48x40 image') in caplog.text
  assert 'annotation id 9 (image a.jpg)' in caplog.text
  assert 'annotation id 10' not in caplog.text
  assert errors.bbox_problem([1, 1, 0, 3]) == 'degenerate'
  assert errors.bbox_problem([5, 1, 3, 3], 5, 5) == 'outside'
  assert errors.bbox_problem([5, 1, 3, 3]) is None  # size unknown: kept


def test_data_counts(tmp_path):
  images = IMAGES + [(9, 'a.jpg', (40, 48), 'RGB')]
  anns = ANNOTATIONS + [(8, 1, 7, [48, 5, 4, 4], 0), (9, 2, 7, [1, 1, 0, 4], 0)]
  ann_file = write_coco(str(tmp_path), images=images, anns=anns)
  info = pipeline.get_dataset_info(coco_cfg(str(tmp_path), ann_file))
  counts = pipeline.data_counts(info)
  assert counts == {'skipped_annotations': 0, 'degenerate_boxes': 1, 'outside_boxes': 1,
                    'duplicate_image_files': 1, 'exif_oriented_images': 0,
                    'empty_images_left_out': 0, 'val_degenerate_boxes': 1,
                    'val_outside_boxes': 1, 'val_duplicate_image_files': 1}


# --- 4. More objects than data.max_objs --------------------------------------------------------


def test_objects_past_max_objs_are_counted_per_row(tmp_path):
  images = [(1, 'many.jpg', (64, 64), 'RGB'), (2, 'few.jpg', (64, 64), 'RGB')]
  anns = [(k + 1, 1, 3, [4 + 5 * k, 10, 4, 4], 0) for k in range(10)]
  anns += [(11, 2, 3, [4, 4, 8, 8], 0), (12, 2, 3, [20, 20, 8, 8], 0)]
  ann_file = write_coco(str(tmp_path), images=images, anns=anns,
                        categories=[{'id': 3, 'name': 'car'}])
  cfg = coco_cfg(str(tmp_path), ann_file, **NO_AUG)  # max_objs 4
  info = pipeline.get_dataset_info(cfg)
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
  dropped = dict(zip(batch['image_id'].tolist(), batch['dropped_objects'].tolist(), strict=True))
  assert dropped == {1: 6, 2: 0} and batch['dropped_objects'].dtype == np.int32
  assert batch['mask'].sum() == 4 + 2


def test_count_dropped_counts_only_visible_objects():
  boxes = tf.constant([[-20, -20, -10, -10], [1, 1, 5, 5], [70, 1, 80, 5], [2, 2, 6, 6],
                       [3, 3, 9, 9]], tf.float32)  # 0 and 2 are off the 64 x 64 canvas
  for policy, want in (('first', 2), ('visible_first', 1)):
    order = transforms.object_order(boxes, 2, (64, 64), policy)
    assert int(transforms.count_dropped(boxes, order, (64, 64))) == want
  order = transforms.object_order(boxes, 3, (64, 64), 'visible_first')
  assert int(transforms.count_dropped(boxes, order, (64, 64))) == 0


def test_train_input_counts_warn_once_and_summarise(caplog):
  counts = errors.TrainInputCounts(max_objs=4)
  with caplog.at_level(logging.WARNING):
    counts.update({'image_id': np.array([5, 6]), 'dropped_objects': np.array([0, 3]),
                   'skipped': np.array([False, False])})
    counts.update({'image_id': np.array([7, 8]), 'dropped_objects': np.array([9, 1]),
                   'skipped': np.array([False, False])})
  assert caplog.text.count('more objects in its crop than config.data.max_objs=4') == 1
  assert 'image id 6) has 3 more objects' in caplog.text
  assert counts.metrics() == {'skipped_images': 0, 'dropped_objects': 13,
                              'max_dropped_objects': 9}
  assert ('13 objects left out by config.data.max_objs=4 (at most 9 in one image, image id 7: '
          'raise config.data.max_objs to at least 13') in counts.summary()


# --- Also: skips counted (and logged) where the loop consumes them --------------------------


def _failing_stream(ok, dropped):
  n = len(ok)
  return tf.data.Dataset.from_tensor_slices({
      'x': np.arange(n, dtype=np.float32), 'dropped_objects': np.asarray(dropped, np.int32),
      errors.OK: np.asarray(ok), errors.POSITION: np.arange(n, dtype=np.int64)}).batch(2)


def test_skips_are_logged_for_the_rows_the_loop_consumes(caplog):
  ds = _failing_stream([True, False, True, False], [2, 5, 1, 0])
  it = errors.checked_train_batches(ds, lambda j: f'file{j}.jpg (image id {j}): broken', 'fix',
                                    num_examples=100, max_fraction=0.9, log_skips=False)
  counts = errors.TrainInputCounts(max_objs=4)
  with caplog.at_level(logging.WARNING):
    first = next(it)
    next(it)  # read ahead by the prefetcher, never trained on
    counts.update(first)
  assert first['skipped'].tolist() == [False, True]
  assert first['skip_reasons'].tolist() == ['', 'file1.jpg (image id 1): broken']
  assert first['x'].tolist() == [0, 0] and first['dropped_objects'].tolist() == [2, 0]
  assert counts.skipped_images == 1 and counts.dropped_objects == 2
  assert caplog.text.count('Skipping unreadable training image') == 1
  assert 'file1.jpg' in caplog.text and 'file3.jpg' not in caplog.text


def test_small_data_sets_are_told_why_the_first_bad_image_stops_them():
  ds = _failing_stream([True, False], [0, 0])
  with pytest.raises(DataError, match=(
      r'(?s)With 50 training images, config.data.max_skip_fraction=0.01 allows no skip at all, '
      r'so the first bad one stops the run.*--config.data.max_skip_fraction=0.02')):
    next(errors.checked_train_batches(ds, str, 'fix', num_examples=50, max_fraction=0.01))
  invalid = errors.InvalidAnnotations('x.json', 0.01)
  invalid.add(DataError('x.json: annotation id 3 is bad'))
  with pytest.raises(DataError, match=r'With 5 annotations, config.data.max_skip_fraction=0.01 '
                     r'allows no skip at all'):
    invalid.finish(5)
  assert errors.budget_hint(100, 0.01, 'training images') == ''


# --- 5. Training split without annotations; 6. validation split without annotations ---------


def test_training_split_without_objects_is_refused(tmp_path):
  ann_file = write_coco(str(tmp_path), anns=[])
  with pytest.raises(DataError, match=r'instances\.json: no object to train on: 4 images, 0 '
                     r'annotations kept \(0 crowd\), so training would learn background only'):
    pipeline.get_dataset_info(coco_cfg(str(tmp_path), ann_file))
  zero = write_coco(str(tmp_path), anns=[(1, 1, 3, [4, 5, 0, 8], 0)], name='zero.json')
  with pytest.raises(DataError, match=r'zero\.json: no object to train on: .* skipped 1 of '
                     'zero size'):
    pipeline.get_dataset_info(coco_cfg(str(tmp_path), zero))
  crowd = write_coco(str(tmp_path), anns=[(1, 1, 3, [4, 5, 10, 8], 1)], name='crowd.json')
  with pytest.raises(DataError, match=r'\(1 crowd\).*config\.data\.train_on_crowd'):
    pipeline.get_dataset_info(coco_cfg(str(tmp_path), crowd))
  assert pipeline.get_dataset_info(coco_cfg(str(tmp_path), crowd, train_on_crowd=True)).num_train


def test_validation_split_without_objects_says_why_metrics_are_minus_one(tmp_path, caplog):
  root = str(tmp_path)
  cfg = coco_cfg(root, write_coco(root))
  cfg.val_annotations = write_coco(root, anns=[], name='val.json')
  with caplog.at_level(logging.WARNING):
    info = pipeline.get_dataset_info(cfg)
  assert ('val.json: no object to evaluate against (4 images, 0 annotations kept (0 crowd)): '
          'every COCO metric of this split will be -1') in caplog.text
  logs = []
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    metrics = coco_eval.evaluate_detections(
        info.val_gt, [{'image_id': 1, 'category_id': 3, 'bbox': [1, 1, 5, 5], 'score': 0.5}],
        log=logs.append)
  assert set(metrics.values()) == {-1.0}
  why = 'no ground truth to score: the 4 evaluated images hold no objects'
  assert why in logs[0] and why in caplog.text


# --- 7. Zero-size (and outside) validation boxes: evaluated as the loader kept them ----------


def _gt_with_skipped_boxes() -> dict:
  boxes = [[10, 10, 20, 20], [50, 50, 30, 30], [5, 60, 20, 30]]
  skipped = [[70, 10, 0, 10], [150, 150, 10, 10]]  # zero width; outside the 100 x 100 image
  return {'images': [{'id': 1, 'width': 100, 'height': 100, 'file_name': 'a.jpg'}],
          'categories': [{'id': 3, 'name': 'car'}],
          'annotations': [{'id': k + 1, 'image_id': 1, 'category_id': 3, 'bbox': b}
                          for k, b in enumerate(boxes + skipped)]}, boxes


@pytest.mark.parametrize('as_file', [False, True])
def test_perfect_detections_of_the_kept_boxes_score_ap_one(tmp_path, caplog, as_file):
  gt, boxes = _gt_with_skipped_boxes()
  if as_file:
    path = str(tmp_path / 'val.json')
    with open(path, 'w') as f:
      json.dump(gt, f)
    gt = path
  dets = [{'image_id': 1, 'category_id': 3, 'bbox': b, 'score': 0.9} for b in boxes]
  with caplog.at_level(logging.WARNING):
    metrics = coco_eval.evaluate_detections(gt, dets, log=None)
  assert metrics['AP'] == pytest.approx(1.0) and metrics['AR100'] == pytest.approx(1.0)
  assert '1 ground-truth annotation(s) left out of the evaluation, box zero or negative' in (
      caplog.text)
  assert 'entirely outside its image (as in training), ids [5]' in caplog.text


def test_the_loader_and_the_evaluator_keep_the_same_boxes(tmp_path):
  gt, _ = _gt_with_skipped_boxes()
  Image.new('RGB', (100, 100)).save(tmp_path / 'a.jpg')
  path = str(tmp_path / 'val.json')
  with open(path, 'w') as f:
    json.dump(gt, f)
  loaded = coco.load_coco(path, str(tmp_path))
  kept = coco_eval.load_gt(path).dataset['annotations']
  assert len(loaded.images[0].labels) == len(kept) == 3
  assert loaded.num_degenerate == 1 and loaded.num_outside == 1


# --- 8. Resuming with other categories --------------------------------------------------------


def _state(value: float) -> TrainState:
  return TrainState(step=jnp.asarray(0, jnp.int32), params={'w': jnp.full((3,), value)},
                    batch_stats={'m': jnp.zeros((2,))}, opt_state={'mu': jnp.zeros((3,))})


def test_resume_with_other_categories_is_refused(tmp_path):
  model = {'arch': 'resnet_tiny', 'num_classes': 3}
  meta = {'task': 'ctdet', 'model': model, 'class_names': ['car', 'bus', 'cat'],
          'category_ids': [1, 2, 3]}
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), async_save=False)
  ckpt.save(_state(1.0), meta, force=True)
  ckpt.wait()
  restored = checkpoint.restore_or_init(ckpt, _state(0.0), dict(meta))
  np.testing.assert_array_equal(restored.params['w'], [1, 1, 1])

  other_ids = dict(meta, category_ids=[1, 2, 4])
  with pytest.raises(checkpoint.ModelMismatchError, match=(
      r'(?s)holds a checkpoint trained on other categories:\n  category_ids: checkpoint has '
      r'\[1, 2, 3\], data has \[1, 2, 4\] \(label 2: 3 -> 4\).*Use another --workdir')):
    checkpoint.restore_or_init(ckpt, _state(0.0), other_ids)
  other_names = dict(meta, class_names=['car', 'bus', 'dog'])
  with pytest.raises(checkpoint.ModelMismatchError, match=r"label 2: 'cat' -> 'dog'"):
    checkpoint.restore_or_init(ckpt, _state(0.0), other_names)
  # A meta without the label space (evaluate / predict check the model only) still restores.
  checkpoint.check_meta(meta, {'model': model}, 'w')
  ckpt.close()

"""Tests of the TFDS source: random access, the index-shuffle stream, O(1) resume, errors.

The data set is a tiny builder with the coco/2017 features (tests/helpers/tiny_tfds.py),
prepared in a temporary folder as array_record (random access) or TFRecord (sequential only).
"""

import numpy as np
import pytest

from centernet_jax.data import pipeline, sources
from centernet_jax.data.config import data_config
from centernet_jax.data.errors import DataError
from tests.helpers import tiny_tfds

tf = sources.tf


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tfds'))
  tiny_tfds.prepare(root, 'array_record')
  return root


def _cfg(data_dir, **kw):
  cfg = data_config()
  cfg.update(source='tfds', tfds_name='tiny_coco', tfds_data_dir=data_dir, input_size=32,
             max_objs=4, num_parallel_calls=2)
  cfg.update(kw)
  return cfg


@pytest.fixture(scope='module')
def info(data_dir):
  return pipeline.get_dataset_info(_cfg(data_dir))


@pytest.fixture(scope='module')
def stored_ids(data_dir):
  """Image id of each record of each split, in stored order (TFDS shuffles at generation), read
  with TFDS's own decoding."""
  import tensorflow_datasets as tfds

  builder = tfds.builder('tiny_coco', data_dir=data_dir)
  return {split: [int(ex['image/id']) for ex in builder.as_data_source(split)]
          for split in ('train', 'validation')}


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_tiny_builder_has_the_coco_2017_features(tmp_path, data_dir):
  """The records the tests read are laid out as coco/2017's (its features come from code)."""
  import tensorflow_datasets as tfds

  coco = tfds.builder('coco/2017', data_dir=str(tmp_path)).info.features
  tiny = tfds.builder('tiny_coco', data_dir=data_dir).info.features
  assert tiny.get_serialized_info() == coco.get_serialized_info()
  assert repr(tiny).replace('num_classes=3', 'num_classes=80') == repr(coco)
  assert tiny['image'].encoding_format == coco['image'].encoding_format == 'jpeg'


def test_info_and_ground_truth(info, stored_ids):
  assert (info.num_classes, info.class_names, info.category_ids) == (
      3, ['person', 'bicycle', 'car'], [1, 2, 3])
  assert (info.num_train, info.num_val, info.source) == (11, 5, 'tfds')
  assert info.train_data is None and info.val_data is None
  assert info.val_image_ids == stored_ids['validation']
  assert sorted(stored_ids['validation']) == [tiny_tfds.image_id('validation', i) for i in range(5)]
  gt = info.val_gt
  h, w = tiny_tfds.hw('validation', 1)
  assert gt['images'][stored_ids['validation'].index(901)] == {'id': 901, 'height': h, 'width': w,
                             'file_name': 'validation_1.jpg'}
  assert gt['categories'] == [{'id': 1, 'name': 'person'}, {'id': 2, 'name': 'bicycle'},
                              {'id': 3, 'name': 'car'}]
  # Example 1 has two boxes and a zero-width one (dropped).
  anns = [a for a in gt['annotations'] if a['image_id'] == 901]
  want = tiny_tfds.objects('validation', 1)
  assert len(anns) == 2 and len(gt['annotations']) == sum(
      len(tiny_tfds.objects('validation', i)['label']) for i in range(5)) - 1
  for ann, box, label, crowd, area in zip(anns, want['bbox'], want['label'], want['is_crowd'],
                                          want['area'], strict=False):
    np.testing.assert_allclose(ann['bbox'], [box.xmin * w, box.ymin * h, (box.xmax - box.xmin) * w,
                                             (box.ymax - box.ymin) * h], rtol=1e-5)
    assert (ann['category_id'], ann['iscrowd'], ann['area']) == (label + 1, crowd, area)


def test_source_reads_by_index(info, stored_ids):
  source = info.train_source
  assert isinstance(source, sources.TfdsSource) and len(source) == 11
  ds = source.read(tf.data.Dataset.from_tensor_slices({'index': np.array([7, 2], np.int64)}), 1)
  seven, two = list(ds.map(source.decode).as_numpy_iterator())
  ids = stored_ids['train']
  assert (seven['image_id'], two['image_id']) == (ids[7], ids[2])
  i = ids[7] - 100  # generated as example i
  assert seven['image'].shape == (*tiny_tfds.hw('train', i), 3)
  assert seven['labels'].tolist() == tiny_tfds.objects('train', i)['label']
  assert seven['iscrowd'].tolist() == tiny_tfds.objects('train', i)['is_crowd']
  h, w = tiny_tfds.hw('train', i)
  box = tiny_tfds.objects('train', i)['bbox'][0]
  np.testing.assert_allclose(seven['boxes'][0], [box.xmin * w, box.ymin * h, box.xmax * w,
                                                 box.ymax * h], rtol=1e-5)
  assert source.describe(7) == f'record 7 of TFDS tiny_coco train (image id {ids[7]})'
  assert source.check(7) is None


def test_train_stream_is_a_pure_function_of_seed_and_position(data_dir, info, stored_ids):
  """The COCO-json contract: example of global position i = index_shuffle(i), whatever the
  process count; resuming at step s reads only from step s on."""
  cfg = _cfg(data_dir)
  make = lambda **kw: pipeline.create_train_iterator(cfg, info=info, global_batch_size=4,
                                                     seed=3, **kw)
  one = _take(make(), 4)
  p0 = _take(make(process_index=0, process_count=2), 4)
  p1 = _take(make(process_index=1, process_count=2), 4)
  resumed = _take(make(start_step=2), 2)
  for step in range(4):
    for key in one[step]:
      np.testing.assert_array_equal(
          one[step][key], np.concatenate([p0[step][key], p1[step][key]]), err_msg=key)
      if step >= 2:
        np.testing.assert_array_equal(one[step][key], resumed[step - 2][key], err_msg=key)
    # Global position i of the stream is example train_example_index(i, N, seed).
    want = [stored_ids['train'][int(pipeline.train_example_index(4 * step + r, 11, 3))]
            for r in range(4)]
    assert one[step]['image_id'].tolist() == want
  # 16 reads cover the 11 examples in the first epoch, then start a new permutation.
  ids = np.concatenate([b['image_id'] for b in one]).tolist()
  assert sorted(ids[:11]) == list(range(100, 111))
  assert one[0]['image'].shape == (4, 32, 32, 3) and not one[0]['skipped'].any()


def test_resume_far_into_the_stream_reads_only_what_it_yields(data_dir, info, stored_ids,
                                                             monkeypatch):
  """Resuming at step 10^9 (4 * 10^9 records in) is O(1): no record before it is read."""
  source = info.train_source
  fetched = []
  fetch = source._fetch

  def counting_fetch(indices):
    fetched.extend(indices.tolist())
    return fetch(indices)

  monkeypatch.setattr(source, '_fetch', counting_fetch)
  step = 10**9
  it = pipeline.create_train_iterator(_cfg(data_dir, prefetch=1), info=info,
                                      global_batch_size=4, seed=3, start_step=step,
                                      process_index=1, process_count=2)
  batch = next(it)
  want = [stored_ids['train'][int(pipeline.train_example_index(4 * step + 2 + r, 11, 3))]
          for r in range(2)]
  assert batch['image_id'].tolist() == want
  # Reads are chunked (READ_CHUNK records per call) and prefetched: a few chunks at most.
  assert 0 < len(fetched) <= 4 * sources.READ_CHUNK


def test_corrupt_record_is_skipped_and_named(data_dir, info, stored_ids, monkeypatch):
  """A record whose image does not decode: its row repeats another one, the message names it."""
  source = info.train_source
  fetch = source._fetch
  bad = int(pipeline.train_example_index(1, 11, 3))

  def corrupt(indices):
    records = fetch(indices)
    for k, index in enumerate(indices.tolist()):
      if index == bad:
        example = tf.train.Example.FromString(records[k])
        example.features.feature['image'].bytes_list.value[:] = [b'not an image']
        records[k] = example.SerializeToString()
    return records

  monkeypatch.setattr(source, '_fetch', corrupt)
  cfg = _cfg(data_dir, max_skip_fraction=0.5)
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=3))
  assert batch['skipped'].tolist() == [False, True, False, False]
  np.testing.assert_array_equal(batch['image'][1], batch['image'][2])
  cfg.max_skip_fraction = 0.01
  with pytest.raises(DataError, match=rf'(?s)cannot read image file.*TFDS data set .*\n  '
                     rf'record {bad} of TFDS tiny_coco train '
                     rf'\(image id {stored_ids["train"][bad]}\): '
                     r'(Unknown image|Input)'):
    next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=4, seed=3))


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_reads_the_split_in_order(data_dir, info, process_count):
  cfg = _cfg(data_dir, channel_order='RGB', mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  ids, valid = [], []
  for p in range(process_count):
    for b in pipeline.create_eval_iterator(cfg, info=info, batch_size=2, process_index=p,
                                           process_count=process_count):
      ids += b['image_id'][b['valid']].tolist()
      valid.append(b['valid'].tolist())
      h, w = b['orig_hw'][0]
      assert b['input_hw'][0].tolist() == [(h | 31) + 1, (w | 31) + 1]
  assert sorted(ids) == sorted(info.val_image_ids)
  if process_count == 1:
    assert ids == info.val_image_ids and valid == [[True, True], [True, True], [True, False]]


def test_not_random_access_says_how_to_prepare(tmp_path):
  root = str(tmp_path / 'tfrecord')
  tiny_tfds.prepare(root, 'tfrecord')
  with pytest.raises(DataError, match=r'(?s)TFDS tiny_coco train: cannot read by random access '
                     r"\(prepared as \['tfrecord'\].*tfds.builder\('tiny_coco', data_dir='.*"
                     r"tfrecord'\).download_and_prepare\(file_format='array_record'\).*"
                     r'tfds build tiny_coco --data_dir=.*tfrecord --file_format=array_record.*'
                     r'tfds convert_format --dataset_version_dir=.*tiny_coco/1.0.0 '
                     r'--out_file_format=array_record'):
    pipeline.get_dataset_info(_cfg(root))


def test_not_prepared_or_unknown(tmp_path):
  with pytest.raises(DataError, match=r'(?s)TFDS tiny_coco train: split not found.*'
                     r'--file_format=array_record'):
    pipeline.get_dataset_info(_cfg(str(tmp_path / 'empty')))
  with pytest.raises(DataError, match=r"config.data.tfds_name='no_such_set': Dataset no_such_set "
                     'not found'):
    pipeline.get_dataset_info(_cfg(str(tmp_path), tfds_name='no_such_set'))


"""Tests of COCO-format reading (data/coco.py) and its errors (data/errors.py)."""

import json
import logging
import os

import numpy as np
import pytest

from centernet_jax.data import coco, errors
from centernet_jax.data.errors import DataError
from tests.helpers.coco_folder import ANNOTATIONS, write_coco


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco'))
  return root, write_coco(root)


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


def test_data_error_is_one_class():
  assert coco.DataError is errors.DataError and issubclass(DataError, ValueError)


# --- Bad input: one clear message naming the file and the record -----------------------------


def _bad(tmp_path, raw):
  return coco.load_coco(write_coco(str(tmp_path), name='bad.json', raw=raw), str(tmp_path))


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
  ann_file = write_coco(str(tmp_path), name='bad.json')
  os.remove(tmp_path / 'gray.jpg')
  with pytest.raises(DataError, match=r'1 of 4 image files not found:\n  .*gray\.jpg \(image id 2'):
    coco.load_coco(ann_file, str(tmp_path))


def test_degenerate_box_is_skipped_with_a_warning(tmp_path, caplog):
  anns = ANNOTATIONS + [(8, 3, 7, [5, 5, 0, 4], 0), (9, 3, 7, [5, 5, 3, -1], 0)]
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(write_coco(str(tmp_path), anns=anns, name='bad.json'),
                          str(tmp_path))
  assert data.num_degenerate == 2
  assert data.images[2].labels.tolist() == [0]
  assert 'bad.json: skipping annotation id 8 (image sub/c.png)' in caplog.text
  assert 'annotation id 9 (image sub/c.png)' in caplog.text


def test_invalid_annotations_are_skipped_within_the_budget(tmp_path, caplog):
  # 2 of 7 annotations are invalid (unknown category, unknown image): 29%.
  anns = ANNOTATIONS + [(8, 3, 99, [5, 5, 4, 4], 0), (9, 77, 7, [5, 5, 3, 3], 0)]
  ann_file = write_coco(str(tmp_path), anns=anns, name='bad.json')
  with caplog.at_level(logging.WARNING):
    data = coco.load_coco(ann_file, str(tmp_path), max_bad_fraction=0.3)
  assert data.num_invalid == 2 and sum(len(r.labels) for r in data.images) == 5
  assert 'skipped 2 of 7 annotations failing validation' in caplog.text
  with pytest.raises(DataError, match=r'(?s)2 of 7 annotations fail validation, more than '
                     r'config.data.max_skip_fraction=0.2; the first:\n  .*category_id 99'):
    coco.load_coco(ann_file, str(tmp_path), max_bad_fraction=0.2)
  with pytest.raises(DataError, match='category_id 99'):  # no budget: the first is an error
    coco.load_coco(ann_file, str(tmp_path))


# --- COCO as TFDS stores it ------------------------------------------------------------------


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


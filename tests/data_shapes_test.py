"""Tests of the built-in shapes data set: the generator and its COCO-json source."""

import filecmp
import json
import os

import numpy as np
import pytest

from centernet_jax.data import shapes


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def test_generate_is_deterministic(tmp_path):
  a = shapes.generate(str(tmp_path / 'a'), num_train=4, num_val=2, image_size=48, seed=5)
  shapes.generate(str(tmp_path / 'b'), num_train=4, num_val=2, image_size=48, seed=5)
  shapes.generate(str(tmp_path / 'c'), num_train=4, num_val=2, image_size=48, seed=6)
  names = _files(tmp_path / 'a')
  assert len(names) == 4 + 2 + 2 + 1 and names == _files(tmp_path / 'b')
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', names, shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'c', names, shallow=False)
  assert 'train/000000.jpg' in mismatch
  assert a['train_images'] == str(tmp_path / 'a' / 'train')


def test_image_i_does_not_depend_on_the_count(tmp_path):
  shapes.generate(str(tmp_path / 'a'), num_train=2, num_val=1, image_size=32, seed=0)
  shapes.generate(str(tmp_path / 'b'), num_train=3, num_val=1, image_size=32, seed=0)
  assert filecmp.cmp(tmp_path / 'a/train/000001.jpg', tmp_path / 'b/train/000001.jpg',
                     shallow=False)


def test_objects_match_the_spec():
  size, counts, classes, sides = 64, [], [], []
  for i in range(60):
    image, objects = shapes.render_image(np.random.default_rng([0, 0, i]), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    counts.append(len(objects))
    for obj in objects:
      x, y, w, h = obj['bbox']
      assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
      classes.append(obj['category'])
      sides.append(max(w, h) / size)
  assert max(counts) <= shapes.MAX_OBJECTS and 0 in counts
  assert set(classes) == set(range(len(shapes.CLASS_NAMES)))
  assert shapes.SIZE_RANGE[0] - 0.03 <= min(sides) and max(sides) <= shapes.SIZE_RANGE[1] + 0.03


def test_ensure_generates_once_and_refuses_other_parameters(tmp_path):
  out = str(tmp_path / 'shapes')
  params = dict(num_train=2, num_val=1, image_size=32, seed=1)
  paths = shapes.ensure(out, **params)
  assert os.path.isfile(paths['val_annotations'])
  stamp = os.path.getmtime(paths['train_annotations'])
  shapes.ensure(out, **params)
  assert os.path.getmtime(paths['train_annotations']) == stamp
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]
  with pytest.raises(ValueError, match='made with .* delete it or set config.data.shapes_dir'):
    shapes.ensure(out, **dict(params, seed=2))


def test_command_line(tmp_path, capsys):
  shapes.main(['--out', str(tmp_path), '--num_train', '2', '--num_val', '1',
               '--image_size', '32'])
  assert 'train_annotations' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / 'train')) == ['000000.jpg', '000001.jpg']


def test_shapes_source_reads_as_coco(tmp_path):
  from centernet_jax.data import pipeline, sources
  from centernet_jax.data.config import data_config

  cfg = data_config()
  cfg.update(shapes_dir=str(tmp_path / 's'), shapes_num_train=3, shapes_num_val=2,
             shapes_image_size=32, input_size=32)
  info = pipeline.get_dataset_info(cfg)
  assert info.class_names == list(shapes.CLASS_NAMES) and info.category_ids == [1, 2, 3, 4]
  assert (info.num_train, info.num_val, info.source) == (3, 2, 'coco_json')
  # A COCO-json source over the generated folder, nothing more.
  paths = shapes.paths(str(tmp_path / 's'))
  assert isinstance(info.train_source, sources.CocoJsonSource)
  assert info.train_data.ann_file == paths['train_annotations']
  assert info.val_gt == paths['val_annotations']
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
  assert batch['image'].shape == (2, 32, 32, 3)


def test_default_folder_names_the_parameters():
  from centernet_jax.data import pipeline
  from centernet_jax.data.config import data_config

  cfg = data_config()
  cfg.update(shapes_num_train=5, shapes_num_val=3, shapes_image_size=64, shapes_seed=2)
  path = pipeline.default_shapes_dir(cfg)
  assert path.endswith(os.path.join('.cache', 'centernet_jax',
                                    f'shapes_v{shapes.VERSION}_64_5_3_2'))


# --- The second set (shapes_alt): other classes, grayscale, crowds, empty images -------------


def test_alt_set_matches_its_spec():
  from centernet_jax.data import shapes_alt

  size, counts, classes, sides, crowds = 96, [], [], [], 0
  for i in range(80):
    image, objects = shapes_alt.render_image(np.random.default_rng([3, 0, i]), size)
    assert image.shape == (size, size) and image.dtype == np.uint8  # grayscale
    counts.append(sum(not o['iscrowd'] for o in objects))
    for obj in objects:
      x, y, w, h = obj['bbox']
      assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 0 and h > 0
      assert 0 < obj['area'] <= (w + 2) * (h + 2)  # coverage, anti-aliased edges included
      classes.append(obj['category'])
      if obj['iscrowd']:
        crowds += 1
      else:
        sides.append(max(w, h) / size)
  assert max(counts) <= shapes_alt.MAX_OBJECTS and 0 in counts
  assert set(classes) == set(range(len(shapes_alt.CLASS_NAMES))) and crowds > 0
  lo, hi = shapes_alt.SIZE_RANGE
  assert lo - 0.03 <= min(sides) and max(sides) <= hi + 0.05


def test_alt_set_ring_has_a_hole_and_crowd_box_covers_its_pixels():
  from centernet_jax.data import shapes_alt

  ring = shapes_alt.CLASS_NAMES.index('ring')
  outer, hole = shapes_alt._shape(np.random.default_rng(0), ring, 40.0, np.array([32.0, 32.0]),
                                  64, [])
  alpha = shapes_alt._coverage(outer, hole, 64)
  assert alpha[32, 32] == 0 and alpha.max() == 1  # the centre is background
  box = shapes_alt._box(alpha)
  assert box[2] - box[0] >= 20 and box[3] - box[1] >= 20


def test_alt_set_reads_through_config_paths(tmp_path):
  from centernet_jax.data import pipeline, shapes_alt
  from centernet_jax.data.config import data_config

  out = str(tmp_path / 'alt')
  paths = shapes_alt.generate(out, num_train=12, num_val=3, image_size=48, seed=1)
  again = shapes_alt.generate(str(tmp_path / 'again'), num_train=12, num_val=3, image_size=48,
                              seed=1)
  assert filecmp.cmp(paths['train_annotations'], again['train_annotations'], shallow=False)
  cfg = data_config()
  cfg.update(source='coco_json', input_size=32, **paths)
  info = pipeline.get_dataset_info(cfg)
  assert info.class_names == list(shapes_alt.CLASS_NAMES)
  assert (info.num_train, info.num_val) == (12, 3)
  batch = next(pipeline.create_train_iterator(cfg, info=info, global_batch_size=2, seed=0))
  assert batch['image'].shape == (2, 32, 32, 3)  # grayscale files come out as RGB


def test_alt_set_command_line(tmp_path, capsys):
  from centernet_jax.data import shapes_alt

  shapes_alt.main(['--out', str(tmp_path), '--num_train', '2', '--num_val', '1',
                   '--image_size', '40', '--seed', '3'])
  assert json.loads(capsys.readouterr().out) == shapes.paths(str(tmp_path))
  with open(tmp_path / 'meta.json') as f:
    assert json.load(f) == {'version': shapes_alt.VERSION, 'num_train': 2, 'num_val': 1,
                            'image_size': 40, 'seed': 3}

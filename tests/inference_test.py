"""Tests for centernet_jax.inference: full-size restore, pre-processing, mapping back."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from centernet_jax import boxes, checkpoint, inference, tasks
from centernet_jax.data.config import data_config
from centernet_jax.data.errors import DataError
from centernet_jax.models import build_model
from tests.conftest import load_config


class _FakeCheckpointer:
  """Stands in for checkpoint.Checkpointer: records the restore target, reads nothing."""

  instances: list = []

  def __init__(self, directory, read_only=False):
    self.directory, self.read_only, self.closed = directory, read_only, False
    self.target = self.expected_meta = None
    _FakeCheckpointer.instances.append(self)

  def latest_step(self):
    return 7

  def restore_meta(self, step):
    del step
    return {'class_names': [f'c{k}' for k in range(80)], 'category_ids': list(range(1, 81))}

  def restore_variables(self, step, target, meta=None):
    self.target, self.expected_meta = target, meta
    return step, target

  def close(self):
    self.closed = True


# Bug 1: evaluate, predict and export built the restore target from a 64 px input, which the
# hourglass models reject, so no full-size Hourglass-104 or CornerNet checkpoint could be read.
# Shapes only (eval_shape): the parameter counts are the official models' (tests/data/official_*).
@pytest.mark.parametrize('name,num_params', [('ctdet_hg104_coco', 191_284_008),
                                             ('cornernet_hg104_coco', 201_035_212)])
def test_restore_builds_the_target_at_full_size(name, num_params, monkeypatch):
  config = load_config(name)
  monkeypatch.setattr(checkpoint, 'Checkpointer', _FakeCheckpointer)
  _FakeCheckpointer.instances = []
  restored = inference.restore(config, '/no/such/workdir')
  (ckpt,) = _FakeCheckpointer.instances
  assert ckpt.read_only and ckpt.closed
  assert restored.step == 7
  assert restored.config.model.num_classes == 80
  assert dict(restored.config.model.heads) == dict(tasks.get(config.task).heads(80))
  assert ckpt.expected_meta == {'model': restored.config.model.to_dict()}
  leaves = jax.tree.leaves(ckpt.target['params'])
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
  assert sum(x.size for x in leaves) == num_params
  assert jax.tree.leaves(ckpt.target['batch_stats'])


def test_small_inputs_are_rejected_by_the_hourglass():
  """Why the target is traced at input_hw(config): 64 px does not divide the hourglass."""
  config = tasks.resolve_config(load_config('ctdet_hg104_coco'), 80)
  assert inference.input_hw(config) == (512, 512)
  with pytest.raises(ValueError, match='Hourglass input height 64'):
    inference.abstract_variables(build_model(config.model), (64, 64))


@pytest.mark.parametrize('channel_order', ['BGR', 'RGB'])
def test_normalize_numpy_jnp_and_the_tf_pipeline_agree(channel_order):
  from centernet_jax.data import transforms

  image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  d = data_config()
  kw = dict(mean=d.mean, std=d.std, channel_order=channel_order)
  got = inference.normalize(image, **kw)
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  on_device = jax.jit(lambda x: inference.normalize(x, **kw))(image)
  # XLA may fold the divisions into multiplications: equal to float32 rounding.
  np.testing.assert_allclose(np.asarray(on_device), got, rtol=1e-6, atol=1e-6)
  tf_ref = transforms.normalize(
      transforms.to_channel_order(image.astype(np.float32) / 255.0, channel_order), d.mean, d.std)
  np.testing.assert_array_equal(np.asarray(tf_ref), got)
  oracle = ((image[..., ::-1] if channel_order == 'BGR' else image) / 255.0 - d.mean) / d.std
  np.testing.assert_allclose(got, oracle, atol=1e-6)
  with pytest.raises(ValueError, match="channel_order must be 'BGR' or 'RGB', got 'BRG'"):
    inference.normalize(image, mean=d.mean, std=d.std, channel_order='BRG')


@pytest.mark.parametrize('hw,mode', [((45, 70), 'keep_res'), ((64, 64), 'keep_res'),
                                     ((45, 70), 'fixed_res')])
def test_preprocess_matches_the_eval_pipeline(hw, mode):
  """numpy pre-processing (predict, serving) = the tf one (evaluation): same canvas, affine and
  pixels (keep_res: exactly; fixed_res: the same warp, to rounding)."""
  from centernet_jax.data import pipeline

  d = data_config()
  d.eval_mode, d.eval_size = mode, 64
  image = np.random.default_rng(1).integers(0, 256, hw + (3,), dtype=np.uint8)
  got = inference.preprocess(image, d)
  want = pipeline.load_image_for_predict(image, d)
  for key in ('center', 'scale', 'input_hw', 'orig_hw'):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got[key].dtype == want[key].dtype, key
  assert got['image'].shape == want['image'].shape and got['image'].dtype == np.float32
  if mode == 'keep_res':
    np.testing.assert_array_equal(got['image'], want['image'])
  else:  # one uint8 level at most
    np.testing.assert_allclose(got['image'], want['image'], atol=1.01 / 255 / min(d.std))


def test_read_image_decodes_files_as_the_pipeline(tmp_path):
  from PIL import Image

  from centernet_jax.data import pipeline

  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
  path = str(tmp_path / 'a.jpg')
  Image.fromarray(pixels).save(path, quality=80)
  d = data_config()
  got = inference.preprocess(inference.read_image(path), d)
  want = pipeline.load_image_for_predict(path, d)
  np.testing.assert_array_equal(got['image'], want['image'])  # the same JPEG decoder
  gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
  np.testing.assert_array_equal(inference.read_image(gray), np.repeat(gray[..., None], 3, -1))
  rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
  np.testing.assert_array_equal(inference.read_image(rgba), rgba[..., :3])


@pytest.mark.parametrize('image,match', [
    ('/no/such/image.jpg', 'image file not found: /no/such/image.jpg'),
    (np.zeros((4, 4, 3), np.float32), r'image array must be uint8 .* got float32 \(4, 4, 3\)'),
    (np.zeros((4, 4, 2), np.uint8), r'got uint8 \(4, 4, 2\)'),
])
def test_read_image_errors(image, match):
  with pytest.raises(DataError, match=match):
    inference.read_image(image)


def test_read_image_undecodable_file(tmp_path):
  path = tmp_path / 'bad.jpg'
  path.write_bytes(b'not an image')
  with pytest.raises(DataError, match=f'cannot decode image file {path}'):
    inference.read_image(str(path))


def test_to_original_maps_every_point_key():
  """Oracle: the official transform_preds with an output map of input / 4."""
  rng = np.random.default_rng(3)
  batch = {'center': np.array([[40, 30], [22.5, 50]], np.float32),
           'scale': np.array([[96, 64], [100, 100]], np.float32),
           'input_hw': np.array([[64, 96], [128, 128]], np.int32),
           'orig_hw': np.array([[60, 80], [100, 45]], np.int32)}
  dets = {'boxes': rng.uniform(-5, 40, (2, 3, 4)).astype(np.float32),
          'keypoints': rng.uniform(-5, 40, (2, 3, 6)).astype(np.float32),
          'scores': rng.uniform(0, 1, (2, 3)).astype(np.float32)}
  got = inference.to_original(dets, batch, (4.0, 4.0), ('boxes', 'keypoints'))
  np.testing.assert_array_equal(got['scores'], dets['scores'])  # passes through
  for i in range(2):
    in_h, in_w = batch['input_hw'][i]
    out_size = (in_w // 4, in_h // 4)
    want = boxes.transform_preds(dets['boxes'][i], batch['center'][i], batch['scale'][i],
                                 out_size)
    np.testing.assert_allclose(got['boxes'][i], want, atol=1e-3)
    pairs = dets['keypoints'][i].reshape(3, 3, 2)
    want_kp = np.stack([boxes.transform_preds(np.concatenate([p, p], -1), batch['center'][i],
                                              batch['scale'][i], out_size)[..., :2]
                        for p in pairs])
    np.testing.assert_allclose(got['keypoints'][i], want_kp.reshape(3, 6), atol=1e-3)
  clipped = inference.to_original(dets, batch, (4.0, 4.0), ('boxes',), clip=True)['boxes']
  for i, (h, w) in enumerate(batch['orig_hw']):
    assert clipped[i].min() >= 0
    assert clipped[i][:, 0::2].max() <= w and clipped[i][:, 1::2].max() <= h
    np.testing.assert_allclose(clipped[i], np.clip(got['boxes'][i], 0, [w, h, w, h]))


def test_predictor_stride_comes_from_the_model(smoke_config):
  """Canvas pixels per output-map pixel, from the traced output size (a 48 px ResNet input
  rounds its 1.5-pixel stride-32 map up to 2, so the map is 16 rows, not 12)."""
  config = tasks.resolve_config(smoke_config, 4)
  predictor = inference.Predictor(config, build_model(config.model))
  np.testing.assert_array_equal(predictor.stride((96, 64)), [4.0, 4.0])
  np.testing.assert_array_equal(predictor.stride((48, 96)), [4.0, 3.0])

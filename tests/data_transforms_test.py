"""Tests of the tf pre-processing ops (data/transforms.py) against numpy oracles and boxes.py."""

import numpy as np
import pytest

from centernet_jax import boxes as boxes_lib
from centernet_jax.data import transforms
from tests.helpers.coco_folder import np_warp

tf = transforms.tf


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
  np.testing.assert_allclose(out, np_warp(img, trans.numpy(), (29, 31)), atol=1e-3)


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
  want = np_warp(img.astype(np.float64), trans.numpy(), (out, out))
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


def test_pad_objects_first_policy_keeps_annotation_order():
  """Official rule (docs/parity.md 4.3): the first max_objs objects, hidden ones included."""
  boxes = tf.constant([[-20, -20, -5, -5], [1, 1, 5, 5], [70, 0, 80, 5]], tf.float32)
  b, labels, m = transforms.pad_objects(boxes, tf.constant([0, 1, 2]), 2, (64, 64), 'first')
  np.testing.assert_allclose(b.numpy(), [[-20, -20, -5, -5], [1, 1, 5, 5]])
  assert labels.numpy().tolist() == [0, 1] and m.numpy().tolist() == [1, 1]
  b, labels, m = transforms.pad_objects(boxes, tf.constant([0, 1, 2]), 4, (64, 64), 'first')
  assert labels.numpy().tolist() == [0, 1, 2, 0] and m.numpy().tolist() == [1, 1, 1, 0]
  b, _, m = transforms.pad_objects(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 3, (64, 64),
                                   'first')
  assert b.shape == (3, 4) and m.numpy().tolist() == [0, 0, 0]
  with pytest.raises(ValueError, match='config.data.max_objs_policy must be one of'):
    transforms.pad_objects(boxes, tf.constant([0, 1, 2]), 2, (64, 64), 'last')


# --- Evaluation letterbox: the tf twin of boxes.py -------------------------------------------


@pytest.mark.parametrize('hw', [(40, 48), (44, 36), (31, 31), (32, 32), (2, 97), (480, 640),
                                (427, 640), (511, 383)])
@pytest.mark.parametrize('mode, pad, size', [('keep_res', 31, 512), ('keep_res', 127, 512),
                                             ('keep_res', 0, 512), ('fixed_res', 31, 512),
                                             ('fixed_res', 31, 96)])
@pytest.mark.parametrize('test_scale', [1.0, 0.5, 0.75, 1.25, 1.5])
def test_eval_geometry_equals_boxes_module(hw, mode, pad, size, test_scale):
  """canvas, center and scale of eval_transform are boxes.py's for the (resized) image."""
  image = tf.zeros((*hw, 3), tf.uint8)
  out = transforms.eval_transform(image, mode=mode, pad=pad, size=size, test_scale=test_scale)
  resized = (int(np.float32(hw[0]) * np.float32(test_scale)),
             int(np.float32(hw[1]) * np.float32(test_scale)))
  canvas = boxes_lib.canvas_hw(resized, mode, pad=pad, size=size)
  center, scale = boxes_lib.letterbox_center_scale(resized, canvas, mode)
  assert out['input_hw'].numpy().tolist() == list(canvas)
  assert out['orig_hw'].numpy().tolist() == list(hw)
  assert out['image'].shape[:2] == canvas
  np.testing.assert_allclose(out['center'].numpy(), center / test_scale, rtol=1e-6)
  np.testing.assert_allclose(out['scale'].numpy(), scale / test_scale, rtol=1e-6)


@pytest.mark.parametrize('hw', [(40, 48), (44, 36), (17, 90), (64, 64)])
@pytest.mark.parametrize('mode, size', [('keep_res', 0), ('fixed_res', 64), ('fixed_res', 48)])
def test_eval_image_equals_boxes_letterbox(hw, mode, size):
  """The canvas pixels of eval_transform are boxes.letterbox's (up to rounding ties)."""
  img = np.random.default_rng(5).integers(0, 256, (*hw, 3), dtype=np.uint8)
  out = transforms.eval_transform(tf.constant(img), mode=mode, pad=31, size=size,
                                  channel_order='RGB')
  canvas = boxes_lib.canvas_hw(hw, mode, pad=31, size=size)
  want, inverse = boxes_lib.letterbox(img, canvas, mode)
  got = out['image'].numpy() * 255
  assert got.shape == want.shape
  diff = np.abs(got - want)
  if mode == 'keep_res':  # an exact pad
    np.testing.assert_allclose(got, want, atol=1e-4)
  else:  # the same warp; rounding may differ only where the warped value is a .5 tie
    warped = boxes_lib.warp_affine(img, boxes_lib.letterbox_affine(hw, canvas, mode), canvas)
    tie = np.abs(warped - np.floor(warped) - 0.5) < 1e-3
    assert diff.max() <= 1.0 + 1e-4 and not (diff > 1e-4)[~tie].any()
  # And the inverse affine of both maps the canvas back onto the same image pixels.
  trans = boxes_lib.get_affine_transform(out['center'].numpy(), out['scale'].numpy(),
                                         (canvas[1], canvas[0]), inv=True)
  np.testing.assert_allclose(trans, inverse, atol=1e-4)


# --- 'fit_width' (official ddd test) and non-square canvases ---------------------------------


@pytest.mark.parametrize('hw', [(40, 48), (375, 1242), (17, 90), (128, 384)])
@pytest.mark.parametrize('mode, size', [('fit_width', (32, 96)), ('fit_width', (384, 1280)),
                                        ('fit_width', 64), ('fixed_res', (64, 96)),
                                        ('fixed_res', (96, 64))])
@pytest.mark.parametrize('test_scale', [1.0, 0.5])
def test_canvas_geometry_equals_boxes_module(hw, mode, size, test_scale):
  """fit_width / non-square fixed_res: eval_transform's canvas, center, scale are boxes.py's."""
  out = transforms.eval_transform(tf.zeros((*hw, 3), tf.uint8), mode=mode, size=size,
                                  test_scale=test_scale)
  resized = (int(np.float32(hw[0]) * np.float32(test_scale)),
             int(np.float32(hw[1]) * np.float32(test_scale)))
  canvas = boxes_lib.canvas_hw(resized, mode, size=size)
  assert canvas == ((size, size) if np.ndim(size) == 0 else tuple(size))
  center, scale = boxes_lib.letterbox_center_scale(resized, canvas, mode)
  assert out['input_hw'].numpy().tolist() == list(canvas)
  np.testing.assert_allclose(out['center'].numpy(), center / test_scale, rtol=1e-6)
  np.testing.assert_allclose(out['scale'].numpy(), scale / test_scale, rtol=1e-6)
  trans = boxes_lib.get_affine_transform(center, scale, (canvas[1], canvas[0]))
  if mode == 'fit_width':  # official ddd: c = image centre, s = (w, h): scaled to the width
    np.testing.assert_allclose(center, [resized[1] / 2, resized[0] / 2])
    np.testing.assert_allclose(trans[:, :2], np.eye(2) * canvas[1] / resized[1], rtol=1e-6,
                               atol=1e-6)
  else:  # the whole image fits the canvas
    corners = boxes_lib.affine_transform(np.array([[0, 0], [resized[1], resized[0]]]), trans)
    assert corners.min() >= -1e-3 and np.all(corners[1] <= [canvas[1] + 1e-3, canvas[0] + 1e-3])
  np.testing.assert_allclose(boxes_lib.affine_transform(center, trans),
                             [canvas[1] / 2, canvas[0] / 2], atol=1e-4)


@pytest.mark.parametrize('hw', [(40, 48), (17, 90), (96, 288)])
@pytest.mark.parametrize('mode, size', [('fit_width', (32, 96)), ('fit_width', (64, 128)),
                                        ('fit_width', (96, 288)), ('fixed_res', (32, 64))])
def test_canvas_image_equals_boxes_letterbox(hw, mode, size):
  """fit_width / non-square fixed_res pixels are boxes.letterbox's (up to rounding ties)."""
  img = np.random.default_rng(6).integers(0, 256, (*hw, 3), dtype=np.uint8)
  out = transforms.eval_transform(tf.constant(img), mode=mode, size=size, channel_order='RGB')
  canvas = boxes_lib.canvas_hw(hw, mode, size=size)
  want, inverse = boxes_lib.letterbox(img, canvas, mode)
  got = out['image'].numpy() * 255
  assert got.shape == want.shape
  warped = boxes_lib.warp_affine(img, boxes_lib.letterbox_affine(hw, canvas, mode), canvas)
  tie = np.abs(warped - np.floor(warped) - 0.5) < 1e-3
  diff = np.abs(got - want)
  assert diff.max() <= 1.0 + 1e-4 and not (diff > 1e-4)[~tie].any()
  trans = boxes_lib.get_affine_transform(out['center'].numpy(), out['scale'].numpy(),
                                         (canvas[1], canvas[0]), inv=True)
  np.testing.assert_allclose(trans, inverse, atol=1e-4)

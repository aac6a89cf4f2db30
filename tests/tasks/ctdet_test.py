"""Tests for tasks.ctdet: targets against a per-object numpy oracle of the official `ctdet.py` /
`utils/image.py` (float64, one object at a time), the loss against the `models/losses.py`
oracles of tests/losses_test.py, decoding against a sort-everything oracle, the flip merge, and
the config-bound builders."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import config_lib, nms, tasks
from centernet_jax.tasks import ctdet
from tests.decode_test import _peaks_oracle
from tests.gaussian_test import _radius_oracle
from tests.losses_test import _focal_oracle, _random_heatmap, _reg_l1_oracle


def _draw_oracle(heatmap, center, radius):
  """Official draw_umich_gaussian: window slicing and element-wise max."""
  diameter = 2 * radius + 1
  sigma = diameter / 6
  y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
  gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
  cx, cy = int(center[0]), int(center[1])
  height, width = heatmap.shape
  left, right = min(cx, radius), min(width - cx, radius + 1)
  top, bottom = min(cy, radius), min(height - cy, radius + 1)
  window = heatmap[cy - top:cy + bottom, cx - left:cx + right]
  g = gaussian[radius - top:radius + bottom, radius - left:radius + right]
  if min(g.shape) > 0 and min(window.shape) > 0:
    np.maximum(window, g, out=window)


def _ctdet_oracle(boxes, labels, mask, num_classes, out_h, out_w):
  b, m = labels.shape
  hm = np.zeros((b, num_classes, out_h, out_w), np.float32)
  ind = np.zeros((b, m), np.int64)
  wh = np.zeros((b, m, 2), np.float32)
  reg = np.zeros((b, m, 2), np.float32)
  reg_mask = np.zeros((b, m), np.float32)
  for i in range(b):
    for k in range(m):
      if not mask[i, k]:
        continue
      bbox = boxes[i, k].astype(np.float32).copy()
      bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
      bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
      h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
      if h > 0 and w > 0:
        radius = max(0, int(_radius_oracle(math.ceil(h), math.ceil(w))))
        ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
        ct_int = ct.astype(np.int32)
        _draw_oracle(hm[i, labels[i, k]], ct_int, radius)
        wh[i, k] = w, h
        ind[i, k] = ct_int[1] * out_w + ct_int[0]
        reg[i, k] = ct - ct_int
        reg_mask[i, k] = 1
  return {'hm': hm.transpose(0, 2, 3, 1), 'ind': ind, 'wh': wh, 'reg': reg,
          'reg_mask': reg_mask}


def _random_objects(rng, b, m, c, out_h, out_w):
  """Boxes in output pixels, some partly or fully outside, some degenerate."""
  xy = rng.uniform(-4, [out_w + 2, out_h + 2], (b, m, 2))
  size = rng.uniform(0.3, 0.6 * max(out_h, out_w), (b, m, 2))
  boxes = np.concatenate([xy, xy + size], axis=-1).astype(np.float32)
  boxes[:, 0] = [0, 0, out_w - 1, out_h - 1]  # exactly the clipped full map
  if m > 2:
    boxes[:, 1, 2] = boxes[:, 1, 0]  # zero width
    boxes[:, 2] = [out_w + 1, 2, out_w + 5, 6]  # fully right of the map -> w = 0
  labels = rng.integers(0, c, (b, m)).astype(np.int32)
  mask = rng.uniform(size=(b, m)) < 0.8
  mask[:, 0] = True
  return boxes, labels, mask


def _run(boxes, labels, mask, c, out_h, out_w, **kw):
  fn = jax.jit(functools.partial(ctdet.ctdet_targets, num_classes=c, output_hw=(out_h, out_w),
                                 **kw))
  return {k: np.asarray(v) for k, v in fn(boxes, labels, mask).items()}


def _assert_targets_equal(got, want):
  np.testing.assert_allclose(got['hm'], want['hm'], atol=2e-6, rtol=0)
  np.testing.assert_array_equal(got['ind'], want['ind'])
  np.testing.assert_allclose(got['wh'], want['wh'], atol=1e-6)
  np.testing.assert_allclose(got['reg'], want['reg'], atol=1e-6)
  np.testing.assert_array_equal(got['reg_mask'], want['reg_mask'])
  # Positives (exact 1.0) are the same pixels: the focal loss depends on it.
  np.testing.assert_array_equal(got['hm'] == 1, want['hm'] == 1)


@pytest.mark.parametrize('seed, b, m, c, out_h, out_w', [
    (0, 1, 1, 1, 16, 16),
    (1, 2, 5, 3, 16, 24),
    (2, 3, 8, 2, 32, 32),
    (3, 2, 8, 1, 24, 16),  # one class: lots of same-class overlaps
    (4, 1, 6, 4, 17, 31),  # odd sizes
])
def test_ctdet_targets_match_oracle(seed, b, m, c, out_h, out_w):
  rng = np.random.default_rng(seed)
  boxes, labels, mask = _random_objects(rng, b, m, c, out_h, out_w)
  got = _run(boxes, labels, mask, c, out_h, out_w)
  want = _ctdet_oracle(boxes, labels, mask, c, out_h, out_w)
  assert got['hm'].shape == (b, out_h, out_w, c) and got['hm'].dtype == np.float32
  assert got['ind'].dtype == np.int32
  _assert_targets_equal(got, want)


@pytest.mark.parametrize('chunk', [1, 3, 8, 100])
def test_chunked_drawing_is_identical(chunk):
  rng = np.random.default_rng(10 + chunk)
  boxes, labels, mask = _random_objects(rng, 2, 8, 2, 16, 16)
  got = _run(boxes, labels, mask, 2, 16, 16, objects_per_chunk=chunk)
  _assert_targets_equal(got, _ctdet_oracle(boxes, labels, mask, 2, 16, 16))


@pytest.mark.parametrize('seed', range(3))
def test_overlapping_same_class_max_merge_and_duplicate_centres(seed):
  rng = np.random.default_rng(100 + seed)
  base = rng.uniform(4, 10, 2)
  size = rng.uniform(3, 8, 2)
  boxes = np.array([[
      [*base, *(base + size)],
      [*(base + 1.3), *(base + 1.3 + size * 1.5)],  # overlaps the first
      [*base, *(base + size)],  # duplicate of the first: same centre
      [*(base - 0.2), *(base + size + 0.2)],  # different box, same ct_int
  ]], np.float32)
  labels = np.zeros((1, 4), np.int32)
  mask = np.ones((1, 4), bool)
  got = _run(boxes, labels, mask, 1, 24, 24)
  want = _ctdet_oracle(boxes, labels, mask, 1, 24, 24)
  _assert_targets_equal(got, want)
  # Max (not sum): never above 1, and the shared centre is one positive.
  assert got['hm'].max() == 1.0
  assert got['ind'][0, 0] == got['ind'][0, 2] == got['ind'][0, 3]
  assert (got['hm'] == 1).sum() == len(np.unique(got['ind'][0]))


def test_empty_image_and_padding():
  boxes = np.full((2, 4, 4), np.nan, np.float32)  # garbage in padded rows
  boxes[1, 0] = [2, 3, 9, 7]
  labels = np.zeros((2, 4), np.int32)
  mask = np.zeros((2, 4), np.float32)
  mask[1, 0] = 1.0
  got = _run(boxes, labels, mask, 2, 16, 16)
  assert not np.isnan(got['wh']).any() and not np.isnan(got['reg']).any()
  assert got['hm'][0].max() == 0 and got['reg_mask'][0].sum() == 0
  np.testing.assert_array_equal(got['ind'][0], 0)
  np.testing.assert_array_equal(got['reg_mask'][1], [1, 0, 0, 0])
  np.testing.assert_allclose(got['wh'][1, 0], [7, 4])
  np.testing.assert_allclose(got['reg'][1, 0], [0.5, 0.0])
  assert got['ind'][1, 0] == 5 * 16 + 5
  assert got['hm'][1, 5, 5, 0] == 1.0 and got['hm'][1, ..., 1].max() == 0


@pytest.mark.parametrize('box, hw, expect_valid, expect_ind, expect_wh', [
    ([0, 0, 15, 15], (16, 16), 1, 7 * 16 + 7, [15, 15]),  # whole map, clipped corners
    ([-5, -5, 3, 2], (16, 16), 1, 1 * 16 + 1, [3, 2]),  # top-left partly outside
    ([10, 12, 40, 40], (16, 16), 1, 13 * 16 + 12, [5, 3]),  # bottom-right outside
    ([15, 3, 19, 8], (16, 16), 0, 0, [0, 0]),  # clipped to zero width on the border
    ([4, 4, 4, 9], (16, 16), 0, 0, [0, 0]),  # zero width
    ([4, 4, 9, 4], (16, 16), 0, 0, [0, 0]),  # zero height
    ([-9, 3, -1, 8], (16, 16), 0, 0, [0, 0]),  # fully left of the map
])
def test_border_cases(box, hw, expect_valid, expect_ind, expect_wh):
  boxes = np.array([[box]], np.float32)
  got = _run(boxes, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), 1, *hw)
  assert got['reg_mask'][0, 0] == expect_valid
  assert got['ind'][0, 0] == expect_ind
  np.testing.assert_allclose(got['wh'][0, 0], expect_wh)
  assert got['hm'].max() == float(expect_valid)
  want = _ctdet_oracle(boxes, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), 1, *hw)
  _assert_targets_equal(got, want)


def _random_batch(rng, b, h, w, c, m, num_stacks, with_reg=True):
  outputs = []
  for _ in range(num_stacks):
    out = {'hm': rng.normal(0, 2, (b, h, w, c)).astype(np.float32),
           'wh': rng.uniform(0, 10, (b, h, w, 2)).astype(np.float32)}
    if with_reg:
      out['reg'] = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32)
    outputs.append(out)
  tgt = {'hm': _random_heatmap(rng, (b, h, w, c), 3),
         'ind': rng.integers(0, h * w, (b, m)).astype(np.int32),
         'wh': rng.uniform(0, 10, (b, m, 2)).astype(np.float32),
         'reg': rng.uniform(0, 1, (b, m, 2)).astype(np.float32),
         'reg_mask': (rng.uniform(size=(b, m)) < 0.7).astype(np.float32)}
  return outputs, tgt


@pytest.mark.parametrize('seed, num_stacks, with_reg, weights', [
    (0, 1, True, (1.0, 0.1, 1.0)),
    (1, 2, True, (1.0, 0.1, 1.0)),
    (2, 2, True, (0.5, 0.2, 2.0)),
    (3, 1, False, (1.0, 0.1, 1.0)),  # no reg head: off_loss 0
])
def test_ctdet_loss_matches_oracle(seed, num_stacks, with_reg, weights):
  rng = np.random.default_rng(seed)
  outputs, tgt = _random_batch(rng, 2, 8, 8, 3, 6, num_stacks, with_reg)
  hm_w, wh_w, off_w = weights
  fn = jax.jit(functools.partial(ctdet.ctdet_loss, hm_weight=hm_w, wh_weight=wh_w,
                                 off_weight=off_w))
  total, parts = fn(outputs, tgt)
  hm = sum(_focal_oracle(o['hm'], tgt['hm']) for o in outputs) / num_stacks
  wh = sum(_reg_l1_oracle(o['wh'], tgt['ind'], tgt['reg_mask'], tgt['wh'])
           for o in outputs) / num_stacks
  off = sum(_reg_l1_oracle(o['reg'], tgt['ind'], tgt['reg_mask'], tgt['reg'])
            for o in outputs) / num_stacks if with_reg else 0.0
  assert set(parts) == {'hm_loss', 'wh_loss', 'off_loss', 'loss'}
  np.testing.assert_allclose(float(parts['hm_loss']), hm, rtol=2e-5)
  np.testing.assert_allclose(float(parts['wh_loss']), wh, rtol=2e-5)
  np.testing.assert_allclose(float(parts['off_loss']), off, rtol=2e-5, atol=1e-7)
  want = hm_w * hm + wh_w * wh + off_w * off
  np.testing.assert_allclose(float(total), want, rtol=2e-5)
  assert float(parts['loss']) == float(total)


def test_ctdet_loss_empty_batch_finite_grads():
  rng = np.random.default_rng(11)
  outputs, tgt = _random_batch(rng, 2, 8, 8, 2, 4, 1)
  tgt['hm'] = np.zeros_like(tgt['hm'])
  tgt['reg_mask'] = np.zeros_like(tgt['reg_mask'])
  loss_fn = lambda outs: ctdet.ctdet_loss(outs, tgt)[0]
  total, grads = jax.value_and_grad(loss_fn)(outputs)
  assert np.isfinite(float(total))
  for g in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_allclose(float(total), _focal_oracle(outputs[0]['hm'], tgt['hm']), rtol=2e-5)


def _decode_oracle(hm_prob, wh, reg, k):
  """Peaks, then sort all (score, class, y, x) entries, then boxes."""
  heat = _peaks_oracle(hm_prob)
  b, h, w, c = heat.shape
  boxes = np.zeros((b, k, 4))
  scores = np.zeros((b, k))
  classes = np.zeros((b, k), np.int64)
  for i in range(b):
    entries = [(heat[i, y, x, cl], cl, y, x) for y in range(h) for x in range(w)
               for cl in range(c)]
    entries.sort(key=lambda e: -e[0])
    for j, (s, cl, y, x) in enumerate(entries[:k]):
      ox, oy = (reg[i, y, x] if reg is not None else (0.5, 0.5))
      cx, cy = x + ox, y + oy
      bw, bh = wh[i, y, x]
      boxes[i, j] = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
      scores[i, j] = s
      classes[i, j] = cl
  return boxes, scores, classes


@pytest.mark.parametrize('seed, shape, k, with_reg', [
    (0, (1, 8, 8, 2), 10, True),
    (1, (2, 16, 16, 3), 100, True),
    (2, (2, 12, 9, 1), 20, False),
])
def test_ctdet_decode_matches_oracle(seed, shape, k, with_reg):
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  hm = rng.permutation(b * h * w * c).reshape(shape).astype(np.float32)
  hm = (hm + 1) / hm.size  # distinct scores so the order is defined
  wh = rng.uniform(0, 8, (b, h, w, 2)).astype(np.float32)
  reg = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32) if with_reg else None
  fn = jax.jit(functools.partial(ctdet.ctdet_decode, K=k))
  got = fn(hm, wh, reg)
  boxes, scores, classes = _decode_oracle(hm, wh, reg, k)
  assert got['boxes'].shape == (b, k, 4) and got['classes'].dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(got['boxes']), boxes, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got['scores']), scores, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(got['classes']), classes)


def test_ctdet_decode_k_larger_than_num_peaks():
  hm = np.zeros((1, 8, 8, 2), np.float32)
  hm[0, 2, 3, 1] = 0.9
  hm[0, 6, 6, 0] = 0.4
  wh = np.full((1, 8, 8, 2), 2.0, np.float32)
  got = ctdet.ctdet_decode(hm, wh, None, K=20)
  scores = np.asarray(got['scores'][0])
  np.testing.assert_allclose(scores[:2], [0.9, 0.4])
  np.testing.assert_array_equal(scores[2:], 0.0)
  np.testing.assert_allclose(np.asarray(got['boxes'][0, 0]), [2.5, 1.5, 4.5, 3.5])
  np.testing.assert_array_equal(np.asarray(got['classes'][0, :2]), [1, 0])


@pytest.mark.parametrize('seed', range(3))
def test_targets_then_decode_recovers_boxes(seed):
  """Perfect predictions (target heatmap, wh and reg written at ind) decode to the
  clipped input boxes."""
  rng = np.random.default_rng(seed)
  h = w = 32
  m = 6
  cells = rng.choice(16, m, replace=False)  # distinct 8x8 cells -> distinct centres
  cx = (cells % 4) * 8 + rng.uniform(2, 6, m)
  cy = (cells // 4) * 8 + rng.uniform(2, 6, m)
  half = rng.uniform(1, 6, (m, 2))
  boxes = np.stack([cx - half[:, 0], cy - half[:, 1], cx + half[:, 0], cy + half[:, 1]], -1)
  labels = rng.integers(0, 3, m)
  t = ctdet.ctdet_targets(boxes[None].astype(np.float32), labels[None], np.ones((1, m)),
                            num_classes=3, output_hw=(h, w))
  wh_map = np.zeros((1, h, w, 2), np.float32)
  reg_map = np.zeros((1, h, w, 2), np.float32)
  ind = np.asarray(t['ind'][0])
  wh_map[0, ind // w, ind % w] = np.asarray(t['wh'][0])
  reg_map[0, ind // w, ind % w] = np.asarray(t['reg'][0])
  got = ctdet.ctdet_decode(t['hm'], wh_map, reg_map, K=m)
  np.testing.assert_array_equal(np.asarray(got['scores']), 1.0)
  clipped = np.clip(boxes, 0, w - 1)
  got_boxes = np.asarray(got['boxes'][0])
  centre_key = lambda bx: (bx[:, 1] + bx[:, 3]) * 1000 + (bx[:, 0] + bx[:, 2])
  got_order, want_order = np.argsort(centre_key(got_boxes)), np.argsort(centre_key(clipped))
  np.testing.assert_allclose(got_boxes[got_order], clipped[want_order], atol=1e-4)
  np.testing.assert_array_equal(np.asarray(got['classes'][0])[got_order], labels[want_order])


@pytest.mark.parametrize('seed, with_reg', [(0, True), (1, False), (2, True)])
def test_merge_flip_matches_loop(seed, with_reg):
  rng = np.random.default_rng(seed)
  b, h, w, c = 2, 6, 9, 3
  hm = rng.uniform(size=(2 * b, h, w, c)).astype(np.float32)
  wh = rng.uniform(0, 5, (2 * b, h, w, 2)).astype(np.float32)
  reg = rng.uniform(size=(2 * b, h, w, 2)).astype(np.float32) if with_reg else None
  got_hm, got_wh, got_reg = jax.jit(ctdet.merge_flip)(hm, wh, reg)
  want_hm = np.zeros((b, h, w, c), np.float32)
  want_wh = np.zeros((b, h, w, 2), np.float32)
  for i in range(b):
    for x in range(w):
      want_hm[i, :, x] = (hm[i, :, x] + hm[b + i, :, w - 1 - x]) / 2
      want_wh[i, :, x] = (wh[i, :, x] + wh[b + i, :, w - 1 - x]) / 2
  np.testing.assert_allclose(np.asarray(got_hm), want_hm, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_wh), want_wh, rtol=1e-6)
  if with_reg:
    np.testing.assert_array_equal(np.asarray(got_reg), reg[:b])
  else:
    assert got_reg is None


def test_merge_flip_of_mirrored_pass_is_identity():
  rng = np.random.default_rng(5)
  hm0 = rng.uniform(size=(1, 4, 6, 2)).astype(np.float32)
  wh0 = rng.uniform(size=(1, 4, 6, 2)).astype(np.float32)
  hm = np.concatenate([hm0, hm0[:, :, ::-1]])
  wh = np.concatenate([wh0, wh0[:, :, ::-1]])
  got_hm, got_wh, _ = ctdet.merge_flip(hm, wh, None)
  np.testing.assert_allclose(np.asarray(got_hm), hm0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_wh), wh0, rtol=1e-6)
  with pytest.raises(ValueError):
    ctdet.merge_flip(hm[:1], wh[:1], None)


class _PointwiseModel:
  """A stand-in detector whose output map is a pointwise function of the input pixels, so it is
  mirror-equivariant: the flip test of an image must equal its plain test."""

  def apply(self, variables, images, train):
    del variables, train
    return [{'hm': images[..., :2] * 3.0, 'wh': jnp.abs(images[..., 1:3]) * 4.0,
             'reg': jax.nn.sigmoid(images[..., :2])}]


def _predict(model, images, merge_later=False, **eval_kw):
  config = tasks.resolve_config(config_lib.base_config('ctdet'), 2)
  config.eval.K = 20
  for key, value in eval_kw.items():
    config.eval[key] = value
  return {k: np.asarray(v) for k, v in jax.jit(ctdet.make_predict_fn(
      config, model, merge_later=merge_later))({}, images).items()}


def test_predict_flip_test_of_a_mirror_equivariant_model_is_the_plain_test():
  images = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
  plain = _predict(_PointwiseModel(), images)
  flipped = _predict(_PointwiseModel(), images, flip_test=True)
  assert set(plain) == {'boxes', 'scores', 'classes'} and plain['boxes'].shape == (2, 20, 4)
  for key in plain:
    np.testing.assert_allclose(flipped[key], plain[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_predict_with_nms_rescores_the_plain_detections():
  images = np.random.default_rng(1).normal(size=(2, 12, 12, 3)).astype(np.float32)
  plain = _predict(_PointwiseModel(), images)
  got = _predict(_PointwiseModel(), images, nms=True)
  assert got['valid'].shape == (2, 20) and got['valid'].any()
  for i in range(2):
    for box, score, cls, ok in zip(got['boxes'][i], got['scores'][i], got['classes'][i],
                                   got['valid'][i], strict=True):
      if not ok:
        continue
      j = np.flatnonzero((np.abs(plain['boxes'][i] - box).max(-1) < 1e-5)
                         & (plain['classes'][i] == cls))
      assert len(j) >= 1 and score <= plain['scores'][i, j].max() + 1e-7
  # The best detection of each image is never suppressed; merge_later skips the NMS.
  np.testing.assert_allclose(got['scores'][:, 0], plain['scores'][:, 0], rtol=1e-6)
  later = _predict(_PointwiseModel(), images, merge_later=True, nms=True)
  assert set(later) == set(plain)
  for key in plain:
    np.testing.assert_array_equal(later[key], plain[key])


def test_make_merge_is_per_class_soft_nms_in_pixels():
  config = tasks.resolve_config(config_lib.base_config('ctdet'), 2)
  config.eval.K = 3
  boxes = np.array([[[0, 0, 40, 40], [0, 0, 40, 40], [1, 1, 41, 41], [100, 100, 120, 130]]],
                   np.float32)
  dets = {'boxes': boxes, 'scores': np.array([[0.9, 0.8, 0.7, 0.6]], np.float32),
          'classes': np.array([[0, 1, 0, 0]], np.int32)}
  got = jax.jit(ctdet.make_merge(config))(dets)
  want = nms.nms_top_k(boxes, dets['scores'], dets['classes'], K=3)
  for key in ('boxes', 'scores', 'classes', 'valid'):
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
  # The duplicate of another class is untouched; the overlapping same-class box is rescored.
  np.testing.assert_allclose(np.asarray(got['scores'][0, :2]), [0.9, 0.8], rtol=1e-6)


def test_train_step_rejects_inputs_the_network_does_not_divide():
  from centernet_jax import optim, state
  from centernet_jax.models import build_model
  config = tasks.resolve_config(config_lib.base_config('ctdet'), 2)
  config.model.arch = 'resnet_tiny'
  config.model.head_conv = 8
  model = build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=1, steps_per_epoch=1,
                                      total_steps=1)
  st = jax.eval_shape(lambda: state.init_state(model, tx, jax.random.PRNGKey(0), (1, 64, 64, 3)))
  step = ctdet.make_train_step(config, model, tx, schedule)
  batch = {'image': jax.ShapeDtypeStruct((1, 72, 72, 3), jnp.float32),
           'boxes': jax.ShapeDtypeStruct((1, 4, 4), jnp.float32),
           'labels': jax.ShapeDtypeStruct((1, 4), jnp.int32),
           'mask': jax.ShapeDtypeStruct((1, 4), jnp.float32)}
  with pytest.raises(ValueError, match='down_ratio=4'):
    jax.eval_shape(step, st, batch)

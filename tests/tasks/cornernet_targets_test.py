"""Tests for tasks.cornernet.cornernet_targets against a per-object numpy oracle of the
official CornerNet `sample/coco.py: kp_detection` and `sample/utils.py` (float64)."""

import functools
import math

import jax
import numpy as np
import pytest

from centernet_jax.tasks import cornernet
from tests.gaussian_test import _corner_radius_oracle as _radius_oracle


def _draw_oracle(heatmap, x, y, radius):
  """draw_gaussian: (2r+1)^2 kernel, sigma = (2r+1)/6, clipped window, element-wise max."""
  sigma = (2 * radius + 1) / 6
  height, width = heatmap.shape
  for yy in range(max(0, y - radius), min(height, y + radius + 1)):
    for xx in range(max(0, x - radius), min(width, x + radius + 1)):
      g = math.exp(-((xx - x)**2 + (yy - y)**2) / (2 * sigma * sigma))
      heatmap[yy, xx] = max(heatmap[yy, xx], g)


def _cornernet_oracle(boxes, labels, mask, c, out_hw, in_hw, overlap=0.3, gaussian=True):
  (out_h, out_w), (in_h, in_w) = out_hw, in_hw
  b, m = labels.shape
  tl_heat = np.zeros((b, c, out_h, out_w))
  br_heat = np.zeros((b, c, out_h, out_w))
  tl_regr = np.zeros((b, m, 2))
  br_regr = np.zeros((b, m, 2))
  tl_tag = np.zeros((b, m), np.int64)
  br_tag = np.zeros((b, m), np.int64)
  tag_mask = np.zeros((b, m))
  width_ratio, height_ratio = out_w / in_w, out_h / in_h
  for i in range(b):
    for k in range(m):
      if not mask[i, k]:
        continue
      # _clip_detections
      xtl, xbr = np.clip(boxes[i, k, [0, 2]].astype(np.float64), 0, in_w - 1)
      ytl, ybr = np.clip(boxes[i, k, [1, 3]].astype(np.float64), 0, in_h - 1)
      if not (xbr - xtl > 0 and ybr - ytl > 0):
        continue
      fxtl, fytl = xtl * width_ratio, ytl * height_ratio
      fxbr, fybr = xbr * width_ratio, ybr * height_ratio
      ixtl, iytl, ixbr, iybr = int(fxtl), int(fytl), int(fxbr), int(fybr)
      cat = labels[i, k]
      if gaussian:
        width = math.ceil((xbr - xtl) * width_ratio)
        height = math.ceil((ybr - ytl) * height_ratio)
        radius = max(0, int(_radius_oracle(height, width, overlap)))
        _draw_oracle(tl_heat[i, cat], ixtl, iytl, radius)
        _draw_oracle(br_heat[i, cat], ixbr, iybr, radius)
      else:
        tl_heat[i, cat, iytl, ixtl] = 1
        br_heat[i, cat, iybr, ixbr] = 1
      tl_regr[i, k] = fxtl - ixtl, fytl - iytl
      br_regr[i, k] = fxbr - ixbr, fybr - iybr
      tl_tag[i, k] = iytl * out_w + ixtl
      br_tag[i, k] = iybr * out_w + ixbr
      tag_mask[i, k] = 1
  return {'tl_heat': tl_heat.transpose(0, 2, 3, 1), 'br_heat': br_heat.transpose(0, 2, 3, 1),
          'tl_regr': tl_regr, 'br_regr': br_regr, 'tl_tag': tl_tag, 'br_tag': br_tag,
          'tag_mask': tag_mask}


def _random_objects(rng, b, m, c, in_h, in_w):
  """Input-pixel boxes: partly or fully outside, degenerate, shared corner pixels."""
  xy = rng.uniform(-20, [in_w + 10, in_h + 10], (b, m, 2))
  size = rng.uniform(0.5, 0.7 * max(in_h, in_w), (b, m, 2))
  boxes = np.concatenate([xy, xy + size], axis=-1)
  boxes[:, 0] = [-30, -5, in_w + 40, in_h + 3]  # covers the image: clipped on all sides
  boxes[:, 1, 3] = boxes[:, 1, 1]  # zero height
  boxes[:, 2] = [in_w + 1, 2, in_w + 9, 20]  # right of the image: clipped to zero width
  inside = rng.uniform(0.05, 0.45, (b, 4)) * [in_w, in_h, in_w, in_h]
  boxes[:, 4] = np.concatenate([inside[:, :2], inside[:, :2] + inside[:, 2:]], axis=-1)
  boxes[:, 3] = boxes[:, 4] + [0, 0, 7, 3]  # same top-left corner as object 4
  boxes[:, 5] = boxes[:, 4] + [5, 2, 0.01, 0.01]  # bottom-right on object 4's corner pixel
  labels = rng.integers(0, c, (b, m)).astype(np.int32)
  labels[:, [3, 5]] = labels[:, [4, 4]]
  mask = rng.uniform(size=(b, m)) < 0.85
  mask[:, :6] = True
  return boxes.astype(np.float32), labels, mask


def _run(boxes, labels, mask, c, out_hw, in_hw, **kw):
  fn = jax.jit(functools.partial(cornernet.cornernet_targets, num_classes=c, output_hw=out_hw,
                                 input_hw=in_hw, **kw))
  return {k: np.asarray(v) for k, v in fn(boxes, labels, mask).items()}


def _assert_equal(got, want):
  for name in ('tl_heat', 'br_heat'):
    assert got[name].dtype == np.float32
    np.testing.assert_allclose(got[name], want[name], atol=2e-6, rtol=0, err_msg=name)
    np.testing.assert_array_equal(got[name] == 1, want[name] == 1, err_msg=name)
  for name in ('tl_regr', 'br_regr'):
    np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)
  for name in ('tl_tag', 'br_tag'):
    assert got[name].dtype == np.int32
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  np.testing.assert_array_equal(got['tag_mask'], want['tag_mask'])


@pytest.mark.parametrize('seed, b, m, c, out_hw, in_hw', [
    (0, 1, 8, 1, (128, 128), (511, 511)),  # the official sizes, ratio 128/511
    (1, 2, 10, 3, (32, 32), (127, 127)),
    (2, 2, 9, 2, (24, 40), (95, 159)),  # non-square: a ratio per axis
])
def test_cornernet_targets_match_oracle(seed, b, m, c, out_hw, in_hw):
  rng = np.random.default_rng(seed)
  boxes, labels, mask = _random_objects(rng, b, m, c, *in_hw)
  got = _run(boxes, labels, mask, c, out_hw, in_hw)
  want = _cornernet_oracle(boxes, labels, mask, c, out_hw, in_hw)
  assert got['tl_heat'].shape == (b, *out_hw, c) and got['tl_regr'].shape == (b, m, 2)
  _assert_equal(got, want)
  # The shared corners: one positive pixel for the two objects (max-merge).
  np.testing.assert_array_equal(got['tl_tag'][:, 3], got['tl_tag'][:, 4])
  np.testing.assert_array_equal(got['br_tag'][:, 5], got['br_tag'][:, 4])
  assert got['tl_heat'].max() == 1.0 and got['tag_mask'][:, 1:3].sum() == 0


@pytest.mark.parametrize('overlap, gaussian', [(0.7, True), (0.3, False)])
def test_cornernet_targets_options(overlap, gaussian):
  rng = np.random.default_rng(7)
  boxes, labels, mask = _random_objects(rng, 2, 8, 1, 64, 64)  # exact 1/4 ratio, one class
  got = _run(boxes, labels, mask, 1, (16, 16), (64, 64), min_overlap=overlap, gaussian=gaussian)
  _assert_equal(got, _cornernet_oracle(boxes, labels, mask, 1, (16, 16), (64, 64), overlap,
                                       gaussian))
  if not gaussian:
    assert set(np.unique(got['tl_heat'])) <= {0.0, 1.0}


def test_cornernet_targets_hand_case_and_padding():
  boxes = np.full((2, 3, 4), np.nan, np.float32)  # garbage in padded rows
  boxes[1, 0] = [40, 20, 300, 510]  # input 511 -> 128: fx = 40 * 128 / 511
  mask = np.zeros((2, 3))
  mask[1, 0] = 1
  got = _run(boxes, np.array([[0, 0, 0], [1, 0, 0]], np.int32), mask, 2, (128, 128), (511, 511))
  for v in got.values():
    assert np.isfinite(v).all()
  assert got['tl_heat'][0].max() == 0 and got['tag_mask'][0].sum() == 0
  r = 128 / 511
  assert got['tl_tag'][1, 0] == int(20 * r) * 128 + int(40 * r)
  assert got['br_tag'][1, 0] == int(510 * r) * 128 + int(300 * r)
  np.testing.assert_allclose(got['tl_regr'][1, 0], [40 * r - int(40 * r), 20 * r - int(20 * r)],
                             atol=1e-5)
  assert got['tl_heat'][1, int(20 * r), int(40 * r), 1] == 1.0
  assert got['br_heat'][1, 127, int(300 * r), 1] == 1.0
  assert got['tl_heat'][1, ..., 0].max() == 0
  np.testing.assert_array_equal(got['tag_mask'], [[0, 0, 0], [1, 0, 0]])

"""ddd (monocular 3D): targets, loss, decoding and the 3D post-process against numpy oracles written
from the official sample, loss, decode and post-process code (docs/parity.md 4.13), plus the train
step and the predict function on a tiny model."""

import functools
import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import config_lib, models, optim, tasks
from centernet_jax.data import kitti as kitti_data
from centernet_jax.state import init_state
from centernet_jax.tasks import ddd
from tests.decode_test import _peaks_oracle
from tests.gaussian_test import _radius_oracle
from tests.losses_test import _focal_oracle
from tests.tasks import registry_test
from tests.tasks.ctdet_test import _draw_oracle

LABEL_CODES = (0, 1, 2, -1, -2, -3, -99)


# --- Oracles (the official loops, float64 where the official code is) -----------------------


def _bins_oracle(alpha):
  """Official ``_alpha_to_8`` / sampler bins: python float64 comparisons, unwrapped residuals."""
  a = float(alpha)
  rotbin, rotres = [0, 0], [0.0, 0.0]
  if a < np.pi / 6. or a > 5 * np.pi / 6.:
    rotbin[0], rotres[0] = 1, a - (-0.5 * np.pi)
  if a > -np.pi / 6. or a < -5 * np.pi / 6.:
    rotbin[1], rotres[1] = 1, a - (0.5 * np.pi)
  return rotbin, rotres


def _targets_oracle(boxes, labels, mask, depth, dims, alpha, aug, num_classes, out_h, out_w):
  """The official ``DddDataset.__getitem__`` object loop, in output-map coordinates."""
  b, m = labels.shape
  t = {'hm': np.zeros((b, num_classes, out_h, out_w), np.float32),
       'ind': np.zeros((b, m), np.int64), 'dep': np.zeros((b, m, 1), np.float32),
       'dim': np.zeros((b, m, 3), np.float32), 'rotbin': np.zeros((b, m, 2), np.int64),
       'rotres': np.zeros((b, m, 2), np.float32), 'wh': np.zeros((b, m, 2), np.float32),
       'reg': np.zeros((b, m, 2), np.float32), 'reg_mask': np.zeros((b, m), np.float32),
       'rot_mask': np.zeros((b, m), np.float32)}
  for i in range(b):
    for k in range(m):
      cls_id = int(labels[i, k])
      if not mask[i, k] or cls_id <= -99:
        continue
      bbox = boxes[i, k].astype(np.float32).copy()
      bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
      bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
      h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
      if not (h > 0 and w > 0):
        continue
      radius = max(0, int(_radius_oracle(float(h), float(w))))  # float sides, no ceil
      ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
      ct_int = ct.astype(np.int32)
      if cls_id < 0:
        ignore = list(range(num_classes)) if cls_id == -1 else [-cls_id - 2]
        for cc in ignore:
          _draw_oracle(t['hm'][i, cc], ct, radius)
        t['hm'][i, ignore, ct_int[1], ct_int[0]] = 0.9999
        continue
      _draw_oracle(t['hm'][i, cls_id], ct, radius)
      t['wh'][i, k] = w, h
      t['rotbin'][i, k], t['rotres'][i, k] = _bins_oracle(alpha[i, k])
      t['dep'][i, k] = depth[i, k]
      t['dim'][i, k] = dims[i, k]
      t['ind'][i, k] = ct_int[1] * out_w + ct_int[0]
      t['reg'][i, k] = ct - ct_int
      t['reg_mask'][i, k] = 0 if aug[i] else 1
      t['rot_mask'][i, k] = 1
  t['hm'] = t['hm'].transpose(0, 2, 3, 1)
  return t


def _gather_oracle(feat, ind):
  b, h, w, d = feat.shape
  return np.stack([feat[i].reshape(h * w, d)[ind[i]] for i in range(b)])


def _l1_oracle(pred, ind, mask, target, per_object=False):
  """Official ddd ``L1Loss``: F.l1_loss(pred * m, gt * m) averaged over every element; with
  ``per_object`` the sum over the objects' entries (ctdet's RegL1 normaliser)."""
  g = _gather_oracle(np.asarray(pred, np.float64), ind)
  m = np.asarray(mask, np.float64)[..., None]
  err = np.abs(g * m - np.asarray(target, np.float64) * m)
  return err.sum() / (m.sum() * err.shape[-1] + 1e-4) if per_object else np.mean(err)


def _smooth_l1(x):
  ax = np.abs(x)
  return np.where(ax < 1, 0.5 * x * x, ax - 0.5)


def _rot_loss_oracle(rot, mask, rotbin, rotres, per_object=False):
  """Official ``compute_rot_loss`` on rows flattened to (B * M, 8), float64; ``per_object``:
  the bin cross-entropy averaged over the masked rows only."""
  out = np.asarray(rot, np.float64).reshape(-1, 8)
  tb = np.asarray(rotbin).reshape(-1, 2)
  tr = np.asarray(rotres, np.float64).reshape(-1, 2)
  m = np.asarray(mask, np.float64).reshape(-1, 1)
  loss = 0.0
  for i in range(2):
    logits = out[:, 4 * i:4 * i + 2] * m
    lse = np.log(np.exp(logits).sum(1))
    ce = lse - logits[np.arange(len(tb)), tb[:, i]]
    loss += (ce * m[:, 0]).sum() / max(m.sum(), 1.0) if per_object else np.mean(ce)
    idx = np.nonzero(tb[:, i])[0]
    if len(idx):
      loss += np.mean(_smooth_l1(out[idx, 4 * i + 2] - np.sin(tr[idx, i])))
      loss += np.mean(_smooth_l1(out[idx, 4 * i + 3] - np.cos(tr[idx, i])))
  return loss


def _depth_oracle(x):
  return 1.0 / (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64))) + 1e-6) - 1.0


def _box3d_oracle(dim, location, rotation_y):
  """Official ``compute_box_3d``."""
  c, s = np.cos(rotation_y), np.sin(rotation_y)
  r = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float64)
  h, w, length = dim
  x = length / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
  corners = np.array([x, [0, 0, 0, 0, -h, -h, -h, -h],
                      [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2]])
  return (r @ corners + np.asarray(location, np.float64).reshape(3, 1)).T


def _unproject_oracle(pt, depth, p):
  z = depth - p[2, 3]
  x = (pt[0] * depth - p[0, 3] - p[0, 2] * z) / p[0, 0]
  y = (pt[1] * depth - p[1, 3] - p[1, 2] * z) / p[1, 1]
  return np.array([x, y, z])


def _alpha2rot_y_oracle(alpha, x, cx, fx):
  rot_y = alpha + np.arctan2(x - cx, fx)
  if rot_y > np.pi:
    rot_y -= 2 * np.pi
  if rot_y < -np.pi:
    rot_y += 2 * np.pi
  return rot_y


def _get_alpha_oracle(rot):
  """Official ``get_alpha`` (bool idx arithmetic)."""
  idx = rot[:, 1] > rot[:, 5]
  alpha1 = np.arctan2(rot[:, 2], rot[:, 3]) + (-0.5 * np.pi)
  alpha2 = np.arctan2(rot[:, 6], rot[:, 7]) + (0.5 * np.pi)
  return alpha1 * idx + alpha2 * (1 - idx)


KITTI_P2 = ddd.DEFAULT_CALIB  # the official detector's default calib


def _random_objects(rng, b, m, out_h, out_w):
  xy = rng.uniform(-4, [out_w, out_h], (b, m, 2))
  size = rng.uniform(0.3, 0.6 * max(out_h, out_w), (b, m, 2))
  boxes = np.concatenate([xy, xy + size], -1).astype(np.float32)
  labels = rng.choice(LABEL_CODES, (b, m), p=[.25, .25, .15, .1, .1, .1, .05]).astype(np.int32)
  mask = rng.uniform(size=(b, m)) < 0.85
  depth = rng.uniform(2, 60, (b, m)).astype(np.float32)
  dims = rng.uniform(0.5, 4, (b, m, 3)).astype(np.float32)
  alpha = rng.uniform(-np.pi, np.pi, (b, m)).astype(np.float32)
  aug = rng.uniform(size=b) < 0.4
  if m > 3:  # shared centres: ignored objects before and after a positive on the same pixel
    boxes[:, 1] = boxes[:, 0]
    boxes[:, 3] = boxes[:, 2]
    labels[:, 0], labels[:, 1], labels[:, 2], labels[:, 3] = 1, -1, -3, 1
    mask[:, :4] = True
  return boxes, labels, mask, depth, dims, alpha, aug


_jit_targets = jax.jit(ddd.ddd_targets, static_argnames=('num_classes', 'output_hw'))
_jit_rot_loss = jax.jit(ddd.bin_rot_loss)


def _targets(args, c, out_h, out_w):
  return _jit_targets(*(jnp.asarray(a) for a in args), num_classes=c, output_hw=(out_h, out_w))


# --- Targets --------------------------------------------------------------------------------


@pytest.mark.parametrize('seed, b, m, out_h, out_w', [
    (0, 1, 3, 8, 12), (1, 2, 6, 12, 16), (2, 3, 10, 10, 32)])
def test_targets_match_the_official_loop(seed, b, m, out_h, out_w):
  rng = np.random.default_rng(seed)
  args = _random_objects(rng, b, m, out_h, out_w)
  got = jax.tree.map(np.asarray, _targets(args, 3, out_h, out_w))
  want = _targets_oracle(*args, 3, out_h, out_w)
  assert set(got) == set(want)
  for key, w in want.items():
    np.testing.assert_allclose(got[key], w, rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('order, label, channel, peak', [
    ((1, -1), 1, 1, 0.9999),  # DontCare after a Car on its centre: the Car loses its peak
    ((-1, 1), 1, 1, 1.0),  # DontCare first: the Car drawn later keeps its 1.0
    ((1, -3), 1, 1, 0.9999),  # a Van after it: ignored in the Car channel
    ((0, -3), 0, 0, 1.0),  # a Van does not touch the Pedestrian channel
    ((0, -2), 0, 0, 0.9999),  # Person_sitting is ignored in the Pedestrian channel
])
def test_ignored_objects_on_a_positive_centre(order, label, channel, peak):
  boxes = np.array([[[2, 2, 9, 7], [2, 2, 9, 7]]], np.float32)
  labels = np.array([order], np.int32)
  args = (boxes, labels, np.ones((1, 2)), np.full((1, 2), 10.0), np.ones((1, 2, 3)),
          np.zeros((1, 2)), np.zeros(1))
  t = _targets(args, 3, 10, 12)
  assert float(t['hm'][0, 4, 5, channel]) == pytest.approx(peak, abs=1e-7)
  k = order.index(label)
  assert float(t['rot_mask'][0, k]) == 1 and float(t['rot_mask'][0, 1 - k]) == 0
  if -1 in order:  # DontCare marks every channel's centre
    assert np.all(np.asarray(t['hm'][0, 4, 5]) >= 0.9999 - 1e-7)


def test_skipped_augmented_and_padded_objects():
  nan = np.nan
  boxes = np.array([[[2, 2, 9, 7], [1, 1, 5, 5], [0, 0, 4, 4], [nan] * 4]] * 2, np.float32)
  labels = np.array([[-99, 2, 0, -1]] * 2, np.int32)
  mask = np.array([[1, 1, 1, 0]] * 2, np.float32)
  nans = np.full((2, 4), nan, np.float32)
  nans[:, :3] = 7.0
  args = (boxes, labels, mask, nans, nans[..., None].repeat(3, -1), nans, np.array([0, 1]))
  t = jax.tree.map(np.asarray, _targets(args, 3, 10, 12))
  assert t['rot_mask'].tolist() == [[0, 1, 1, 0]] * 2  # Tram / Misc keep their slot only
  assert t['reg_mask'].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]  # augmented: no depth / dims
  assert t['hm'][:, 4, 5].max() < 1  # the skipped object's centre has no peak
  for key, v in t.items():  # garbage (NaN) in padded slots cannot leak
    assert np.all(np.isfinite(v)), key


@pytest.mark.parametrize('t', [math.pi / 6, -math.pi / 6, 5 * math.pi / 6, -5 * math.pi / 6])
def test_rotation_bins_keep_the_strict_float64_boundaries(t):
  f = np.float32(t)
  alphas = np.array([np.nextafter(np.nextafter(f, -np.inf), -np.inf), np.nextafter(f, -np.inf),
                     f, np.nextafter(f, np.inf), np.nextafter(np.nextafter(f, np.inf), np.inf)],
                    np.float32)
  rotbin, rotres = ddd.rotation_bins(jnp.asarray(alphas))
  for a, rb, rr in zip(alphas, np.asarray(rotbin), np.asarray(rotres), strict=True):
    wb, wr = _bins_oracle(a)
    assert rb.tolist() == wb, (float(a), t)
    np.testing.assert_allclose(rr, wr, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('alpha, bins', [
    (0.0, [1, 1]), (math.pi, [1, 1]), (-math.pi, [1, 1]), (math.pi / 2, [0, 1]),
    (-math.pi / 2, [1, 0]), (2.8, [1, 1]), (-2.8, [1, 1]), (1.2, [0, 1]), (-1.2, [1, 0])])
def test_rotation_bins_table(alpha, bins):
  rotbin, rotres = ddd.rotation_bins(jnp.float32(alpha))
  assert np.asarray(rotbin).tolist() == bins
  want = [alpha + math.pi / 2 if bins[0] else 0.0, alpha - math.pi / 2 if bins[1] else 0.0]
  np.testing.assert_allclose(np.asarray(rotres), want, atol=1e-6)  # residuals are not wrapped


# --- Loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize('x', [[-30.0, -10.0, -1.0, 0.0, 0.5, 3.0, 12.0, 30.0]])
def test_depth_transform(x):
  got = np.asarray(ddd.depth_from_output(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, _depth_oracle(x), rtol=2e-5, atol=1e-6)  # float32 near 0


@pytest.mark.parametrize('seed, b, m, p_mask', [(0, 2, 5, 0.6), (1, 3, 8, 1.0), (2, 1, 4, 0.3)])
def test_bin_rot_loss_matches_oracle(seed, b, m, p_mask):
  rng = np.random.default_rng(seed)
  rot = rng.normal(0, 2, (b, m, 8)).astype(np.float32)
  mask = (rng.uniform(size=(b, m)) < p_mask).astype(np.float32)
  rotbin, rotres = (np.asarray(v) for v in ddd.rotation_bins(
      jnp.asarray(rng.uniform(-np.pi, np.pi, (b, m)), jnp.float32)))
  rotbin = rotbin * mask[..., None].astype(np.int32)
  rotres = rotres * mask[..., None]
  got = float(_jit_rot_loss(jnp.asarray(rot), jnp.asarray(mask), jnp.asarray(rotbin),
                            jnp.asarray(rotres)))
  assert got == pytest.approx(_rot_loss_oracle(rot, mask, rotbin, rotres), rel=1e-5)


@pytest.mark.parametrize('seed, p_mask', [(0, 0.5), (1, 0.0), (2, 1.0)])
def test_bin_rot_loss_per_object_matches_oracle(seed, p_mask):
  rng = np.random.default_rng(seed)
  rot = rng.normal(0, 2, (2, 6, 8)).astype(np.float32)
  mask = (rng.uniform(size=(2, 6)) < p_mask).astype(np.float32)
  rotbin, rotres = (np.asarray(v) for v in ddd.rotation_bins(
      jnp.asarray(rng.uniform(-np.pi, np.pi, (2, 6)), jnp.float32)))
  rotbin = rotbin * mask[..., None].astype(np.int32)
  rotres = rotres * mask[..., None]
  got = float(ddd.bin_rot_loss(jnp.asarray(rot), jnp.asarray(mask), jnp.asarray(rotbin),
                               jnp.asarray(rotres), per_object=True))
  want = _rot_loss_oracle(rot, mask, rotbin, rotres, per_object=True)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
  if p_mask == 0.0:
    assert got == 0.0  # no object: nothing to learn, not 2 ln 2


def test_bin_rot_loss_without_objects_is_two_ln_two():
  rot = np.random.default_rng(0).normal(0, 5, (2, 7, 8)).astype(np.float32)
  zeros = np.zeros((2, 7), np.float32)
  got = float(_jit_rot_loss(jnp.asarray(rot), zeros, zeros[..., None].repeat(2, -1)
                            .astype(np.int32), zeros[..., None].repeat(2, -1)))
  assert got == pytest.approx(2 * math.log(2), rel=1e-6)


@pytest.mark.parametrize('seed, num_stacks, drop, per_object', [
    (0, 1, (), False), (1, 2, (), False), (2, 1, ('wh',), False), (3, 2, ('reg', 'wh'), False),
    (4, 1, (), True), (5, 2, ('wh',), True)])
def test_loss_matches_oracle(seed, num_stacks, drop, per_object):
  rng = np.random.default_rng(seed)
  b, m, c, h, w = 2, 6, 3, 8, 10
  args = _random_objects(rng, b, m, h, w)
  args[-1][:] = [True, False]  # reg_mask (dep, dim) differs from rot_mask (rot, wh, reg)
  tgt = _targets_oracle(*args, c, h, w)
  chans = {'hm': c, 'dep': 1, 'rot': 8, 'dim': 3, 'wh': 2, 'reg': 2}
  outs = [{k: rng.normal(0, 2, (b, h, w, ch)).astype(np.float32) for k, ch in chans.items()
           if k not in drop} for _ in range(num_stacks)]
  weights = {'hm_weight': 1.3, 'dep_weight': 0.7, 'dim_weight': 1.1, 'rot_weight': 0.9,
             'wh_weight': 0.1, 'off_weight': 0.8}
  total, parts = jax.jit(functools.partial(ddd.ddd_loss, **weights, per_object=per_object))(
      outs, tgt)
  want = dict.fromkeys(('hm', 'dep', 'dim', 'rot', 'wh', 'off'), 0.0)
  for o in outs:
    want['hm'] += _focal_oracle(o['hm'], tgt['hm']) / num_stacks
    want['dep'] += _l1_oracle(_depth_oracle(o['dep']), tgt['ind'], tgt['reg_mask'],
                              tgt['dep'], per_object) / num_stacks
    want['dim'] += _l1_oracle(o['dim'], tgt['ind'], tgt['reg_mask'], tgt['dim'],
                              per_object) / num_stacks
    want['rot'] += _rot_loss_oracle(_gather_oracle(o['rot'], tgt['ind']), tgt['rot_mask'],
                                    tgt['rotbin'], tgt['rotres'], per_object) / num_stacks
    for head, key in (('wh', 'wh'), ('reg', 'off')):
      if head in o:
        want[key] += _l1_oracle(o[head], tgt['ind'], tgt['rot_mask'], tgt[head],
                                per_object) / num_stacks
  for key, v in want.items():
    assert float(parts[f'{key}_loss']) == pytest.approx(v, rel=1e-4, abs=1e-7), key
  assert float(total) == pytest.approx(sum(weights[f'{k}_weight'] * v for k, v in want.items()),
                                       rel=1e-4)


# --- Decoding and the 3D post-process -------------------------------------------------------


@pytest.mark.parametrize('seed, shape, k, with_wh_reg', [
    (0, (1, 6, 8, 3), 5, True), (1, (2, 8, 10, 3), 12, True), (2, (2, 5, 7, 1), 6, False)])
def test_decode_matches_oracle(seed, shape, k, with_wh_reg):
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  hm = rng.uniform(size=shape).astype(np.float32)
  maps = {n: rng.normal(size=(b, h, w, ch)).astype(np.float32)
          for n, ch in (('rot', 8), ('dep', 1), ('dim', 3), ('wh', 2), ('reg', 2))}
  decode = jax.jit(ddd.ddd_decode, static_argnames='K')
  got = decode(hm, maps['rot'], maps['dep'], maps['dim'], maps['wh'] if with_wh_reg else None,
               maps['reg'] if with_wh_reg else None, K=k)
  got = jax.tree.map(np.asarray, got)
  peaks = _peaks_oracle(hm).reshape(b, -1)
  for i in range(b):
    order = np.argsort(-peaks[i], kind='stable')[:k]
    ind, cls = order // c, order % c
    xs, ys = (ind % w).astype(np.float32), (ind // w).astype(np.float32)
    g = {n: v[i].reshape(h * w, -1)[ind] for n, v in maps.items()}
    off = g['reg'] if with_wh_reg else np.full((k, 2), 0.5, np.float32)
    size = g['wh'] if with_wh_reg else np.zeros((k, 2), np.float32)
    cx, cy = xs + off[:, 0], ys + off[:, 1]
    np.testing.assert_allclose(got['scores'][i], peaks[i][order], rtol=1e-6)
    np.testing.assert_array_equal(got['classes'][i], cls)
    np.testing.assert_allclose(got['centers'][i], np.stack([cx, cy], -1), rtol=1e-6)
    np.testing.assert_allclose(got['boxes'][i], np.stack(
        [cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2],
        -1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got['rot'][i], g['rot'], rtol=1e-6)
    np.testing.assert_allclose(got['depth'][i], g['dep'][:, 0], rtol=1e-6)
    np.testing.assert_allclose(got['dims'][i], g['dim'], rtol=1e-6)


@pytest.mark.parametrize('seed, tie', [(0, False), (1, True)])
def test_alpha_from_rot(seed, tie):
  rot = np.random.default_rng(seed).normal(0, 2, (40, 8)).astype(np.float32)
  if tie:
    rot[::2, 5] = rot[::2, 1]  # equal logits go to bin 2
  got = ddd.alpha_from_rot(rot)
  np.testing.assert_allclose(got, _get_alpha_oracle(rot), rtol=1e-6, atol=1e-6)
  if tie:
    np.testing.assert_allclose(
        got[::2], np.arctan2(rot[::2, 6], rot[::2, 7]) + np.pi / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('alpha, u', [(0.3, 700.0), (3.0, 1200.0), (-3.0, 10.0), (-1.0, 604.0814),
                                      (2.9, 604.0), (-3.1, 0.0), (3.1, 1241.0)])
def test_alpha_to_rotation_y_wraps_once(alpha, u):
  got = float(ddd.alpha_to_rotation_y(np.float32(alpha), np.float32(u), KITTI_P2[0, 2],
                                      KITTI_P2[0, 0]))
  want = _alpha2rot_y_oracle(alpha, u, float(KITTI_P2[0, 2]), float(KITTI_P2[0, 0]))
  assert got == pytest.approx(want, abs=1e-5)
  assert -np.pi - 1e-6 <= got <= np.pi + 1e-6


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_unproject_and_locate(seed):
  rng = np.random.default_rng(seed)
  centers = rng.uniform([0, 0], [1242, 375], (9, 2)).astype(np.float32)
  depth = rng.uniform(3, 60, 9).astype(np.float32)
  dims = rng.uniform(0.5, 4, (9, 3)).astype(np.float32)
  alpha = rng.uniform(-np.pi, np.pi, 9).astype(np.float32)
  got = ddd.unproject(centers, depth, KITTI_P2)
  want = np.stack([_unproject_oracle(c, d, KITTI_P2.astype(np.float64))
                   for c, d in zip(centers, depth, strict=True)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  loc, rot_y = ddd.locate(centers, depth, dims, alpha, KITTI_P2)
  np.testing.assert_allclose(loc, want + np.stack([0 * dims[:, 0], dims[:, 0] / 2, 0 * dims[:, 0]],
                                                  -1), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(rot_y, [_alpha2rot_y_oracle(a, c[0], KITTI_P2[0, 2], KITTI_P2[0, 0])
                                     for a, c in zip(alpha, centers, strict=True)], atol=1e-5)
  # With P2[2, 3] = 0 unprojection inverts the projection exactly.
  p = KITTI_P2.copy()
  p[2, 3] = 0
  np.testing.assert_allclose(kitti_data.project(ddd.unproject(centers, depth, p), p), centers,
                             rtol=1e-5, atol=1e-2)


def _batch_dets(rng, b, k):
  centers = rng.uniform([100, 100], [1100, 300], (b, k, 2)).astype(np.float32)
  wh = rng.uniform(10, 200, (b, k, 2)).astype(np.float32)
  return {'centers': centers, 'wh': wh,
          'boxes': np.concatenate([centers - wh / 2, centers + wh / 2], -1),
          'scores': rng.uniform(0, 1, (b, k)).astype(np.float32),
          'classes': rng.integers(0, 3, (b, k)).astype(np.int32),
          'rot': rng.normal(0, 2, (b, k, 8)).astype(np.float32),
          'depth': rng.uniform(3, 50, (b, k)).astype(np.float32),
          'dims': rng.uniform(0.5, 4, (b, k, 3)).astype(np.float32)}


@pytest.mark.parametrize('official_2d_box, first_image_calib', [
    (False, False), (True, False), (False, True), (True, True)])
def test_post_process_matches_the_official_stages(official_2d_box, first_image_calib,
                                                  monkeypatch):
  rng = np.random.default_rng(3)
  dets = _batch_dets(rng, 2, 10)
  # The official box: wh mapped like a point (it went through the inverse affine as one).
  dets['wh'] = rng.uniform(300, 700, (2, 10, 2)).astype(np.float32)
  dets['scores'][:, 0] = 0.25  # exactly the threshold: dropped (strictly above is kept)
  calibs = np.stack([KITTI_P2, KITTI_P2 * np.float32([[0.5], [0.5], [1]])])
  config = _tiny_config(monkeypatch, peak_thresh=0.25, ddd_official_2d_box=official_2d_box,
                        ddd_first_image_calib=first_image_calib)
  out = ddd.make_post_process(config)(dets, calibs)
  for i, objs in enumerate(out):
    keep = dets['scores'][i] > 0.25
    p = calibs[0 if first_image_calib else i].astype(np.float64)
    alpha = _get_alpha_oracle(dets['rot'][i][keep])
    assert objs['scores'].tolist() == dets['scores'][i][keep].tolist()
    np.testing.assert_allclose(objs['alpha'], alpha, rtol=1e-6, atol=1e-6)
    for j, (c, d, dim, a) in enumerate(zip(dets['centers'][i][keep], dets['depth'][i][keep],
                                           dets['dims'][i][keep], alpha, strict=True)):
      loc = _unproject_oracle(c, d, p)
      loc[1] += dim[0] / 2
      rot_y = _alpha2rot_y_oracle(a, c[0], p[0, 2], p[0, 0])
      np.testing.assert_allclose(objs['locations'][j], loc, rtol=1e-5, atol=1e-4)
      assert objs['rotation_y'][j] == pytest.approx(rot_y, abs=1e-5)
      np.testing.assert_allclose(objs['corners'][j], _box3d_oracle(dim, loc, rot_y),
                                 rtol=1e-5, atol=1e-3)
      wh = dets['wh'][i][keep][j] if official_2d_box else None
      box = (np.concatenate([c - wh / 2, c + wh / 2]) if official_2d_box
             else dets['boxes'][i][keep][j])
      np.testing.assert_allclose(objs['boxes'][j], box, rtol=1e-6)


def test_post_process_rejects_a_bad_calib():
  with pytest.raises(ValueError, match='3 x 4'):
    ddd.locate(np.zeros((1, 2)), np.ones(1), np.ones((1, 3)), np.zeros(1), np.eye(3))


# --- Evaluation -----------------------------------------------------------------------------


def _tiny_config(monkeypatch, **eval_kw):
  monkeypatch.setitem(tasks.TASKS, 'ddd', ddd)  # the lead registers ddd with its data wiring
  c = config_lib.base_config('ddd')
  c.model.arch, c.model.head_conv = 'resnet_tiny', 8
  c = tasks.resolve_config(c, 3)
  c.eval.K = 10
  for k, v in eval_kw.items():
    c.eval[k] = v
  return c


def test_results_then_evaluate_feed_the_kitti_benchmark(monkeypatch, tmp_path):
  config = _tiny_config(monkeypatch, peak_thresh=0.25)
  rng = np.random.default_rng(5)
  dets = _batch_dets(rng, 1, 8)
  dets['scores'][0, 1] = 0.25  # exactly the threshold: dropped
  one = {k: v[0] for k, v in dets.items()}
  results = ddd.coco_results(one, 7, [11, 12, 13], config)
  keep = one['scores'] > 0.25
  assert len(results) == keep.sum()
  assert [r['category_id'] for r in results] == [11 + int(c) for c in one['classes'][keep]]
  assert [r['type'] for r in results] == [ddd.CLASS_NAMES[c] for c in one['classes'][keep]]
  seen = {}

  def fake_evaluate_kitti(gt, dets, min_overlaps, min_height_scale):
    seen['gt'], seen['dets'], seen['overlaps'] = gt, dets, min_overlaps
    seen['height_scale'] = min_height_scale
    return {'3d_AP_Car_moderate': 0.5}

  fake = types.ModuleType('centernet_jax.evaluation.kitti')
  fake.evaluate_kitti = fake_evaluate_kitti
  fake.MIN_OVERLAPS, fake.CENTERNET_MIN_OVERLAPS = 'devkit table', 'centernet table'
  monkeypatch.setitem(sys.modules, 'centernet_jax.evaluation.kitti', fake)
  import centernet_jax.evaluation as evaluation_pkg
  monkeypatch.setattr(evaluation_pkg, 'kitti', fake, raising=False)
  gt = {7: {'calib': KITTI_P2, 'objects': [{'type': 'Car'}]}, 8: {'calib': KITTI_P2,
                                                                  'objects': []}}
  metrics = ddd.evaluate(gt, results, [7, 8], config, log=None)
  assert metrics == {'3d_AP_Car_moderate': 0.5} and seen['overlaps'] == 'devkit table'
  config.eval.kitti_overlaps = 'centernet'
  ddd.evaluate(gt, results, [7, 8], config, log=None)
  assert seen['overlaps'] == 'centernet table' and seen['height_scale'] == 1.0
  config.eval.kitti_min_height_scale = 0.5
  ddd.evaluate(gt, results, [7, 8], config, log=None)
  assert seen['height_scale'] == 0.5
  config.eval.kitti_overlaps = 'official'
  with pytest.raises(ValueError, match='config.eval.kitti_overlaps'):
    ddd.evaluate(gt, results, [7, 8], config, log=None)
  config.eval.kitti_overlaps = 'devkit'
  assert seen['gt'] == {7: [{'type': 'Car'}], 8: []} and seen['dets'][8] == []
  want = ddd.ddd_post_process(dets, KITTI_P2[None], peak_thresh=0.25)[0]
  objs = seen['dets'][7]
  assert [o['type'] for o in objs] == [ddd.CLASS_NAMES[c] for c in want['classes']]
  for j, o in enumerate(objs):
    assert o['truncated'] == 0.0 and o['occluded'] == 0
    for key, field in (('locations', 'location'), ('dims', 'dimensions'), ('boxes', 'bbox')):
      np.testing.assert_allclose(o[field], np.round(want[key][j], 2), atol=0.0101)
    assert o['rotation_y'] == pytest.approx(round(float(want['rotation_y'][j]), 2), abs=0.0101)
    numbers = [o['alpha'], o['score'], o['rotation_y'], *o['bbox'], *o['dimensions'],
               *o['location']]
    assert numbers == [round(v, 2) for v in numbers]  # official result files: 2 decimals
  with pytest.raises(ValueError, match=r'image ids \[9\]'):
    ddd.evaluate(gt, results, [7, 9], config, log=None)
  paths = ddd.write_results(gt, results, [7, 8], config, str(tmp_path / 'kitti'))
  assert [p.rsplit('/', 1)[1] for p in paths] == ['000007.txt', '000008.txt']
  assert kitti_data.read_label_file(paths[0]) == objs
  assert kitti_data.read_label_file(paths[1]) == []


# --- Binding to a config --------------------------------------------------------------------


def test_heads_follow_the_switches(monkeypatch):
  assert ddd.heads(3) == (('hm', 3), ('dep', 1), ('rot', 8), ('dim', 3), ('wh', 2), ('reg', 2))
  config = _tiny_config(monkeypatch)
  config.loss.reg_bbox = False
  assert dict(ddd.heads(3, config)) == {'hm': 3, 'dep': 1, 'rot': 8, 'dim': 3, 'reg': 2}
  config.loss.reg_offset = False
  assert dict(ddd.heads(3, config)) == {'hm': 3, 'dep': 1, 'rot': 8, 'dim': 3}


def _tiny_training(config):
  """(model, tx, schedule, initial state, a batch of 2 images 32 x 64 with 3 slots)."""
  model = models.build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=2, steps_per_epoch=1,
                                      total_steps=1)
  st = init_state(model, tx, jax.random.PRNGKey(0), (1, 32, 64, 3))
  rng = np.random.default_rng(0)
  boxes = np.array([[[8, 4, 40, 28], [30, 2, 60, 30], [0, 0, 0, 0]]] * 2, np.float32)
  batch = {'image': rng.normal(size=(2, 32, 64, 3)).astype(np.float32), 'boxes': boxes,
           'labels': np.array([[1, -1, 0]] * 2, np.int32),
           'mask': np.array([[1, 1, 0]] * 2, np.float32),
           'depth': np.full((2, 3), 12.0, np.float32), 'dims': np.ones((2, 3, 3), np.float32),
           'alpha': np.full((2, 3), 0.4, np.float32), 'aug': np.array([0, 1], np.int32)}
  return model, tx, schedule, st, batch


def test_train_step_and_predict_on_a_tiny_model(monkeypatch):
  config = _tiny_config(monkeypatch)
  model, tx, schedule, st, batch = _tiny_training(config)
  step = jax.jit(ddd.make_train_step(config, model, tx, schedule))
  st, metrics = step(st, batch)
  for k in ('loss', 'hm_loss', 'dep_loss', 'dim_loss', 'rot_loss', 'wh_loss', 'off_loss'):
    assert np.isfinite(float(metrics[k])) and float(metrics[k]) > 0, k
  assert float(metrics['num_objects']) == 2
  with pytest.raises(ValueError, match="'aug'"):
    ddd.make_train_step(config, model, tx, schedule)(
        st, {k: v for k, v in batch.items() if k != 'aug'})
  variables = {'params': st.params, 'batch_stats': st.batch_stats}
  dets = jax.jit(ddd.make_predict_fn(config, model))(variables, batch['image'])
  shapes = {k: v.shape for k, v in dets.items()}
  assert shapes == {'centers': (2, 10, 2), 'boxes': (2, 10, 4), 'wh': (2, 10, 2),
                    'scores': (2, 10), 'classes': (2, 10), 'rot': (2, 10, 8), 'depth': (2, 10),
                    'dims': (2, 10, 3)}
  assert np.all(np.asarray(dets['depth']) > 0)
  with pytest.raises(ValueError, match='flip_test'):
    ddd.make_predict_fn(_tiny_config(monkeypatch, flip_test=True), model)
  with pytest.raises(ValueError, match='test_scales'):
    ddd.make_merge(config)


@pytest.mark.parametrize('amodal', [False, True])
def test_targets_then_decode_recover_the_3d_boxes(amodal):
  """Perfect head outputs built from the targets decode back to each object's 3D box. The
  official decoding unprojects the 2D box centre, which is not where the 3D centre projects:
  its location is off by up to 0.2 m; with the amodel_offset head (not official) it is exact."""
  p2 = KITTI_P2 / np.float32([[8], [8], [1]])  # a 1242 / 8 wide image: output map 39 x 12 (x4)
  dims = np.array([[1.5, 1.6, 3.9], [1.8, 0.6, 0.8]], np.float32)
  loc = np.array([[-3.0, 1.65, 14.0], [2.0, 1.65, 9.0]], np.float32)
  rot_y = np.array([0.7, -2.6], np.float32)
  uv = kitti_data.project(kitti_data.box3d_corners(dims, loc, rot_y), p2)
  boxes = np.concatenate([uv.min(1), uv.max(1)], -1)[None] / 4  # output-map pixels
  middle = loc - np.stack([np.zeros(2), dims[:, 0] / 2, np.zeros(2)], -1)
  center3d = (kitti_data.project(middle, p2) / 4).astype(np.float32)[None] if amodal else None
  alpha = np.asarray(kitti_data.alpha_from_rotation_y(rot_y, loc), np.float32)
  args = (boxes, np.array([[1, 0]], np.int32), np.ones((1, 2)), loc[None, :, 2], dims[None],
          alpha[None], np.zeros(1))
  h, w = 12, 40
  t = jax.tree.map(np.asarray, ddd.ddd_targets(*(jnp.asarray(a) for a in args), num_classes=3,
                                               output_hw=(h, w), center3d=center3d))
  maps = {n: np.zeros((1, h * w, ch), np.float32)
          for n, ch in (('rot', 8), ('dep', 1), ('dim', 3), ('wh', 2), ('reg', 2), ('am', 2))}
  for k, i in enumerate(t['ind'][0]):
    b1, b2 = t['rotbin'][0, k]
    r1, r2 = t['rotres'][0, k]
    maps['rot'][0, i] = [0, 4 * b1, np.sin(r1), np.cos(r1), 0, 4 * b2, np.sin(r2), np.cos(r2)]
    maps['dep'][0, i], maps['dim'][0, i] = t['dep'][0, k], t['dim'][0, k]
    maps['wh'][0, i], maps['reg'][0, i] = t['wh'][0, k], t['reg'][0, k]
    if amodal:
      maps['am'][0, i] = t['amodel_offset'][0, k]
  maps = {n: v.reshape(1, h, w, -1) for n, v in maps.items()}
  dets = jax.tree.map(np.asarray, ddd.ddd_decode(
      t['hm'], maps['rot'], maps['dep'], maps['dim'], maps['wh'], maps['reg'], K=2,
      amodel_offset=maps['am'] if amodal else None))
  assert ('centers3d' in dets) == amodal
  for key in ('centers', 'boxes', 'wh', 'centers3d'):  # output map -> image (stride 4)
    if key in dets:
      dets[key] = dets[key] * 4
  objs = ddd.ddd_post_process(dets, p2[None], peak_thresh=0.5)[0]
  order = np.argsort(objs['classes'])[::-1]  # Car (1) first, as in the inputs
  np.testing.assert_allclose(objs['boxes'][order], boxes[0] * 4, atol=1e-3)
  np.testing.assert_allclose(np.cos(objs['alpha'][order] - alpha), 1, atol=1e-5)
  np.testing.assert_allclose(objs['dims'][order], dims, atol=1e-6)
  # exact with the 3D centre, up to P2's own translation along z (location z = depth - P2[2,3])
  np.testing.assert_allclose(objs['locations'][order], loc, atol=0.01 if amodal else 0.2)
  if not amodal:
    assert np.abs(objs['locations'][order] - loc).max() > 0.05  # the approximation is real
  d_rot = np.angle(np.exp(1j * (objs['rotation_y'][order] - rot_y)))
  np.testing.assert_array_less(np.abs(d_rot), 0.02)


def test_module_follows_the_task_contract(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, 'ddd', ddd)
  registry_test.test_task_module_has_the_contract_names('ddd')
  registry_test.test_heads_and_config_keys('ddd')


def test_perfect_detections_score_one_on_the_kitti_benchmark(monkeypatch):
  """Through the real evaluation: the ground truth is the detections' own 3D stage.

  41 or more objects of a class: the devkit samples recall from the true positives' scores, so
  fewer cannot reach AP|R40 = 1 even when perfect.
  """
  config = _tiny_config(monkeypatch, peak_thresh=0.0)
  dets = _batch_dets(np.random.default_rng(7), 3, 30)
  dets['classes'][:] = np.array([1, 2])[np.arange(30) % 2]  # 45 Cars, 45 Cyclists
  dets['wh'][..., 1] = 60  # every box tall enough for the easy difficulty
  dets['boxes'] = np.concatenate([dets['centers'] - dets['wh'] / 2,
                                  dets['centers'] + dets['wh'] / 2], -1)
  results = [r for i in range(3)
             for r in ddd.coco_results({k: v[i] for k, v in dets.items()}, i, [1, 2, 3], config)]
  gt = {i: {'calib': KITTI_P2, 'objects': [
      {k: v for k, v in o.items() if k != 'score'}
      for o in ddd.results_to_kitti([r for r in results if r['image_id'] == i], KITTI_P2)]}
      for i in range(3)}
  metrics = ddd.evaluate(gt, results, [0, 1, 2], config, log=None)
  present = {ddd.CLASS_NAMES[c] for c in dets['classes'].ravel()}
  for name in ddd.CLASS_NAMES:
    for metric in ('2d', 'aos', 'bev', '3d'):
      value = metrics[f'{metric}_AP_{name}_easy']
      assert value == (pytest.approx(1.0) if name in present else -1), (metric, name)


def test_metrics_table_lists_each_metric_and_class_by_difficulty():
  m = {f'{a}_AP_{c}_{d}': 0.25 for a in ('2d', 'aos', 'bev', '3d') for c in ddd.CLASS_NAMES
       for d in ('easy', 'moderate', 'hard')}
  m['3d_AP_Car_moderate'] = 0.5
  m['bev_AP_Cyclist_hard'] = -1.0
  rows = ddd.metrics_table(m).splitlines()
  assert len(rows) == 1 + 4 * 3 and rows[0].split() == ['KITTI', 'AP|R40', 'easy', 'moderate',
                                                        'hard']
  assert rows[-2].split() == ['3D', 'Car', '0.2500', '0.5000', '0.2500']
  assert rows[9].split() == ['BEV', 'Cyclist', '0.2500', '0.2500', '-1.0000']
  assert len(ddd.metrics_table({'2d_AP_Car_easy': 1.0}).splitlines()) == 2


# --- The projected-3D-centre offset (loss.amodel_offset, not official) ----------------------


@pytest.mark.parametrize('seed, b, m, out_h, out_w', [(0, 1, 3, 8, 12), (1, 3, 10, 10, 32)])
def test_amodel_offset_target_is_the_3d_centre_from_the_peak_pixel(seed, b, m, out_h, out_w):
  """Oracle: at each positive slot, center3d - (ind % w, ind // w); 0 elsewhere; the other
  targets are the official ones whether it is given or not."""
  rng = np.random.default_rng(seed)
  args = _random_objects(rng, b, m, out_h, out_w)
  center3d = rng.uniform(-3, [out_w + 3, out_h + 3], (b, m, 2)).astype(np.float32)
  got = jax.tree.map(np.asarray, jax.jit(
      ddd.ddd_targets, static_argnames=('num_classes', 'output_hw'))(
          *(jnp.asarray(a) for a in args), num_classes=3, output_hw=(out_h, out_w),
          center3d=jnp.asarray(center3d)))
  want = _targets_oracle(*args, 3, out_h, out_w)
  for key, w in want.items():
    np.testing.assert_allclose(got[key], w, rtol=1e-6, atol=1e-6, err_msg=key)
  peak = np.stack([want['ind'] % out_w, want['ind'] // out_w], -1).astype(np.float32)
  positive = want['rot_mask'][..., None] > 0
  np.testing.assert_allclose(got['amodel_offset'], np.where(positive, center3d - peak, 0),
                             atol=1e-5)


@pytest.mark.parametrize('seed, num_stacks', [(0, 1), (1, 2)])
def test_amodel_loss_is_the_l1_of_the_offset_and_joins_the_total(seed, num_stacks):
  rng = np.random.default_rng(seed)
  b, m, c, h, w = 2, 6, 3, 8, 10
  args = _random_objects(rng, b, m, h, w)
  tgt = _targets_oracle(*args, c, h, w)
  tgt['amodel_offset'] = rng.normal(0, 2, (b, m, 2)).astype(np.float32) * (
      tgt['rot_mask'][..., None])
  chans = {'hm': c, 'dep': 1, 'rot': 8, 'dim': 3, 'wh': 2, 'reg': 2, 'amodel_offset': 2}
  outs = [{k: rng.normal(0, 2, (b, h, w, ch)).astype(np.float32) for k, ch in chans.items()}
          for _ in range(num_stacks)]
  loss = jax.jit(functools.partial(ddd.ddd_loss, amodel_offset_weight=0.6))
  total, parts = loss(outs, tgt)
  want = sum(_l1_oracle(o['amodel_offset'], tgt['ind'], tgt['rot_mask'], tgt['amodel_offset'])
             for o in outs) / num_stacks
  assert float(parts['amodel_loss']) == pytest.approx(want, rel=1e-4)
  official, official_parts = loss([{k: v for k, v in o.items() if k != 'amodel_offset'}
                                   for o in outs], tgt)
  assert 'amodel_loss' not in official_parts
  assert float(total) == pytest.approx(float(official) + 0.6 * want, rel=1e-5)


def test_decode_puts_centers3d_at_the_peak_pixel_plus_the_offset():
  rng = np.random.default_rng(3)
  b, h, w, c, k = 2, 6, 9, 3, 7
  hm = rng.uniform(size=(b, h, w, c)).astype(np.float32)
  maps = {n: rng.normal(size=(b, h, w, ch)).astype(np.float32)
          for n, ch in (('rot', 8), ('dep', 1), ('dim', 3), ('wh', 2), ('reg', 2), ('am', 2))}
  decode = jax.jit(ddd.ddd_decode, static_argnames='K')
  got = jax.tree.map(np.asarray, decode(hm, maps['rot'], maps['dep'], maps['dim'], maps['wh'],
                                        maps['reg'], K=k, amodel_offset=maps['am']))
  plain = jax.tree.map(np.asarray, decode(hm, maps['rot'], maps['dep'], maps['dim'],
                                          maps['wh'], maps['reg'], K=k))
  assert set(got) == set(plain) | {'centers3d'}
  for key in plain:
    np.testing.assert_array_equal(got[key], plain[key])
  peaks = _peaks_oracle(hm).reshape(b, -1)
  for i in range(b):
    ind = np.argsort(-peaks[i], kind='stable')[:k] // c
    peak = np.stack([ind % w, ind // w], -1).astype(np.float32)
    np.testing.assert_allclose(got['centers3d'][i],
                               peak + maps['am'][i].reshape(h * w, 2)[ind], rtol=1e-6)


def _amodal_config():
  c = config_lib.base_config('ddd')
  c.model.arch, c.model.head_conv = 'resnet_tiny', 8
  c.loss.amodel_offset = True
  c = tasks.resolve_config(c, 3)
  c.eval.K = 10
  return c


def test_amodel_offset_head_trains_and_predicts(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, 'ddd', ddd)
  config = _amodal_config()
  assert ddd.heads(3, config)[-1] == ('amodel_offset', 2)
  assert dict(config.model.heads)['amodel_offset'] == 2
  model, tx, schedule, st, batch = _tiny_training(config)
  batch['center3d'] = np.full((2, 3, 2), 20.0, np.float32)
  step = jax.jit(ddd.make_train_step(config, model, tx, schedule))
  st, metrics = step(st, batch)
  assert np.isfinite(float(metrics['amodel_loss'])) and float(metrics['amodel_loss']) > 0
  with pytest.raises(ValueError, match='amodel_offset needs the batch key center3d'):
    ddd.make_train_step(config, model, tx, schedule)(
        st, {k: v for k, v in batch.items() if k != 'center3d'})
  variables = {'params': st.params, 'batch_stats': st.batch_stats}
  dets = jax.jit(ddd.make_predict_fn(config, model))(variables, batch['image'])
  assert dets['centers3d'].shape == (2, 10, 2)

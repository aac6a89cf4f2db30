"""multi_pose (human pose): targets, loss, decoding and flip merge against numpy oracles written
from the official sample, loss and decode code (docs/parity.md 4.12), plus the train step and the
predict function on a tiny model."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import config_lib, models, optim, tasks
from centernet_jax.state import init_state
from centernet_jax.tasks import multi_pose
from tests.decode_test import _peaks_oracle
from tests.gaussian_test import _radius_oracle
from tests.losses_test import _focal_oracle, _random_heatmap, _random_logits
from tests.tasks.ctdet_test import _draw_oracle


def _targets_oracle(boxes, labels, mask, kps, num_classes, out_h, out_w):
  """The official multi_pose sample loop, in output-map coordinates (one person at a time)."""
  b, m, j = kps.shape[:3]
  t = {'hm': np.zeros((b, num_classes, out_h, out_w), np.float32),
       'hm_hp': np.zeros((b, j, out_h, out_w), np.float32),
       'ind': np.zeros((b, m), np.int64), 'wh': np.zeros((b, m, 2), np.float32),
       'reg': np.zeros((b, m, 2), np.float32), 'reg_mask': np.zeros((b, m), np.float32),
       'hps': np.zeros((b, m, 2 * j), np.float32), 'hps_mask': np.zeros((b, m, 2 * j)),
       'hp_offset': np.zeros((b, m * j, 2), np.float32), 'hp_ind': np.zeros((b, m * j)),
       'hp_mask': np.zeros((b, m * j))}
  for i in range(b):
    for k in range(m):
      if not mask[i, k]:
        continue
      bbox = boxes[i, k].astype(np.float32).copy()
      bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
      bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
      h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
      if not (h > 0 and w > 0):
        continue
      radius = max(0, int(_radius_oracle(math.ceil(h), math.ceil(w))))
      ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
      ct_int = ct.astype(np.int32)
      t['wh'][i, k] = w, h
      t['ind'][i, k] = ct_int[1] * out_w + ct_int[0]
      t['reg'][i, k] = ct - ct_int
      t['reg_mask'][i, k] = 1
      pts = kps[i, k].copy()
      if pts[:, 2].sum() == 0:
        t['hm'][i, labels[i, k], ct_int[1], ct_int[0]] = 0.9999
        t['reg_mask'][i, k] = 0
      for jj in range(j):
        if pts[jj, 2] > 0:
          x, y = pts[jj, :2]
          if 0 <= x < out_w and 0 <= y < out_h:
            t['hps'][i, k, 2 * jj:2 * jj + 2] = pts[jj, :2] - ct_int
            t['hps_mask'][i, k, 2 * jj:2 * jj + 2] = 1
            pt_int = pts[jj, :2].astype(np.int32)
            t['hp_offset'][i, k * j + jj] = pts[jj, :2] - pt_int
            t['hp_ind'][i, k * j + jj] = pt_int[1] * out_w + pt_int[0]
            t['hp_mask'][i, k * j + jj] = 1
            _draw_oracle(t['hm_hp'][i, jj], pt_int, radius)
      _draw_oracle(t['hm'][i, labels[i, k]], ct_int, radius)
  t['hm'] = t['hm'].transpose(0, 2, 3, 1)
  t['hm_hp'] = t['hm_hp'].transpose(0, 2, 3, 1)
  return t


def _random_people(rng, b, m, j, c, out_h, out_w):
  xy = rng.uniform(-3, [out_w, out_h], (b, m, 2))
  size = rng.uniform(1.0, 0.7 * max(out_h, out_w), (b, m, 2))
  boxes = np.concatenate([xy, xy + size], axis=-1).astype(np.float32)
  labels = rng.integers(0, c, (b, m)).astype(np.int32)
  mask = rng.uniform(size=(b, m)) < 0.85
  mask[:, 0] = True
  pts = boxes[:, :, None, :2] + rng.uniform(-0.2, 1.2, (b, m, j, 2)) * size[:, :, None]
  vis = rng.choice([0.0, 1.0, 2.0], (b, m, j), p=[0.3, 0.2, 0.5])
  if m > 1:
    vis[:, 1] = 0  # a person without labelled joints: heatmap positive, no reg_mask
  kps = np.concatenate([pts, vis[..., None]], axis=-1).astype(np.float32)
  kps[vis == 0, :2] = np.nan  # unlabelled joints may hold anything: nothing may leak
  return boxes, labels, mask, kps


@pytest.mark.parametrize('seed, b, m, j, c, out_h, out_w', [
    (0, 1, 1, 3, 1, 16, 16),
    (1, 2, 4, 5, 2, 16, 24),
    (2, 2, 6, 17, 1, 24, 20),
])
def test_targets_match_the_official_loop(seed, b, m, j, c, out_h, out_w):
  rng = np.random.default_rng(seed)
  boxes, labels, mask, kps = _random_people(rng, b, m, j, c, out_h, out_w)
  want = _targets_oracle(boxes, labels, mask, np.nan_to_num(kps), c, out_h, out_w)
  fn = jax.jit(functools.partial(multi_pose.multi_pose_targets, num_classes=c,
                                 output_hw=(out_h, out_w), objects_per_chunk=7))
  got = {k: np.asarray(v) for k, v in fn(boxes, labels, mask, kps).items()}
  for key, value in want.items():
    assert np.all(np.isfinite(got[key])), key
    np.testing.assert_allclose(got[key], value, atol=2e-6, rtol=0, err_msg=key)
  np.testing.assert_array_equal(got['hm_hp'] == 1, want['hm_hp'] == 1)
  np.testing.assert_array_equal(got['hm'] == 1, want['hm'] == 1)


def _weighted_l1_oracle(pred, ind, mask, target):
  b, h, w, d = pred.shape
  total = denom = 0.0
  for i in range(b):
    for k in range(ind.shape[1]):
      y, x = divmod(int(ind[i, k]), w)
      for ch in range(d):
        mm = float(mask[i, k, ch])
        total += abs(float(pred[i, y, x, ch]) * mm - float(target[i, k, ch]) * mm)
        denom += mm
  return total / (denom + 1e-4)


@pytest.mark.parametrize('seed, num_stacks, drop', [(0, 1, ()), (1, 2, ()),
                                                    (2, 1, ('hm_hp', 'hp_offset', 'reg'))])
def test_loss_matches_oracle(seed, num_stacks, drop):
  rng = np.random.default_rng(seed)
  b, h, w, j, m = 2, 8, 8, 3, 4
  t = {'hm': _random_heatmap(rng, (b, h, w, 1), 3),
       'hm_hp': _random_heatmap(rng, (b, h, w, j), 5),
       'ind': rng.integers(0, h * w, (b, m)), 'reg_mask': (rng.uniform(size=(b, m)) < .7) * 1.0,
       'wh': rng.normal(size=(b, m, 2)), 'reg': rng.uniform(size=(b, m, 2)),
       'hps': rng.normal(size=(b, m, 2 * j)), 'hps_mask': (rng.uniform(size=(b, m, 2 * j)) < .5)
       * 1.0, 'hp_ind': rng.integers(0, h * w, (b, m * j)),
       'hp_offset': rng.uniform(size=(b, m * j, 2)), 'hp_mask': (rng.uniform(size=(b, m * j))
                                                                  < .6) * 1.0}
  t = {k: np.asarray(v, np.float32 if v.dtype.kind == 'f' else np.int32) for k, v in t.items()}
  chans = dict(multi_pose.heads(1, None))
  chans.update(hps=2 * j, hm_hp=j)
  outs = [{k: (_random_logits(rng, (b, h, w, ch)) if 'hm' in k
               else rng.normal(size=(b, h, w, ch)).astype(np.float32))
           for k, ch in chans.items() if k not in drop} for _ in range(num_stacks)]
  weights = dict(hm_weight=1.0, wh_weight=0.1, off_weight=0.7, hp_weight=1.3, hm_hp_weight=0.9)
  total, parts = multi_pose.multi_pose_loss(outs, t, **weights)
  from tests.losses_test import _reg_l1_oracle
  want = dict(hm_loss=0.0, hp_loss=0.0, hm_hp_loss=0.0, hp_offset_loss=0.0, wh_loss=0.0,
              off_loss=0.0)
  for o in outs:
    want['hm_loss'] += _focal_oracle(o['hm'], t['hm']) / num_stacks
    want['hp_loss'] += _weighted_l1_oracle(o['hps'], t['ind'], t['hps_mask'], t['hps']) / num_stacks
    want['wh_loss'] += _reg_l1_oracle(o['wh'], t['ind'], t['reg_mask'], t['wh']) / num_stacks
    if 'reg' in o:
      want['off_loss'] += _reg_l1_oracle(o['reg'], t['ind'], t['reg_mask'], t['reg']) / num_stacks
    if 'hp_offset' in o:
      want['hp_offset_loss'] += _reg_l1_oracle(o['hp_offset'], t['hp_ind'], t['hp_mask'],
                                               t['hp_offset']) / num_stacks
    if 'hm_hp' in o:
      want['hm_hp_loss'] += _focal_oracle(o['hm_hp'], t['hm_hp']) / num_stacks
  for k, v in want.items():
    np.testing.assert_allclose(float(parts[k]), v, rtol=2e-5, atol=1e-6, err_msg=k)
  want_total = (want['hm_loss'] + 0.1 * want['wh_loss'] + 0.7 * want['off_loss']
                + 1.3 * want['hp_loss'] + 0.9 * want['hm_hp_loss'] + 0.7 * want['hp_offset_loss'])
  np.testing.assert_allclose(float(total), want_total, rtol=2e-5)


def _decode_oracle(hm, wh, hps, reg, hm_hp, hp_off, k, thresh=0.1, ratio=0.3):
  """Official multi_pose_decode, one person and one joint at a time."""
  b, h, w, c = hm.shape
  j = hps.shape[-1] // 2
  heat = _peaks_oracle(hm)
  heat_hp = _peaks_oracle(hm_hp) if hm_hp is not None else None
  out_boxes = np.zeros((b, k, 4))
  out_kps = np.zeros((b, k, j, 2))
  for i in range(b):
    entries = sorted(((heat[i, y, x, cl], y, x) for y in range(h) for x in range(w)
                      for cl in range(c)), key=lambda e: -e[0])[:k]
    cands = []
    if hm_hp is not None:
      for jj in range(j):
        e = sorted(((heat_hp[i, y, x, jj], y, x) for y in range(h) for x in range(w)),
                   key=lambda e: -e[0])[:min(k, h * w)]
        pts = []
        for s, y, x in e:
          off = hp_off[i, y, x] if hp_off is not None else (0.5, 0.5)
          pts.append((s, x + off[0], y + off[1]) if s > thresh else (-1.0, -10000.0, -10000.0))
        cands.append(pts)
    for n, (_, y, x) in enumerate(entries):
      off = reg[i, y, x] if reg is not None else (0.5, 0.5)
      cx, cy = x + off[0], y + off[1]
      bw, bh = wh[i, y, x]
      box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
      out_boxes[i, n] = box
      for jj in range(j):
        kx, ky = x + hps[i, y, x, 2 * jj], y + hps[i, y, x, 2 * jj + 1]
        out_kps[i, n, jj] = kx, ky
        if hm_hp is None:
          continue
        dists = [math.hypot(kx - px, ky - py) for _, px, py in cands[jj]]
        best = int(np.argmin(dists))
        s, px, py = cands[jj][best]
        if (box[0] <= px <= box[2] and box[1] <= py <= box[3] and s >= thresh
                and dists[best] <= max(box[3] - box[1], box[2] - box[0]) * ratio):
          out_kps[i, n, jj] = px, py
  return out_boxes, out_kps


def _peaky(rng, shape, n):
  """Probabilities with a few well separated peaks (no ties)."""
  x = rng.uniform(0, 0.2, shape)
  flat = x.reshape(-1)
  flat[rng.choice(flat.size, n, replace=False)] = rng.uniform(0.3, 1.0, n)
  return x.astype(np.float32)


@pytest.mark.parametrize('seed, shape, j, k, parts', [
    (0, (1, 10, 10, 1), 3, 5, ('reg', 'hm_hp', 'hp_offset')),
    (1, (2, 12, 9, 2), 4, 8, ('reg', 'hm_hp')),
    (2, (1, 8, 8, 1), 2, 4, ()),
    (3, (1, 6, 6, 1), 2, 40, ('hm_hp', 'hp_offset')),  # K > h * w candidates per joint
])
def test_decode_matches_oracle(seed, shape, j, k, parts):
  rng = np.random.default_rng(seed)
  b, h, w, _ = shape
  hm = _peaky(rng, shape, 6)
  wh = rng.uniform(2, 8, (b, h, w, 2)).astype(np.float32)
  hps = rng.normal(0, 2, (b, h, w, 2 * j)).astype(np.float32)
  reg = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32) if 'reg' in parts else None
  hm_hp = _peaky(rng, (b, h, w, j), 3 * j) if 'hm_hp' in parts else None
  hp_off = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32) if 'hp_offset' in parts else None
  k = min(k, h * w * shape[3])
  got = multi_pose.multi_pose_decode(hm, wh, hps, reg, hm_hp, hp_off, K=k)
  want_boxes, want_kps = _decode_oracle(hm, wh, hps, reg, hm_hp, hp_off, k)
  np.testing.assert_allclose(np.asarray(got['boxes']), want_boxes, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got['keypoints']), want_kps, atol=1e-5)
  snapped = np.asarray(got['keypoint_scores']) > 0
  if hm_hp is not None:
    assert snapped.any()
  else:
    assert not snapped.any()


def test_targets_then_decode_recover_the_joints():
  """Perfect heads rendered from the targets decode back to the people and their joints."""
  rng = np.random.default_rng(5)
  out_h = out_w = 32
  j = 5
  boxes = np.array([[[2.2, 3.1, 14.7, 20.3], [17.4, 6.8, 29.9, 28.1]]], np.float32)
  pts = boxes[:, :, None, :2] + rng.uniform(0.1, 0.9, (1, 2, j, 2)) * (
      boxes[:, :, None, 2:] - boxes[:, :, None, :2])
  kps = np.concatenate([pts, np.full((1, 2, j, 1), 2.0)], -1).astype(np.float32)
  t = multi_pose.multi_pose_targets(boxes, np.zeros((1, 2), np.int32), np.ones((1, 2)), kps,
                                    num_classes=1, output_hw=(out_h, out_w))
  dense = lambda vals, ind, d: np.asarray(jnp.zeros((out_h * out_w, d)).at[
      np.asarray(ind[0])].set(np.asarray(vals[0])).reshape(1, out_h, out_w, d))
  dets = multi_pose.multi_pose_decode(
      t['hm'], dense(t['wh'], t['ind'], 2), dense(t['hps'], t['ind'], 2 * j),
      dense(t['reg'], t['ind'], 2), t['hm_hp'], dense(t['hp_offset'], t['hp_ind'], 2), K=2)
  order = np.argsort(np.asarray(dets['boxes'])[0, :, 0])
  np.testing.assert_allclose(np.asarray(dets['boxes'])[0, order], boxes[0], atol=1e-4)
  np.testing.assert_allclose(np.asarray(dets['keypoints'])[0, order], pts[0], atol=1e-4)


def _flip_oracle(x, perm, kind):
  b = x.shape[0] // 2
  a, m = x[:b], x[b:, :, ::-1].copy()
  if kind == 'hm_hp':
    m = m[..., perm]
  elif kind == 'hps':
    m = m.reshape(m.shape[:3] + (-1, 2))
    m[..., 0] *= -1
    m = m[..., perm, :].reshape(a.shape)
  return (a + m) / 2


@pytest.mark.parametrize('seed', [0, 1])
def test_merge_flip_matches_oracle(seed):
  rng = np.random.default_rng(seed)
  j = 5
  perm = multi_pose.flip_permutation(j, ((1, 2), (3, 4)))
  np.testing.assert_array_equal(perm, [0, 2, 1, 4, 3])
  shapes = {'hm': 1, 'wh': 2, 'hps': 2 * j, 'reg': 2, 'hm_hp': j, 'hp_offset': 2}
  outs = {k: rng.normal(size=(4, 6, 7, c)).astype(np.float32) for k, c in shapes.items()}
  got = multi_pose.merge_flip(outs, perm)
  for key in ('hm', 'wh'):
    np.testing.assert_allclose(got[key], _flip_oracle(outs[key], perm, 'plain'), atol=1e-6)
  for key in ('hps', 'hm_hp'):
    np.testing.assert_allclose(got[key], _flip_oracle(outs[key], perm, key), atol=1e-6)
  for key in ('reg', 'hp_offset'):
    np.testing.assert_array_equal(got[key], outs[key][:2])


@pytest.mark.parametrize('pairs', [((0, 0),), ((1, 2), (2, 3)), ((0, 5),)])
def test_bad_flip_pairs_name_the_config_key(pairs):
  with pytest.raises(ValueError, match='config.data.flip_pairs'):
    multi_pose.flip_permutation(5, pairs)


def _tiny_config(**eval_kw):
  c = config_lib.base_config('multi_pose')
  c.model.arch, c.model.head_conv = 'resnet_tiny', 8
  c.data.num_joints = 5
  c.data.flip_pairs = ((1, 2), (3, 4))
  c = tasks.resolve_config(c, 1)
  c.eval.K = 10
  for k, v in eval_kw.items():
    c.eval[k] = v
  return c


def test_heads_follow_num_joints():
  assert dict(_tiny_config().model.heads) == {'hm': 1, 'wh': 2, 'hps': 10, 'reg': 2,
                                               'hm_hp': 5, 'hp_offset': 2}


def test_train_step_and_predict_on_a_tiny_model():
  config = _tiny_config()
  model = models.build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=2, steps_per_epoch=1,
                                      total_steps=1)
  st = init_state(model, tx, jax.random.PRNGKey(0), (1, 64, 64, 3))
  rng = np.random.default_rng(0)
  boxes = np.array([[[8, 8, 40, 56], [30, 10, 60, 50]]] * 2, np.float32)
  pts = boxes[:, :, None, :2] + rng.uniform(0, 1, (2, 2, 5, 2)) * (boxes[:, :, None, 2:]
                                                                   - boxes[:, :, None, :2])
  kps = np.concatenate([pts, np.full((2, 2, 5, 1), 2.0)], -1).astype(np.float32)
  batch = {'image': rng.normal(size=(2, 64, 64, 3)).astype(np.float32), 'boxes': boxes,
           'labels': np.zeros((2, 2), np.int32), 'mask': np.ones((2, 2), np.float32),
           'keypoints': kps}
  step = jax.jit(multi_pose.make_train_step(config, model, tx, schedule))
  st, metrics = step(st, batch)
  for k in ('loss', 'hm_loss', 'hp_loss', 'hm_hp_loss', 'hp_offset_loss', 'wh_loss', 'off_loss'):
    assert np.isfinite(float(metrics[k])), k
  assert float(metrics['num_objects']) == 4
  variables = {'params': st.params, 'batch_stats': st.batch_stats}
  for cfg in (config, _tiny_config(flip_test=True, nms=True)):
    dets = jax.jit(multi_pose.make_predict_fn(cfg, model))(variables, batch['image'])
    assert dets['keypoints'].shape == (2, 10, 5, 2)
    assert dets['keypoint_scores'].shape == (2, 10, 5)
    assert dets['boxes'].shape == (2, 10, 4)
    assert np.all(np.isfinite(np.asarray(dets['keypoints'])))


def test_flip_test_of_a_mirror_equivariant_output_is_the_plain_test(monkeypatch):
  """A model whose mirrored pass is exactly the mirror of the plain pass (joints swapped, x
  offsets negated) gives the plain detections under flip test."""
  config = _tiny_config()
  perm = multi_pose.flip_permutation(5, config.data.flip_pairs)
  rng = np.random.default_rng(3)
  h = w = 8
  plain = {'hm': _random_logits(rng, (1, h, w, 1)), 'wh': rng.uniform(1, 4, (1, h, w, 2)),
           'hps': rng.normal(size=(1, h, w, 10)), 'reg': rng.uniform(size=(1, h, w, 2)),
           'hm_hp': _random_logits(rng, (1, h, w, 5)), 'hp_offset': rng.uniform(size=(1, h, w, 2))}
  plain = {k: jnp.asarray(v, jnp.float32) for k, v in plain.items()}
  mirrored = dict(plain)
  mirrored['hm'] = plain['hm'][:, :, ::-1]
  mirrored['wh'] = plain['wh'][:, :, ::-1]
  mirrored['hm_hp'] = plain['hm_hp'][:, :, ::-1][..., perm]
  hp = plain['hps'][:, :, ::-1].reshape(1, h, w, 5, 2) * jnp.array([-1.0, 1.0])
  mirrored['hps'] = hp[..., perm, :].reshape(1, h, w, 10)

  class Fake:
    def apply(self, variables, images, train):
      del variables, train
      both = images.shape[0] == 2
      return [{k: jnp.concatenate([plain[k], mirrored[k]]) if both else plain[k]
               for k in plain}]

  plain_dets = multi_pose.make_predict_fn(config, Fake())({}, jnp.zeros((1, 32, 32, 3)))
  flip_dets = multi_pose.make_predict_fn(_tiny_config(flip_test=True), Fake())(
      {}, jnp.zeros((1, 32, 32, 3)))
  for key in ('boxes', 'scores', 'keypoints'):
    np.testing.assert_allclose(flip_dets[key], plain_dets[key], atol=1e-5, err_msg=key)

"""CenterNet monocular 3D detection (`ddd`, KITTI): depth, 3D size and orientation at the centre.

One module per task (registry: `tasks/__init__.py`). Official CenterNet `datasets/sample/ddd.py`
(targets), `trains/ddd.py` and `models/losses.py: BinRotLoss` (loss), `models/decode.py:
ddd_decode`, `utils/post_process.py` and `utils/ddd_utils.py` (decoding and the 3D
post-process); docs/parity.md 4.13.

Each object is the centre of its 2D box: a Gaussian peak in its class channel of `hm`, and at the
peak pixel its depth `dep` (metres, through the output transform 1 / (sigmoid + 1e-6) - 1), its
3D size `dim` (h, w, l in metres), its observation angle alpha as two overlapping bins `rot`
(8 channels: [bin 1 logit pair, sin, cos, bin 2 logit pair, sin, cos]) and optionally the 2D box
size `wh` and sub-pixel offset `reg`. The device part (targets, loss, decode) is pure jnp, here;
the 3D post-process (alpha, rotation_y, location from the calibration P2) runs in numpy on the
host (`post.py`), and `results.py` writes the results and binds the KITTI evaluation. Their
public names are this module's too: the task is `centernet_jax.tasks.ddd`.
Class channels follow the official KITTI order ``CLASS_NAMES``; label codes below 0 mark
ignored objects (``IGNORE_ALL`` DontCare, ``IGNORE_PEDESTRIAN`` Person_sitting,
``IGNORE_CAR`` Van and Truck) and ``SKIP`` (Tram, Misc) objects that only use a slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from centernet_jax import decode, gaussian, losses, models, state
from centernet_jax.data import kitti as kitti_data

# The host post-process and the results: the task protocol and callers read them here.
from centernet_jax.tasks.ddd.post import (
  alpha_from_rot,
  alpha_to_rotation_y,
  boxes_2d,
  ddd_post_process,
  locate,
  objects_3d,
  unproject,
)
from centernet_jax.tasks.ddd.results import (
  coco_results,
  evaluate,
  metrics_table,
  results_to_kitti,
  write_results,
)

NAME = 'ddd'
# Detection arrays whose last axis holds (x, y) pairs in output-map coordinates. ``wh`` is a
# size, mapped like a point only for the official 2D box (``eval.ddd_official_2d_box``).
POINT_KEYS = ('boxes', 'centers', 'wh', 'centers3d')  # centers3d: only with loss.amodel_offset
CLASS_NAMES = kitti_data.CLASS_NAMES  # official KITTI class channels 0, 1, 2
# Units of the other served outputs (export.json): a served model gives what objects_3d takes.
OUTPUT_UNITS = {
    'depth': 'metres, camera z of the object centre',
    'dims': 'h, w, l in metres',
    'rot': 'raw orientation bins (2 x [logit, logit, sin, cos]); '
           'centernet_jax.tasks.ddd.objects_3d turns them into alpha and rotation_y',
}
IGNORE_ALL, IGNORE_PEDESTRIAN, IGNORE_CAR, SKIP = -1, -2, -3, -99  # official label codes
IGNORE_PEAK = 0.9999  # official value at an ignored object's centre (never a positive)
DEPTH_EPS = 1e-6  # official depth transform 1 / (sigmoid(x) + 1e-6) - 1
# Official DddDetector's P2 for images given without a calibration (KITTI 2011_09_26).
DEFAULT_CALIB = np.array([[707.0493, 0, 604.0814, 45.75831], [0, 707.0493, 180.5066, -0.3454157],
                          [0, 0, 1., 0.004981016]], np.float32)
BATCH_KEYS = ('image', 'boxes', 'labels', 'mask', 'depth', 'dims', 'alpha', 'aug')


def add_config(c: ml_collections.ConfigDict) -> None:
  """Adds the ddd keys (official defaults, docs/parity.md 4.13) to the shared config sections."""
  c.data.max_objs = 50  # official KITTI
  c.loss.hm_weight = 1.0  # official weights: hm 1, dep 1, dim 1, rot 1, wh 0.1, off 1
  c.loss.dep_weight = 1.0
  c.loss.dim_weight = 1.0
  c.loss.rot_weight = 1.0
  c.loss.wh_weight = 0.1
  c.loss.off_weight = 1.0
  c.loss.min_overlap = 0.7  # official gaussian_radius overlap
  # 'slots' (official): the L1 terms and the rotation-bin cross-entropy are means over all
  # max_objs slots, so each object's gradient shrinks as max_objs grows; 'objects' averages over
  # the objects (as ctdet's RegL1 does).
  c.loss.ddd_norm = 'slots'
  c.loss.reg_bbox = True  # the wh head (official --not_reg_bbox turns it off)
  c.loss.reg_offset = True  # the reg head (official --not_reg_offset)
  # Not in the official CenterNet ddd (CenterTrack's ``amodel_offset``): a head regressing, at the
  # 2D box centre's peak, the offset to where the 3D box's middle projects; decoding unprojects
  # there instead of at the 2D box centre, which caps the 3D overlap of the official decoding
  # (experiments/ddd.md). False: the official heads and decoding.
  c.loss.amodel_offset = False
  c.loss.amodel_offset_weight = 1.0
  c.eval.peak_thresh = 0.2  # official --peak_thresh: detections scoring above it are kept
  # Official ddd_post_process_2d maps the box size (w, h) through the inverse affine like a
  # point (translation included), so its 2D boxes are wrong; True reproduces it.
  c.eval.ddd_official_2d_box = False
  # Official ddd_post_process_3d unprojects every image of a batch with the first image's P2.
  c.eval.ddd_first_image_calib = False
  # Minimum overlaps of the KITTI evaluation: 'devkit' (the benchmark: Car 0.7, Pedestrian and
  # Cyclist 0.5 everywhere) or 'centernet' (the official offline tool's looser BEV / 3D table,
  # which its published BEV numbers use).
  c.eval.kitti_overlaps = 'devkit'
  # Multiplies the KITTI difficulties' minimum box heights (40 / 25 / 25 px on 1242 x 375
  # images); 1 is the benchmark. The built-in shapes_ddd set (smaller images) uses its
  # shapes_ddd.pixel_scale so that moderate means the same depths as on KITTI.
  c.eval.kitti_min_height_scale = 1.0


def heads(num_classes: int, config: ml_collections.ConfigDict | None = None
          ) -> tuple[tuple[str, int], ...]:
  """The official ddd heads in the official order: hm, dep, rot, dim, then wh and reg.

  ``config.loss.reg_bbox`` / ``reg_offset`` (default on) keep the wh / reg heads;
  ``config.loss.amodel_offset`` (default off, not official) adds ``amodel_offset`` last.
  """
  reg_bbox = True if config is None else bool(config.loss.reg_bbox)
  reg_offset = True if config is None else bool(config.loss.reg_offset)
  amodal = False if config is None else bool(config.loss.get('amodel_offset', False))
  out = (('hm', num_classes), ('dep', 1), ('rot', 8), ('dim', 3))
  return (out + ((('wh', 2),) if reg_bbox else ()) + ((('reg', 2),) if reg_offset else ())
          + ((('amodel_offset', 2),) if amodal else ()))


def _f32_neighbours(t: float) -> tuple[np.float32, np.float32]:
  """(largest float32 < t, smallest float32 > t): float32 x < t iff x <= lo, x > t iff x >= hi."""
  f = np.float32(t)
  lo = f if float(f) < t else np.nextafter(f, np.float32(-np.inf))
  hi = f if float(f) > t else np.nextafter(f, np.float32(np.inf))
  return np.float32(lo), np.float32(hi)


_PI6 = _f32_neighbours(math.pi / 6)
_MINUS_PI6 = _f32_neighbours(-math.pi / 6)
_PI56 = _f32_neighbours(5 * math.pi / 6)
_MINUS_PI56 = _f32_neighbours(-5 * math.pi / 6)


def rotation_bins(alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The official two overlapping orientation bins of alpha (``_alpha_to_8``).

  Bin 1: alpha < pi/6 or alpha > 5pi/6, residual alpha + pi/2; bin 2: alpha > -pi/6 or
  alpha < -5pi/6, residual alpha - pi/2. The comparisons are the official float64 ones, exact
  for float32 alpha (a float32 x < t exactly when x <= the largest float32 below t); residuals
  are not wrapped and are 0 outside their bin.

  Args:
    alpha: [...] observation angles in radians.

  Returns:
    (rotbin [..., 2] int32 in {0, 1}, rotres [..., 2] float32).
  """
  a = jnp.asarray(alpha, jnp.float32)
  bin1 = (a <= _PI6[0]) | (a >= _PI56[1])
  bin2 = (a >= _MINUS_PI6[1]) | (a <= _MINUS_PI56[0])
  res1 = jnp.where(bin1, a + np.float32(0.5 * math.pi), 0.0)
  res2 = jnp.where(bin2, a - np.float32(0.5 * math.pi), 0.0)
  return jnp.stack([bin1, bin2], -1).astype(jnp.int32), jnp.stack([res1, res2], -1)


def depth_from_output(dep: jax.Array) -> jax.Array:
  """Official depth output transform: 1 / (sigmoid(x) + 1e-6) - 1 (float32, metres)."""
  return 1.0 / (jax.nn.sigmoid(dep.astype(jnp.float32)) + DEPTH_EPS) - 1.0


def _class_channels(labels: jax.Array, num_classes: int) -> jax.Array:
  """[B, M, C] bool: the channels an object draws in (its class, or those it is ignored in)."""
  ignored_one = -labels - 2  # IGNORE_PEDESTRIAN -> 0, IGNORE_CAR -> 1
  one = jnp.where(labels >= 0, labels, ignored_one)
  channels = jax.nn.one_hot(one, num_classes, dtype=jnp.bool_)  # out of range: no channel
  return jnp.where((labels == IGNORE_ALL)[..., None], True, channels)


def _render_heatmap(ct_int: jax.Array, radius: jax.Array, channels: jax.Array,
                    drawn: jax.Array, ignored: jax.Array, output_hw: Sequence[int]) -> jax.Array:
  """The official slot loop over objects: max-merged Gaussians, 0.9999 at ignored centres.

  An ignored object overwrites its centre pixel with 0.9999 in its channels after drawing its
  Gaussian, so a positive drawn earlier on that pixel loses its peak and one drawn later keeps
  it; the loop runs over the slots in order (``lax.scan``) to keep exactly that.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  b, _, num_classes = channels.shape
  ys = jnp.arange(out_h)[None, :, None]
  xs = jnp.arange(out_w)[None, None, :]
  zeros = jnp.zeros((b, 1), jnp.int32)

  def step(hm, obj):
    c_int, r, ch, ok, ign = obj
    g = gaussian.draw_gaussians(c_int[:, None], r[:, None], zeros, ok[:, None], num_classes=1,
                                output_hw=(out_h, out_w))  # [B, h, w, 1]
    ch = ch & ok[:, None]
    hm = jnp.where(ch[:, None, None, :], jnp.maximum(hm, g), hm)
    centre = (ys == c_int[:, 1, None, None]) & (xs == c_int[:, 0, None, None])  # [B, h, w]
    reset = centre[..., None] & (ch & ign[:, None])[:, None, None, :]
    return jnp.where(reset, IGNORE_PEAK, hm), None

  slots = tuple(jnp.moveaxis(x, 1, 0) for x in (ct_int, radius, channels, drawn, ignored))
  hm, _ = jax.lax.scan(step, jnp.zeros((b, out_h, out_w, num_classes), jnp.float32), slots)
  return hm


def ddd_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    depth: jax.Array,
    dims: jax.Array,
    alpha: jax.Array,
    aug: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    min_overlap: float = 0.7,
    center3d: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Official ddd targets (``datasets/sample/ddd.py``, docs/parity.md 4.13), on device.

  Per slot k in order: an object with label ``SKIP`` (or mask 0) is skipped; corners are
  clipped to [0, out - 1] and the object kept when h > 0 and w > 0; radius = max(0, int(r))
  of the float sides (no ceil, unlike ctdet); ct_int = trunc(box centre). An ignored object
  (label < 0) draws its Gaussian in the channels it is ignored in (``IGNORE_ALL``: all) and
  sets 0.9999 at ct_int there, nothing else. A positive draws in its class channel and sets
  ind, wh (w, h in output pixels), reg = ct - ct_int, dep, dim, rotbin/rotres
  (:func:`rotation_bins` of alpha), rot_mask = 1 and reg_mask = 1 unless its image was
  scale/shift augmented (``aug``: official reg_mask 0 there, so depth and size are not
  supervised). The radius is evaluated in float32; the official float64 truncation can differ
  only for sides whose radius lies within ~1e-6 of an integer.

  Args:
    boxes: [B, M, 4] float32 xyxy in output-map pixels, unclipped.
    labels: [B, M] int32: class channel 0..C-1, or IGNORE_ALL, IGNORE_PEDESTRIAN, IGNORE_CAR,
      SKIP.
    mask: [B, M] nonzero marks a real object (padding 0).
    depth: [B, M] float32 metres; dims: [B, M, 3] float32 (h, w, l) metres;
    alpha: [B, M] float32 observation angle, radians.
    aug: [B] nonzero where the random scale/shift was applied to the image.
    num_classes: C.
    output_hw: (h_out, w_out).
    min_overlap: overlap of the radius (official 0.7).
    center3d: [B, M, 2] float32 projected 3D centres in output-map pixels, or None; given, the
      targets add ``amodel_offset`` = center3d - ct_int (``loss.amodel_offset``, not official).

  Returns:
    dict hm [B, h, w, C], ind [B, M] int32, dep [B, M, 1], dim [B, M, 3], rotbin [B, M, 2]
    int32, rotres [B, M, 2], wh [B, M, 2], reg [B, M, 2], reg_mask [B, M], rot_mask [B, M]
    (float32 unless said).
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  boxes = jnp.asarray(boxes, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  x1 = jnp.clip(boxes[..., 0], 0, out_w - 1)
  y1 = jnp.clip(boxes[..., 1], 0, out_h - 1)
  x2 = jnp.clip(boxes[..., 2], 0, out_w - 1)
  y2 = jnp.clip(boxes[..., 3], 0, out_h - 1)
  bw, bh = x2 - x1, y2 - y1
  drawn = (jnp.asarray(mask) != 0) & (labels > SKIP) & (bh > 0) & (bw > 0)
  positive = drawn & (labels >= 0)
  radius = jnp.maximum(0, gaussian.gaussian_radius(bh, bw, min_overlap).astype(jnp.int32))
  ct = jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2], axis=-1)
  ct_int = ct.astype(jnp.int32)  # trunc; ct >= 0 after clipping
  hm = _render_heatmap(ct_int, radius, _class_channels(labels, num_classes), drawn,
                       labels < 0, (out_h, out_w))

  pos = positive[..., None]
  rotbin, rotres = rotation_bins(alpha)
  # jnp.where (not a product) so garbage in unused rows, even NaN, cannot leak.
  aug = jnp.asarray(aug) != 0
  extra = {}
  if center3d is not None:
    extra['amodel_offset'] = jnp.where(
        pos, jnp.asarray(center3d, jnp.float32) - ct_int.astype(jnp.float32), 0.0)
  return {
      **extra,
      'hm': hm,
      'ind': jnp.where(positive, ct_int[..., 1] * out_w + ct_int[..., 0], 0).astype(jnp.int32),
      'dep': jnp.where(pos, jnp.asarray(depth, jnp.float32)[..., None], 0.0),
      'dim': jnp.where(pos, jnp.asarray(dims, jnp.float32), 0.0),
      'rotbin': jnp.where(pos, rotbin, 0),
      'rotres': jnp.where(pos, rotres, 0.0),
      'wh': jnp.where(pos, jnp.stack([bw, bh], axis=-1), 0.0),
      'reg': jnp.where(pos, ct - ct_int.astype(jnp.float32), 0.0),
      'reg_mask': (positive & ~aug[:, None]).astype(jnp.float32),
      'rot_mask': positive.astype(jnp.float32),
  }


def masked_l1_mean(pred: jax.Array, ind: jax.Array, mask: jax.Array,
                   target: jax.Array, per_object: bool = False) -> jax.Array:
  """Official ddd ``L1Loss``: mean of |pred * m - gt * m| over all B x M x D entries.

  Unlike ctdet's RegL1 it is not normalised by the number of objects: unused slots count.
  ``per_object`` (not official, ``loss.ddd_norm='objects'``) divides the sum by the masked
  entries instead (sum(m) x D + 1e-4, as ctdet's RegL1), so the gradient per object does not
  shrink with ``data.max_objs``.

  Args:
    pred: [B, h, w, D] map; ind: [B, M] flat indices; mask: [B, M]; target: [B, M, D].
  """
  gathered = losses.gather_feat(pred, ind).astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32)[..., None]
  err = jnp.abs(gathered * m - jnp.asarray(target, jnp.float32) * m)
  if per_object:
    return jnp.sum(err) / (jnp.sum(m) * err.shape[-1] + 1e-4)
  return jnp.mean(err)


def bin_rot_loss(rot: jax.Array, mask: jax.Array, rotbin: jax.Array,
                 rotres: jax.Array, per_object: bool = False) -> jax.Array:
  """Official ``BinRotLoss`` on the rot values gathered at the objects.

  Per bin: cross-entropy of the masked logit pair (logits x mask) against the bin target,
  averaged over all B x M rows (a masked row costs ln 2, so no object gives 2 ln 2); plus
  smooth-L1 of the sin and cos channels against sin / cos of the residual, each averaged over
  the rows whose bin target is 1 (0 when there is none). ``per_object`` (not official) averages
  the cross-entropy over the masked rows only (0 without any), so unused slots do not dilute it.

  Args:
    rot: [B, M, 8] gathered rot outputs; mask: [B, M] (rot_mask);
    rotbin: [B, M, 2] int; rotres: [B, M, 2] float32.

  Returns:
    scalar float32 loss.
  """
  rot = rot.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32)[..., None]
  total = jnp.zeros((), jnp.float32)
  for i in range(2):
    logits = rot[..., 4 * i:4 * i + 2] * m
    target = rotbin[..., i].astype(jnp.int32)
    picked = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - picked
    if per_object:
      total += jnp.sum(ce * m[..., 0]) / jnp.maximum(jnp.sum(m), 1.0)
    else:
      total += jnp.mean(ce)
    sel = rotbin[..., i] != 0
    n = jnp.maximum(jnp.sum(sel), 1).astype(jnp.float32)
    res = rotres[..., i].astype(jnp.float32)
    for ch, fn in ((4 * i + 2, jnp.sin), (4 * i + 3, jnp.cos)):
      diff = jnp.where(sel, rot[..., ch] - fn(res), 0.0)
      total += jnp.sum(jnp.where(sel, losses.smooth_l1(diff), 0.0)) / n
  return total


def ddd_loss(
    outputs: Sequence[Mapping[str, jax.Array]],
    targets: Mapping[str, jax.Array],
    *,
    hm_weight: float = 1.0,
    dep_weight: float = 1.0,
    dim_weight: float = 1.0,
    rot_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
    amodel_offset_weight: float = 1.0,
    per_object: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Official ``DddLoss``, each term averaged over stacks.

  ``per_object`` (not official, ``loss.ddd_norm='objects'``): the L1 terms and the bin
  cross-entropy are averaged over the objects instead of all slots.

  Focal loss on ``hm``; :func:`masked_l1_mean` on the transformed depth and on ``dim`` (mask
  reg_mask) and on ``wh`` and ``reg`` (mask rot_mask); :func:`bin_rot_loss` on ``rot``. A stack
  without a ``wh`` or ``reg`` head contributes 0 to that term. With an ``amodel_offset`` head
  (not official) and its target, the same L1 (mask rot_mask) on it, as ``amodel_loss``.

  Args:
    outputs: list over stacks of {'hm', 'dep', 'rot', 'dim', 'wh' (optional), 'reg'
      (optional)}, each [B, h, w, channels] raw outputs.
    targets: :func:`ddd_targets`.

  Returns:
    (total, {'hm_loss', 'dep_loss', 'dim_loss', 'rot_loss', 'wh_loss', 'off_loss', 'loss'},
    and 'amodel_loss' with the amodel_offset head).
  """
  n = len(outputs)
  t = targets
  names = ['hm_loss', 'dep_loss', 'dim_loss', 'rot_loss', 'wh_loss', 'off_loss']
  amodal = 'amodel_offset' in t and any(o.get('amodel_offset') is not None for o in outputs)
  parts = dict.fromkeys(names + (['amodel_loss'] if amodal else []), jnp.zeros((), jnp.float32))
  for out in outputs:
    parts['hm_loss'] += losses.focal_loss(out['hm'], t['hm']) / n
    parts['dep_loss'] += masked_l1_mean(depth_from_output(out['dep']), t['ind'], t['reg_mask'],
                                        t['dep'], per_object) / n
    parts['dim_loss'] += masked_l1_mean(out['dim'], t['ind'], t['reg_mask'], t['dim'],
                                        per_object) / n
    parts['rot_loss'] += bin_rot_loss(losses.gather_feat(out['rot'], t['ind']), t['rot_mask'],
                                      t['rotbin'], t['rotres'], per_object) / n
    if out.get('wh') is not None:
      parts['wh_loss'] += masked_l1_mean(out['wh'], t['ind'], t['rot_mask'], t['wh'],
                                         per_object) / n
    if out.get('reg') is not None:
      parts['off_loss'] += masked_l1_mean(out['reg'], t['ind'], t['rot_mask'], t['reg'],
                                          per_object) / n
    if amodal and out.get('amodel_offset') is not None:
      parts['amodel_loss'] += masked_l1_mean(out['amodel_offset'], t['ind'], t['rot_mask'],
                                             t['amodel_offset'], per_object) / n
  total = (hm_weight * parts['hm_loss'] + dep_weight * parts['dep_loss']
           + dim_weight * parts['dim_loss'] + rot_weight * parts['rot_loss']
           + wh_weight * parts['wh_loss'] + off_weight * parts['off_loss'])
  if amodal:
    total = total + amodel_offset_weight * parts['amodel_loss']
  parts['loss'] = total
  return total, parts


def ddd_decode(hm_prob: jax.Array, rot: jax.Array, depth: jax.Array, dim: jax.Array,
               wh: jax.Array | None = None, reg: jax.Array | None = None,
               K: int = 100, amodel_offset: jax.Array | None = None) -> dict[str, jax.Array]:
  """Official ``ddd_decode``: top-K centre peaks and the heads gathered there.

  Centre = peak pixel + reg (+0.5 without a reg head); box = centre -+ wh / 2 (a point at the
  centre without a wh head). With an ``amodel_offset`` map (not official): centers3d = peak
  pixel + amodel_offset, the projected 3D centre.

  Args:
    hm_prob: [B, h, w, C] probabilities; rot: [B, h, w, 8] raw; depth: [B, h, w, 1] metres
      (:func:`depth_from_output` applied); dim: [B, h, w, 3]; wh, reg: [B, h, w, 2] or None.
    K: detections per image (official 100).

  Returns:
    dict centers [B, K, 2], boxes [B, K, 4] xyxy and wh [B, K, 2] in output-map coordinates,
    scores [B, K], classes [B, K] int32, rot [B, K, 8], depth [B, K], dims [B, K, 3]; and
    centers3d [B, K, 2] with ``amodel_offset``.
  """
  scores, inds, classes, ys, xs = decode.topk(decode.peaks(hm_prob), K)
  extra = {}
  if amodel_offset is not None:
    a = losses.gather_feat(amodel_offset, inds).astype(jnp.float32)
    extra['centers3d'] = jnp.stack([xs + a[..., 0], ys + a[..., 1]], axis=-1)
  if reg is not None:
    off = losses.gather_feat(reg, inds).astype(jnp.float32)
    xs, ys = xs + off[..., 0], ys + off[..., 1]
  else:
    xs, ys = xs + 0.5, ys + 0.5
  size = (losses.gather_feat(wh, inds).astype(jnp.float32) if wh is not None
          else jnp.zeros(xs.shape + (2,), jnp.float32))
  half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
  return {
      **extra,
      'centers': jnp.stack([xs, ys], axis=-1),
      'boxes': jnp.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=-1),
      'wh': size,
      'scores': scores.astype(jnp.float32),
      'classes': classes,
      'rot': losses.gather_feat(rot, inds).astype(jnp.float32),
      'depth': losses.gather_feat(depth, inds).astype(jnp.float32)[..., 0],
      'dims': losses.gather_feat(dim, inds).astype(jnp.float32),
  }


# --- Binding to a config -------------------------------------------------------------------


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
                    ) -> Callable[[state.TrainState, dict], tuple[state.TrainState, dict]]:
  """Builds the ddd ``train_step(state, batch) -> (state, metrics)`` (not jitted).

  The batch holds ``BATCH_KEYS``: image [B, S_h, S_w, 3], boxes [B, M, 4] xyxy in input pixels
  after the affine, labels [B, M] int32 (official codes), mask [B, M], depth [B, M], dims
  [B, M, 3], alpha [B, M], aug [B]; boxes are divided by ``config.model.down_ratio``.
  """
  num_classes = config.model.num_classes
  down = config.model.down_ratio
  lc = config.loss
  amodal = bool(lc.amodel_offset)

  def make_targets(batch):
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
      raise ValueError(f'a ddd batch needs {missing} (has {sorted(batch)})')
    _, height, width, _ = batch['image'].shape
    out_hw = models.train_output_hw(model, height, width, down)
    center3d = None
    if amodal:
      if 'center3d' not in batch:
        raise ValueError('config.loss.amodel_offset needs the batch key center3d (the KITTI '
                         f'sources give it; this batch has {sorted(batch)})')
      center3d = batch['center3d'] / down
    return ddd_targets(batch['boxes'] / down, batch['labels'], batch['mask'], batch['depth'],
                       batch['dims'], batch['alpha'], batch['aug'], num_classes=num_classes,
                       output_hw=out_hw, min_overlap=lc.min_overlap, center3d=center3d)

  def loss(outputs, tgt):
    return ddd_loss(outputs, tgt, hm_weight=lc.hm_weight, dep_weight=lc.dep_weight,
                    dim_weight=lc.dim_weight, rot_weight=lc.rot_weight,
                    wh_weight=lc.wh_weight, off_weight=lc.off_weight,
                    amodel_offset_weight=lc.amodel_offset_weight,
                    per_object=lc.ddd_norm == 'objects')

  return state.make_train_step_from_objective(model, tx, make_targets, loss,
                                              lambda tgt: tgt['rot_mask'].sum(), schedule)


def make_predict_fn(config: ml_collections.ConfigDict, model: nn.Module, *,
                    merge_later: bool = False) -> Callable[[dict, jax.Array], dict]:
  """Builds ``predict(variables, images) -> detections`` (model + :func:`ddd_decode` on device).

  Official test: plain sigmoid on hm, the depth transform, top ``eval.K``; no flip test and no
  NMS (the official ddd detector has neither).

  Raises:
    ValueError: ``eval.flip_test`` or several test scales (``merge_later``).
  """
  e = config.eval
  if e.flip_test or merge_later:
    raise ValueError('ddd has no flip or multi-scale test (official): set '
                     'config.eval.flip_test=False and config.eval.test_scales=(1.0,)')
  K = e.K

  def predict(variables: dict, images: jax.Array) -> dict:
    out = model.apply(variables, images, train=False)[-1]  # inference uses the last stack
    f32 = {k: (out[k].astype(jnp.float32) if k in out else None)
           for k in ('wh', 'reg', 'amodel_offset')}
    return ddd_decode(jax.nn.sigmoid(out['hm'].astype(jnp.float32)), out['rot'],
                      depth_from_output(out['dep']), out['dim'], f32['wh'], f32['reg'], K=K,
                      amodel_offset=f32['amodel_offset'])

  return predict


def make_post_process(config: ml_collections.ConfigDict
                      ) -> Callable[[Mapping[str, np.ndarray], np.ndarray], list[dict]]:
  """:func:`ddd_post_process` bound to the config, for callers with batches (predict, drawing).

  Reads ``eval.peak_thresh``, ``eval.ddd_official_2d_box`` and ``eval.ddd_first_image_calib``.

  Returns:
    ``post_process(dets, calibs) -> [objects per image]`` (dets in original pixels, calibs
    [B, 3, 4]).
  """
  e = config.eval

  def post_process(dets: Mapping[str, np.ndarray], calibs: np.ndarray) -> list[dict]:
    return ddd_post_process(dets, calibs, official_2d_box=bool(e.ddd_official_2d_box),
                            first_image_calib=bool(e.ddd_first_image_calib),
                            peak_thresh=float(e.peak_thresh))

  return post_process


def make_merge(config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """Multi-scale merge: not part of the official ddd test.

  Raises:
    ValueError: always, naming ``config.eval.test_scales``.
  """
  raise ValueError(f'ddd has no multi-scale test (official): config.eval.test_scales='
                   f'{tuple(config.eval.test_scales)!r} must be (1.0,)')

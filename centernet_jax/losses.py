"""Loss terms shared by the keypoint tasks (the task modules weight and sum them).

Focal loss and RegL1: official CenterNet `models/losses.py` (docs/parity.md 4.4). Smooth-L1
offsets and the associative-embedding pull/push: official CornerNet `models/py_utils/kp_utils.py`
(docs/parity.md 4.8).

All reductions run over the whole batch passed in: under jit with a global
batch, the focal loss is normalised by the global number of positives (the
official code normalises per GPU chunk and then averages the chunks).
Everything is computed in float32 whatever the input dtype.
"""

import jax
import jax.numpy as jnp

# Official `_sigmoid` clamp: keeps log() finite; jnp.clip also zeroes the gradient
# outside the range, as torch.clamp does.
_PROB_EPS = 1e-4


def clamped_sigmoid(logits: jax.Array) -> jax.Array:
  """clip(sigmoid(x), 1e-4, 1 - 1e-4) in float32 (training-time only)."""
  return jnp.clip(jax.nn.sigmoid(logits.astype(jnp.float32)), _PROB_EPS, 1 - _PROB_EPS)


def neg_loss(prob: jax.Array, target: jax.Array) -> jax.Array:
  """Penalty-reduced pixel-wise focal loss (official `_neg_loss`, alpha 2, beta 4).

  L = -(sum_pos log(p)(1 - p)^2 + sum_neg log(1 - p) p^2 (1 - t)^4) / num_pos,
  with pos = (t == 1), neg = (t < 1); if num_pos == 0, L = -sum_neg. Branch-free,
  so values and gradients stay finite for an empty batch. num_pos counts the
  whole batch passed in (global under jit), unlike the official per-GPU chunks.

  Args:
    prob: [B, h, w, C] probabilities in (0, 1), already clamped.
    target: [B, h, w, C] Gaussian heatmap in [0, 1].

  Returns:
    scalar float32 loss.
  """
  prob = prob.astype(jnp.float32)
  target = target.astype(jnp.float32)
  pos = (target == 1).astype(jnp.float32)
  neg = (target < 1).astype(jnp.float32)
  neg_weights = (1 - target) ** 4
  pos_loss = jnp.sum(jnp.log(prob) * (1 - prob) ** 2 * pos)
  neg_loss_sum = jnp.sum(jnp.log(1 - prob) * prob**2 * neg_weights * neg)
  num_pos = jnp.sum(pos)
  # num_pos == 0 implies pos_loss == 0, so dividing by max(num_pos, 1) gives the
  # official -sum_neg branch without python control flow or a 0/0.
  return -(pos_loss + neg_loss_sum) / jnp.maximum(num_pos, 1.0)


def focal_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """CenterNet heatmap focal loss on logits.

  Args:
    logits: [B, h, w, C] heatmap logits (any float dtype).
    target: [B, h, w, C] float Gaussian heatmap, peaks exactly 1.

  Returns:
    scalar float32 loss (see `neg_loss`).
  """
  return neg_loss(clamped_sigmoid(logits), target)


def gather_feat(feat: jax.Array, ind: jax.Array) -> jax.Array:
  """Gathers per-object features at flat spatial indices.

  Args:
    feat: [B, h, w, D] feature map.
    ind: [B, M] int flat indices y * w + x (out-of-range indices are clipped).

  Returns:
    [B, M, D] features, same dtype as `feat`.
  """
  b, h, w, d = feat.shape
  flat = feat.reshape(b, h * w, d)
  return jnp.take_along_axis(flat, ind.astype(jnp.int32)[..., None], axis=1, mode='clip')


def reg_l1_loss(pred: jax.Array, ind: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
  """Official `RegL1Loss`: masked L1 averaged per coordinate.

  L = sum |pred * m - gt * m| / (sum(m broadcast to D channels) + 1e-4).

  Args:
    pred: [B, h, w, D] regression map.
    ind: [B, M] int flat indices y * w + x.
    mask: [B, M] float/bool object mask.
    target: [B, M, D] regression targets.

  Returns:
    scalar float32 loss.
  """
  return reg_weighted_l1_loss(pred, ind, jnp.broadcast_to(
      mask.astype(jnp.float32)[..., None], target.shape), target)


def reg_weighted_l1_loss(pred: jax.Array, ind: jax.Array, mask: jax.Array,
                         target: jax.Array) -> jax.Array:
  """Official `RegWeightedL1Loss`: L1 with a per-coordinate mask (multi_pose `hps`).

  L = sum |pred * m - gt * m| / (sum(m) + 1e-4), m of the target's shape.

  Args:
    pred: [B, h, w, D] regression map.
    ind: [B, M] int flat indices y * w + x.
    mask: [B, M, D] float/bool mask per coordinate.
    target: [B, M, D] regression targets.

  Returns:
    scalar float32 loss.
  """
  gathered = gather_feat(pred, ind).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  loss = jnp.sum(jnp.abs(gathered * m - target.astype(jnp.float32) * m))
  return loss / (jnp.sum(m) + 1e-4)


def smooth_l1(x: jax.Array) -> jax.Array:
  """Elementwise smooth-L1, beta 1 (torch `smooth_l1_loss`): 0.5 x^2 if |x| < 1, else |x| - 0.5."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1, 0.5 * x * x, ax - 0.5)


def masked_smooth_l1_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked smooth-L1 per object (official CornerNet `_regr_loss`).

  Smooth-L1 summed over every coordinate of the masked objects, divided by
  (num_obj + 1e-4) (not D * num_obj, unlike `reg_l1_loss`).

  Args:
    pred: [B, M, D] values gathered at the objects (CornerNet: corner offsets, D = 2).
    target: [B, M, D] targets.
    mask: [B, M] object mask.

  Returns:
    scalar float32 loss.
  """
  m = mask.astype(jnp.float32)
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  # jnp.where, not a product: garbage in masked rows cannot leak (NaN * 0 = NaN).
  loss = jnp.sum(jnp.where(m[..., None] > 0, smooth_l1(jnp.where(m[..., None] > 0, diff, 0.0)),
                           0.0))
  return loss / (jnp.sum(m) + 1e-4)


def ae_loss(tl_tag: jax.Array, br_tag: jax.Array,
            mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Associative-embedding pull and push losses (official `_ae_loss`), summed over images.

  Per image with N = sum(mask) objects and e_k = (tl_k + br_k) / 2:
  pull = sum_k [(tl_k - e_k)^2 + (br_k - e_k)^2] / (N + 1e-4);
  push = sum over all N^2 valid pairs (j, k), diagonal included, of
  [relu(1 - |e_j - e_k|) - 1 / (N + 1e-4)] / (N (N - 1) + 1e-4).
  Subtracting 1/N per entry cancels the diagonal's N * 1 up to the eps terms, so
  for N >= 2 push is the published sum over j != k / (N (N - 1)) plus a constant
  ~1e-4 / (N (N - 1)); for N = 1 the official expression is the constant
  (1 - 1 / 1.0001) / 1e-4 = 0.9999 (no gradient: d|x|/dx = 0 at 0), kept for
  parity of the logged values; for N = 0 both terms are 0. Values and gradients
  are finite for any mask, including a batch of one image (where the official
  `squeeze()` breaks).

  Args:
    tl_tag: [B, M] top-left embeddings gathered at the target corners.
    br_tag: [B, M] bottom-right embeddings.
    mask: [B, M] object mask.

  Returns:
    (pull, push) float32 scalars, each summed over the B images.
  """
  m = (mask != 0).astype(jnp.float32)
  tl = jnp.where(m > 0, tl_tag.astype(jnp.float32), 0.0)
  br = jnp.where(m > 0, br_tag.astype(jnp.float32), 0.0)
  num = jnp.sum(m, axis=1, keepdims=True)  # [B, 1]
  mean = (tl + br) / 2
  pull = jnp.sum(m * ((tl - mean) ** 2 + (br - mean) ** 2) / (num + 1e-4))

  pair = m[:, :, None] * m[:, None, :]  # [B, M, M], diagonal included as official
  num = num[:, :, None]
  dist = jax.nn.relu(1 - jnp.abs(mean[:, :, None] - mean[:, None, :]))
  dist = (dist - 1 / (num + 1e-4)) / ((num - 1) * num + 1e-4)
  push = jnp.sum(pair * dist)
  return pull, push

"""CenterNet losses (official `models/losses.py`, `trains/ctdet.py`; PARITY 4.4).

All reductions run over the whole batch passed in: under jit with a global
batch, the focal loss is normalised by the global number of positives (the
official code normalises per GPU chunk and then averages the chunks).
Everything is computed in float32 whatever the input dtype.
"""

from collections.abc import Mapping, Sequence

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
  gathered = gather_feat(pred, ind).astype(jnp.float32)
  m = jnp.broadcast_to(mask.astype(jnp.float32)[..., None], gathered.shape)
  loss = jnp.sum(jnp.abs(gathered * m - target.astype(jnp.float32) * m))
  return loss / (jnp.sum(m) + 1e-4)


def ctdet_loss(
    outputs: Sequence[Mapping[str, jax.Array]],
    targets: Mapping[str, jax.Array],
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CenterNet detection loss, each term averaged over stacks.

  Defaults are the official weights (hm 1, wh 0.1, off 1). A stack without a
  'reg' head (official `--not_reg_offset`) contributes 0 offset loss.

  Args:
    outputs: list over stacks of {'hm': [B, h, w, C] logits, 'wh': [B, h, w, 2],
      'reg': [B, h, w, 2] (optional)}.
    targets: {'hm': [B, h, w, C], 'ind': [B, M] int32, 'wh': [B, M, 2],
      'reg': [B, M, 2], 'reg_mask': [B, M]} from `targets.ctdet_targets`.
    hm_weight: heatmap loss weight.
    wh_weight: size loss weight.
    off_weight: offset loss weight.

  Returns:
    (total, {'hm_loss', 'wh_loss', 'off_loss', 'loss'}) float32 scalars.
  """
  num_stacks = len(outputs)
  hm_loss = wh_loss = off_loss = jnp.zeros((), jnp.float32)
  for out in outputs:
    hm_loss += focal_loss(out['hm'], targets['hm']) / num_stacks
    wh_loss += reg_l1_loss(out['wh'], targets['ind'], targets['reg_mask'],
                           targets['wh']) / num_stacks
    if 'reg' in out and out['reg'] is not None:
      off_loss += reg_l1_loss(out['reg'], targets['ind'], targets['reg_mask'],
                              targets['reg']) / num_stacks
  total = hm_weight * hm_loss + wh_weight * wh_loss + off_weight * off_loss
  parts = {'hm_loss': hm_loss, 'wh_loss': wh_loss, 'off_loss': off_loss, 'loss': total}
  return total, parts

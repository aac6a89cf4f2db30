"""End to end with the two-stack models on the smoke data: CornerNet and CenterNet-Hourglass
train (targets, losses over both stacks), checkpoint, evaluate (flip, multi-scale merged by
soft-NMS) and predict through the same entry points as the one-stack models."""

import json
import os

import numpy as np
import pytest

from centernet_jax import config_lib, evaluate, predict, train
from centernet_jax.metric_writer import read_metrics


def _two_stack_config(smoke_config, arch):
  """The smoke settings on a config of the arch's task (a task's config has only its keys)."""
  cfg = config_lib.base_config('cornernet' if arch.startswith('cornernet') else 'ctdet')
  smoke = smoke_config.to_dict()
  cfg.seed = smoke['seed']
  for section in ('data', 'model', 'train', 'optim'):
    cfg[section].update(smoke[section])
  cfg.eval.update({k: v for k, v in smoke['eval'].items() if k in cfg.eval})
  cfg.model.arch = arch
  # The tiny two-stack models' head width (16) from before they honoured head_conv: the smoke
  # model's 8 gives CornerNet initial embeddings more than ae_threshold apart, so no pair of the
  # 2-step model would survive and nothing would be detected.
  cfg.model.head_conv = 16
  cfg.train.num_steps = 2
  cfg.train.checkpoint_every = 2
  cfg.train.eval_every = -1
  cfg.eval.num_images = 2
  if arch.startswith('cornernet'):
    cfg.loss.min_overlap = 0.3
    cfg.eval.flip_test = True
    cfg.eval.corner_K = 20
    cfg.eval.num_dets = 50
  return cfg


# The multi-scale and predict paths are the same code for both tasks; the (slow to compile)
# two-stack CenterNet only trains and evaluates.
@pytest.mark.parametrize('arch,loss_keys,full', [
    ('cornernet_tiny', ('focal_loss', 'pull_loss', 'push_loss', 'regr_loss'), True),
    ('hourglass_tiny', ('hm_loss', 'wh_loss', 'off_loss'), False),
])
def test_two_stack_models_train_evaluate_predict(smoke_config, tmp_path, arch, loss_keys, full):
  cfg = _two_stack_config(smoke_config, arch)
  workdir = str(tmp_path / arch)
  metrics = train.train_and_evaluate(cfg, workdir)
  logged = [r for r in read_metrics(workdir) if 'train/loss' in r]
  assert [r['step'] for r in logged] == [1, 2]
  for r in logged:
    for key in loss_keys + ('loss', 'grad_norm'):
      assert np.isfinite(r[f'train/{key}']), (key, r)
  assert set(metrics) >= {'AP', 'AP50', 'AR100'}
  if not full:
    return

  # Multi-scale evaluation: two scales merged with soft-NMS, at most K boxes per image.
  ms = cfg.copy_and_resolve_references()
  ms.eval.test_scales = (1.0, 0.5)
  ms_metrics = evaluate.run(ms, workdir)
  assert all(0.0 <= v <= 1.0 or v == -1.0 for v in ms_metrics.values())
  with open(os.path.join(workdir, 'eval', 'step_2_scales1-0.5', 'detections.json')) as f:
    dets = json.load(f)
  per_image = {}
  for d in dets:
    per_image[d['image_id']] = per_image.get(d['image_id'], 0) + 1
    assert d['score'] > 0
  assert per_image and max(per_image.values()) <= cfg.eval.K

  detector = predict.Detector.from_checkpoint(cfg, workdir)
  image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
  got = detector([image], score_threshold=0.0)[0]
  assert len(got) <= cfg.eval.K
  for d in got:
    x1, y1, x2, y2 = d['bbox_xyxy']
    assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64

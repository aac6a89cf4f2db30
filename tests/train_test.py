"""End to end on the smoke config: train, checkpoint, resume, evaluate; bad workdirs."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from centernet_jax import checkpoint, evaluate, fault, inference, models, predict, tasks, train
from centernet_jax.metric_writer import read_metrics
from centernet_jax.state import TrainState


def _losses(workdir):
  return {r['step']: r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r}


def test_train_resume_evaluate(smoke_config, tmp_path):
  # One run of 6 steps, and a run stopped after 4 then resumed to 6: same losses after resume.
  full = str(tmp_path / 'full')
  cfg = smoke_config.copy_and_resolve_references()
  cfg.train.num_steps = 6
  train.train_and_evaluate(cfg, full)

  split = str(tmp_path / 'split')
  cfg4 = smoke_config.copy_and_resolve_references()
  cfg4.train.num_steps = 4
  cfg4.train.eval_every = -1
  train.train_and_evaluate(cfg4, split)
  assert checkpoint.Checkpointer(os.path.join(split, 'checkpoints')).all_steps() == [2, 4]
  train.train_and_evaluate(cfg, split)  # resumes at 4

  lf, ls = _losses(full), _losses(split)
  assert sorted(lf) == [1, 2, 3, 4, 5, 6]
  assert sorted(ls) == [1, 2, 3, 4, 5, 6]  # no step was trained twice
  np.testing.assert_allclose([ls[s] for s in range(1, 7)], [lf[s] for s in range(1, 7)],
                             rtol=1e-4)

  # evaluate writes detections.json and metrics.json equal to pycocotools run independently.
  metrics = evaluate.run(cfg, split)
  out = os.path.join(split, 'eval', 'step_6')
  with open(os.path.join(out, 'metrics.json')) as f:
    saved = json.load(f)
  assert saved == pytest.approx(metrics)
  with open(os.path.join(out, 'detections.json')) as f:
    dets = json.load(f)
  from centernet_jax.data import pipeline
  info = pipeline.get_dataset_info(cfg.data)
  gt = COCO(info.val_gt) if isinstance(info.val_gt, str) else None
  assert gt is not None
  assert {d['image_id'] for d in dets} <= set(gt.getImgIds())
  assert {d['category_id'] for d in dets} <= set(gt.getCatIds())
  assert len(dets) == cfg.eval.K * len(gt.getImgIds())
  ev = COCOeval(gt, gt.loadRes(dets), 'bbox')
  ev.params.imgIds = gt.getImgIds()
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  names = ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100']
  for i, name in enumerate(names):
    assert saved[name] == pytest.approx(float(ev.stats[i]), abs=1e-12)

  # predict (Python and files) gives the same boxes as evaluate for the same image.
  detector = predict.Detector.from_checkpoint(cfg, split)
  img = gt.loadImgs(gt.getImgIds()[:1])[0]
  path = os.path.join(cfg.data.shapes_dir, 'val', img['file_name'])
  got = detector([path], score_threshold=0.0)[0]
  assert len(got) == cfg.eval.K
  want = sorted((d for d in dets if d['image_id'] == img['id']), key=lambda d: -d['score'])
  for g, w in zip(got[:5], want[:5], strict=True):
    assert g['category_id'] == w['category_id']
    # predict clips boxes to the image; evaluation keeps them as decoded (official).
    x, y, bw, bh = w['bbox']
    want_xyxy = np.clip([x, y, x + bw, y + bh], 0, [img['width'], img['height']] * 2)
    np.testing.assert_allclose(g['bbox_xyxy'], want_xyxy, atol=0.03)
  written = predict.predict_files(detector, [path], str(tmp_path / 'pred'), 0.0, grid=True)
  assert sorted(os.path.basename(p) for p in written) == sorted(
      [os.path.splitext(img['file_name'])[0] + ext for ext in ('.json', '.png')] + ['grid.png'])


def test_workdir_of_another_model_is_refused(smoke_config, tmp_path):
  workdir = str(tmp_path / 'w')
  cfg = smoke_config.copy_and_resolve_references()
  cfg.train.num_steps = 2
  cfg.train.eval_every = -1
  cfg.eval.num_images = 1
  train.train_and_evaluate(cfg, workdir)
  other = cfg.copy_and_resolve_references()
  other.model.head_conv = 16
  other.train.num_steps = 4
  with pytest.raises(checkpoint.ModelMismatchError, match='head_conv'):
    train.train_and_evaluate(other, workdir)


def test_nonfinite_loss_stops_with_the_step(smoke_config, tmp_path):
  cfg = smoke_config.copy_and_resolve_references()
  cfg.optim.lr = 1e30  # the first Adam update makes every parameter ~1e30: step 2 overflows
  cfg.train.num_steps = 3
  with pytest.raises(fault.NonFiniteLossError, match='non-finite loss at step 2'):
    train.train_and_evaluate(cfg, str(tmp_path / 'nan'))


def test_resume_and_init_from_another_workdir(smoke_config, tmp_path):
  src = str(tmp_path / 'src')
  cfg = smoke_config.copy_and_resolve_references()
  cfg.train.num_steps = 4
  cfg.train.eval_every = -1
  cfg.eval.num_images = 1
  train.train_and_evaluate(cfg, src)

  # config.resume continues the optimiser state and the data stream from a named checkpoint.
  resumed = str(tmp_path / 'resumed')
  cfg_r = cfg.copy_and_resolve_references()
  cfg_r.resume = os.path.join(src, 'checkpoints', '2')
  train.train_and_evaluate(cfg_r, resumed)
  src_losses, res_losses = _losses(src), _losses(resumed)
  assert sorted(res_losses) == [3, 4]
  np.testing.assert_allclose([res_losses[3], res_losses[4]], [src_losses[3], src_losses[4]],
                             rtol=1e-4)

  # config.init takes the weights only: step 0, fresh optimiser; with lr 0 they stay as loaded.
  init = str(tmp_path / 'init')
  cfg_i = cfg.copy_and_resolve_references()
  cfg_i.init = src
  cfg_i.train.num_steps = 1
  cfg_i.optim.lr = 1e-30
  train.train_and_evaluate(cfg_i, init)
  resolved = tasks.resolve_config(cfg, _info(cfg).num_classes)
  target = inference.abstract_variables(models.build_model(resolved.model),
                                        inference.input_hw(resolved))
  _, a = checkpoint.Checkpointer(os.path.join(src, 'checkpoints')).restore_variables(4, target)
  _, b = checkpoint.Checkpointer(os.path.join(init, 'checkpoints')).restore_variables(1, target)
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params']), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-12)


def _info(cfg):
  from centernet_jax.data import pipeline
  return pipeline.get_dataset_info(cfg.data)


def test_init_reinitialised_variables_are_a_warning(tmp_path, caplog):
  # Bug 8: config.init re-initialises heads of another class count and variables the
  # checkpoint lacks; that is said at WARNING, with the list.
  params = {'backbone': {'w': jnp.arange(3.0)}, 'hm': {'bias': jnp.zeros(2)}}
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'src' / 'checkpoints'))
  ckpt.save(TrainState(step=jnp.array(5), params=params, batch_stats={},
                       opt_state={'mu': jnp.zeros(3)}), {'model': {'arch': 'x'}})
  ckpt.wait()
  ckpt.close()
  target = {'params': {'backbone': {'w': jnp.zeros(3)}, 'hm': {'bias': jnp.full(4, 7.0)},
                       'neck': {'a': jnp.ones(2), 'b': jnp.ones(3)}}, 'batch_stats': {}}
  with caplog.at_level(logging.WARNING):
    step, variables = checkpoint.init_variables_from(str(tmp_path / 'src'), target,
                                                     {'model': {'arch': 'x'}})
  assert step == 5
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.getMessage().startswith('config.init=')]
  assert len(warnings) == 2, warnings
  assert 're-initialised, their last axis differs' in warnings[0]
  assert 'params/hm/bias (2,) -> (4,)' in warnings[0]
  assert 'not in the checkpoint re-initialised (2 arrays): params/neck (2 arrays)' in warnings[1]
  np.testing.assert_array_equal(variables['params']['backbone']['w'], [0, 1, 2])
  np.testing.assert_array_equal(variables['params']['hm']['bias'], [7, 7, 7, 7])
  np.testing.assert_array_equal(variables['params']['neck']['b'], [1, 1, 1])

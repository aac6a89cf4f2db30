"""Exported detectors (StableHLO, TF SavedModel) reload in a fresh process (or through
``serving.load``) and match predict."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from centernet_jax import checkpoint, export, inference, predict, serving, state, tasks, train
from centernet_jax.data import pipeline
from centernet_jax.data import shapes as shapes_lib
from centernet_jax.models import build_model
from tests.conftest import ROOT, load_config

SIZE = 64  # smoke images
CANVAS = 96  # keep_res pads a 64 px image to (64 | 31) + 1 = 96, as evaluation does


def _config(shapes_dir):
  c = load_config('smoke')
  c.data.shapes_dir = shapes_dir
  return c


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, shapes_dir):
  """A smoke checkpoint from an initialised model, rescaled so its outputs mean something.

  At init the up-convolutions are N(0, 0.001), so every pixel scores ~sigmoid(-2.19) and every box
  is a point; scaled up, scores spread (0.11-0.13, gaps ~1e-5) and boxes get a size, so "same
  top-K" is a real check rather than a tie-break lottery.
  """
  info = pipeline.get_dataset_info(_config(shapes_dir).data)
  c = tasks.resolve_config(_config(shapes_dir), info.num_classes)
  model = build_model(c.model)
  init = functools.partial(state.init_state, model, optax.adam(1e-3),
                           image_shape=(1, SIZE, SIZE, 3))
  initial = jax.jit(init)(jax.random.PRNGKey(0))  # jitted: eager init costs ~20 s of CPU
  params = dict(initial.params)
  params['deconv_layers'] = jax.tree.map(lambda x: x * 100.0 if x.ndim == 4 else x,
                                         params['deconv_layers'])
  params['wh'] = jax.tree.map(lambda x: x * 20.0, params['wh'])
  path = str(tmp_path_factory.mktemp('export_workdir'))
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(path))
  ckpt.save(initial.replace(params=params), train.checkpoint_meta(c, info), force=True)
  ckpt.wait()
  ckpt.close()
  return path


@pytest.fixture(scope='module')
def detector(workdir, shapes_dir):
  return predict.Detector.from_checkpoint(_config(shapes_dir), workdir)


@pytest.fixture(scope='module')
def artifacts(workdir, shapes_dir, tmp_path_factory):
  """{format: export dir}, each with a symbolic batch and uint8 input."""
  out = {}
  for fmt in export.FORMATS:
    out[fmt] = str(tmp_path_factory.mktemp(fmt))
    export.run(_config(shapes_dir), workdir, fmt, out[fmt])  # default canvas: 96
  return out


def _images(shapes_dir) -> np.ndarray:
  """[5, 64, 64, 3] uint8: one real shapes validation image, then four random ones."""
  val = shapes_lib.paths(shapes_dir)['val_images']
  real = predict.read_rgb(os.path.join(val, sorted(os.listdir(val))[0]))
  assert real.shape == (SIZE, SIZE, 3)
  rand = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
  return np.concatenate([real[None], rand])


# Fresh processes that import only jax or only tensorflow: the artifact runs without our code.
_LOADERS = {
    'stablehlo': """
        import jax
        with open(os.path.join(d, 'model.stablehlo'), 'rb') as f:
          exp = jax.export.deserialize(bytearray(f.read()))
        fn = exp.call
    """,
    'savedmodel': """
        import tensorflow as tf
        sig = tf.saved_model.load(d).signatures['serving_default']
        fn = lambda x: sig(images=tf.constant(x))
    """,
}


def _run_fresh(fmt: str, directory: str, images_path: str, out_path: str):
  script = textwrap.dedent("""
      import os, sys
      import numpy as np
      d, images_path, out_path = sys.argv[1:]
      images = np.load(images_path)
  """) + textwrap.dedent(_LOADERS[fmt]) + textwrap.dedent("""
      one = {k: np.asarray(v) for k, v in fn(images[:1]).items()}
      four = {k: np.asarray(v) for k, v in fn(images[1:]).items()}
      np.savez(out_path, **{f'one_{k}': v for k, v in one.items()},
               **{f'four_{k}': v for k, v in four.items()})
      assert 'centernet_jax' not in sys.modules
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', script, directory, images_path, out_path],
                        cwd='/', env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out_path))


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_fresh_process_matches_predict(fmt, artifacts, detector, shapes_dir, tmp_path):
  images = _images(shapes_dir)
  canvases, inverses = zip(*[serving.letterbox(im, (CANVAS, CANVAS), 'keep_res')
                             for im in images], strict=True)
  np.save(tmp_path / 'images.npy', np.stack(canvases))
  got = _run_fresh(fmt, artifacts[fmt], str(tmp_path / 'images.npy'), str(tmp_path / 'out.npz'))
  meta = json.load(open(os.path.join(artifacts[fmt], serving.METADATA_FILE)))
  K = meta['K']
  assert meta['outputs']['boxes'] == {'dtype': 'float32', 'shape': ['B', K, 4],
                                      'units': 'x1, y1, x2, y2 in input-canvas pixels'}
  assert set(meta['outputs']) == {'boxes', 'classes', 'scores'}  # no NMS in the smoke config
  # One symbolic-batch artifact served batch 1 and batch 4.
  assert got['one_boxes'].shape == (1, K, 4) and got['four_boxes'].shape == (4, K, 4)
  assert got['one_classes'].dtype == np.int32 and got['one_scores'].dtype == np.float32
  assert meta['class_names'] == detector.class_names
  assert meta['category_ids'] == detector.category_ids
  for i, image in enumerate(images):
    key, j = ('one', 0) if i == 0 else ('four', i - 1)
    want = detector([image], score_threshold=0.0)[0]
    boxes = serving.boxes_to_original(got[f'{key}_boxes'][j], inverses[i], image.shape[:2])
    _assert_same_detections(boxes, got[f'{key}_scores'][j], got[f'{key}_classes'][j], want)


def _assert_same_detections(boxes, scores, classes, want: list[dict]):
  """Same K detections: scores within float tolerance, and for each predicted detection an
  exported one with the same class, score and box (scores equal to ~1e-7 may swap places)."""
  ref_scores = np.array([d['score'] for d in want])
  assert len(scores) == len(want)
  assert len(np.unique(np.round(ref_scores, 5))) > len(want) // 2  # mostly distinct scores
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
  for d in want:
    match = ((classes == d['label']) & (np.abs(scores - d['score']) < 1e-5) &
             np.all(np.abs(boxes - np.array(d['bbox_xyxy'])) < 1e-3, axis=1))
    assert match.any(), (d, boxes, scores, classes)


def test_float_input_and_fixed_batch(workdir, shapes_dir, tmp_path):
  """--input float takes the normalised images predict sees; --batch 2 refuses batch 3."""
  c = _config(shapes_dir)
  export.run(c, workdir, 'stablehlo', str(tmp_path), batch=2, input_dtype='float', height=CANVAS,
             width=CANVAS)
  served = serving.load(str(tmp_path))
  assert served.metadata['input'] == {**served.metadata['input'], 'dtype': 'float32',
                                      'shape': [2, CANVAS, CANVAS, 3]}
  assert served.input_hw == (CANVAS, CANVAS)
  assert (served.metadata['task'], served.metadata['eval_mode'], served.metadata['eval_pad']) == (
      'ctdet', 'keep_res', 31)
  originals = _images(shapes_dir)[:2]
  norm = np.concatenate([pipeline.load_image_for_predict(im, c.data)['image'] for im in originals])
  images = np.stack([serving.letterbox(im, (CANVAS, CANVAS))[0] for im in originals])
  # numpy oracle of the normalisation: RGB -> BGR, /255, COCO mean/std.
  oracle = (images[..., ::-1] / 255.0 - np.array(c.data.mean)) / np.array(c.data.std)
  np.testing.assert_allclose(norm, oracle, atol=1e-5)
  got = served(norm.astype(np.float32))
  # the numpy pre-processing predict uses gives the same images
  np.testing.assert_array_equal(
      np.concatenate([inference.preprocess(im, c.data)['image'] for im in originals]), norm)
  config, model, variables, _, _ = inference.restore(c, workdir)
  want = jax.jit(tasks.get(config.task).make_predict_fn(config, model))(variables, norm)
  for i in range(2):
    ref = [{'bbox_xyxy': box, 'score': score, 'label': label} for box, score, label in zip(
        np.asarray(want['boxes'][i]) * config.model.down_ratio, np.asarray(want['scores'][i]),
        np.asarray(want['classes'][i]), strict=True)]
    _assert_same_detections(got['boxes'][i], got['scores'][i], got['classes'][i], ref)
  with pytest.raises(serving.ServingError, match=r'float32 \[2, 96, 96, 3\], got shape \[3,'):
    served(np.zeros((3, CANVAS, CANVAS, 3), np.float32))


def test_fixed_batch_savedmodel_matches_symbolic(artifacts, workdir, shapes_dir, tmp_path):
  """--batch 2 keeps lax.top_k (TF runs it with static shapes); the symbolic one sorts."""
  export.run(_config(shapes_dir), workdir, 'savedmodel', str(tmp_path), batch=2)
  images = np.stack([serving.letterbox(im, (CANVAS, CANVAS))[0]
                     for im in _images(shapes_dir)[3:]])
  got = serving.load(str(tmp_path))(images)
  want = serving.load(artifacts['savedmodel'])(images)
  for i in range(2):
    ref = [{'bbox_xyxy': box, 'score': score, 'label': label} for box, score, label in zip(
        want['boxes'][i], want['scores'][i], want['classes'][i], strict=True)]
    _assert_same_detections(got['boxes'][i], got['scores'][i], got['classes'][i], ref)


@pytest.mark.parametrize('fmt', export.FORMATS)
@pytest.mark.parametrize('images,match', [
    (np.zeros((CANVAS, CANVAS, 3), np.uint8), r'uint8 \[B, 96, 96, 3\], got shape \[96, 96, 3\]'),
    (np.zeros((1, CANVAS, CANVAS, 3), np.float32), r'got dtype float32'),
    (np.zeros((1, 64, CANVAS, 3), np.uint8), r'got shape \[1, 64, 96, 3\]'),
])
def test_loaded_model_rejects_bad_input(fmt, images, match, artifacts):
  served = serving.load(artifacts[fmt])
  with pytest.raises(serving.ServingError, match=match) as e:
    served(images)
  assert artifacts[fmt] in str(e.value)


def test_raw_stablehlo_call_names_the_mismatch(artifacts):
  """Without our wrapper, jax.export's own checks still say what is wrong."""
  with open(os.path.join(artifacts['stablehlo'], serving.STABLEHLO_FILE), 'rb') as f:
    exp = jax.export.deserialize(bytearray(f.read()))
  with pytest.raises(ValueError, match='Rank mismatch'):
    exp.call(np.zeros((CANVAS, CANVAS, 3), np.uint8))
  with pytest.raises(ValueError, match='Dtype mismatch.*expected uint8'):
    exp.call(np.zeros((1, CANVAS, CANVAS, 3), np.float32))


def test_cli_without_checkpoint(tmp_path):
  """The command line turns errors into one line (exit 1), never a traceback."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'centernet_jax.export', '--config',
       os.path.join(ROOT, 'configs', 'smoke.py'), '--workdir', str(tmp_path / 'empty'),
       '--output', str(tmp_path / 'out'), '--format', 'stablehlo'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert f'error: no checkpoint found in {tmp_path / "empty"}' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_multi_scale_config_is_refused(workdir, shapes_dir, tmp_path):
  c = _config(shapes_dir)
  c.eval.test_scales = (0.5, 1.0)
  with pytest.raises(export.ExportError, match=r'an export serves one scale'):
    export.run(c, workdir, 'stablehlo', str(tmp_path))


@pytest.mark.parametrize('kwargs,expect', [
    ({'fmt': 'onnx'}, "--format must be one of ('stablehlo', 'savedmodel'), got 'onnx'"),
    ({'input_dtype': 'int8'}, "--input must be one of ('uint8', 'float'), got 'int8'"),
    ({'height': 48}, '--height 48 --width 96 gives a 16x24 output map'),
])
def test_bad_export_request(kwargs, expect, workdir, shapes_dir, tmp_path):
  kwargs = {'fmt': 'stablehlo', **kwargs}
  with pytest.raises(export.ExportError) as e:
    export.run(_config(shapes_dir), workdir, output=str(tmp_path), **kwargs)
  assert expect in str(e.value)
  assert not os.listdir(tmp_path)  # nothing half-written

"""Multi-scale test pre-processing and the task dispatch of the predictors.

The oracle for ``eval_transform(test_scale=s)`` is the official pipeline written out by hand:
resize the image by s, centre-pad it to (h | pad) + 1, predict in output-map coordinates (input
/ down), then map back and divide by s. Our transform returns center/scale already divided by s,
so ``boxes.transform_preds`` (and ``inference.to_original``, what evaluation runs) must land on
the original pixels.
"""

import numpy as np
import pytest

from centernet_jax import boxes as boxes_lib
from centernet_jax import config_lib, inference, tasks
from tests.conftest import load_config


@pytest.mark.parametrize('hw,s,pad', [
    ((60, 80), 1.0, 31), ((60, 80), 0.5, 31), ((61, 47), 1.5, 31), ((100, 130), 0.75, 127),
])
def test_eval_transform_scale_maps_back_to_original_pixels(hw, s, pad):
  from centernet_jax.data import transforms
  rng = np.random.default_rng(0)
  h, w = hw
  image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
  out = transforms.eval_transform(image, mode='keep_res', pad=pad, test_scale=s)
  new_h, new_w = int(h * s), int(w * s)
  inp_h, inp_w = (new_h | pad) + 1, (new_w | pad) + 1
  np.testing.assert_array_equal(out['input_hw'].numpy(), [inp_h, inp_w])
  np.testing.assert_array_equal(out['orig_hw'].numpy(), [h, w])
  assert out['image'].shape == (inp_h, inp_w, 3)
  # A box in original pixels -> resized -> padded input -> output map (down 4).
  down = 4
  box = np.array([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]], np.float32)
  top, left = inp_h // 2 - new_h // 2, inp_w // 2 - new_w // 2
  in_input = box * s + np.array([left, top, left, top], np.float32)
  in_output = in_input / down
  back = boxes_lib.transform_preds(in_output, out['center'].numpy(), out['scale'].numpy(),
                                   (inp_w // down, inp_h // down))
  np.testing.assert_allclose(back, box, atol=1e-3)
  batch = {k: out[k].numpy()[None] for k in ('center', 'scale', 'input_hw', 'orig_hw')}
  mapped = inference.to_original({'boxes': in_output[None]}, batch, (down, down), ('boxes',))
  np.testing.assert_allclose(mapped['boxes'][0], box, atol=1e-3)


def test_scaled_image_content_is_the_resized_image():
  from centernet_jax.data import transforms
  image = np.zeros((40, 40, 3), np.uint8)
  image[10:30, 10:30] = 255  # a white square
  out = transforms.eval_transform(image, mode='keep_res', pad=31, channel_order='RGB',
                                  test_scale=0.5)
  inp = out['image'].numpy()
  assert inp.shape == (32, 32, 3)
  top = left = 32 // 2 - 20 // 2
  np.testing.assert_allclose(inp[top + 6:top + 14, left + 6:left + 14], 1.0, atol=1e-6)
  assert inp[:top].max() == 0 and inp[top + 20:].max() == 0  # zero border


@pytest.mark.parametrize('scales,expected', [((1.0,), False), ((0.5, 1.0), True)])
def test_multi_scale_flag(scales, expected):
  c = config_lib.base_config()
  c.eval.test_scales = scales
  assert tasks.multi_scale(c) is expected


@pytest.mark.parametrize('field,value,message', [
    ('test_scales', (), 'config.eval.test_scales'),
    ('test_scales', (1.0, -0.5), 'config.eval.test_scales'),
    ('nms_method', 'greedy', 'config.eval.nms_method'),
])
def test_bad_eval_fields_are_named(field, value, message):
  c = config_lib.base_config()
  c.eval[field] = value
  c.eval.nms = True
  with pytest.raises(ValueError, match=message):
    if field == 'test_scales':
      tasks.multi_scale(c)
    else:
      tasks.get(c.task).make_merge(c)


@pytest.mark.parametrize('name,task', [('ctdet_resnet18_coco', 'ctdet'),
                                       ('ctdet_dla34_coco', 'ctdet'),
                                       ('ctdet_hg104_coco', 'ctdet'),
                                       ('cornernet_hg104_coco', 'cornernet'),
                                       ('shapes_cornernet', 'cornernet')])
def test_configs_name_their_task(name, task):
  """The task is explicit in every config (it was derived from the arch's name)."""
  config = load_config(name)
  assert config.task == task
  assert tasks.get(config.task).NAME == task

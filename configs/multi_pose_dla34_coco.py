r"""CenterNet human pose (multi_pose) with DLA-34 on COCO keypoints 2017, the official
``multi_pose_dla_1x`` / ``_3x``.

Official recipes (experiments/multi_pose_dla_{1x,3x}.sh): batch 128, lr 5e-4, 512x512 input,
1x: 140 epochs with decays at 90 and 120, 3x: 320 epochs with decays at 270 and 300; evaluated
with flip at keep-resolution (``eval.flip_test`` is on here). Zoo (COCO keypoints val2017, flip,
docs/parity.md 4.12): 1x 54.7 keypoint AP, 3x 58.9. One class (person), 17 joints, at most 32
people per image; training uses only the train2017 images with at least one annotation (64,115).

The data are the COCO person keypoints jsons with the 2017 image folders (TFDS coco/2017 has no
keypoints):

  python -m centernet_jax.train --config configs/multi_pose_dla34_coco.py:schedule=3x \
      --workdir runs/pose_dla34_3x --config.init=runs/zoo_dla34_2x \
      --config.data.train_annotations=coco/annotations/person_keypoints_train2017.json \
      --config.data.train_images=coco/train2017 \
      --config.data.val_annotations=coco/annotations/person_keypoints_val2017.json \
      --config.data.val_images=coco/val2017

The official runs start from the ctdet DLA-34 2x model (``--load_model ctdet_coco_dla_2x.pth``):
convert it (``python -m centernet_jax.convert --format centernet --arch dla_34 --input
ctdet_coco_dla_2x.pth --output runs/zoo_dla34_2x``) and name it as ``config.init``, as above.
Backbone, neck, wh and reg are copied; the 80-class hm output conv and the pose heads (hps,
hm_hp, hp_offset) start afresh, and the log lists them (the official loader skips them too).

Evaluating the converted zoo pose weights (``--format centernet --arch dla_34`` reads the pose
heads from the file):

  python -m centernet_jax.convert --format centernet --arch dla_34 \
      --input multi_pose_dla_3x.pth --output runs/zoo_pose_dla34_3x
  python -m centernet_jax.evaluate --config configs/multi_pose_dla34_coco.py \
      --workdir runs/zoo_pose_dla34_3x --config.model.dtype=float32 \
      --config.data.val_annotations=coco/annotations/person_keypoints_val2017.json \
      --config.data.val_images=coco/val2017

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib, tasks


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, schedule='1x')
  c = config_lib.coco_config(task='multi_pose', arch='dla', depth=34, batch_size=128, lr=5e-4)
  c.data.source = 'coco_json'  # person_keypoints_*.json: TFDS coco/2017 has no keypoints
  c.model.num_classes = 1  # person
  c.model.heads = tasks.get('multi_pose').heads(1, c)
  c.model.head_conv = 256  # official default for DLA
  c.model.head_init = 'dla'  # official pose_dla_dcn head init
  c.model.deconv_init = 'bilinear'
  c.eval.flip_test = True  # every official multi_pose number is with flip
  if arg.schedule == '1x':
    c.train.num_epochs, c.optim.lr_steps = 140, (90, 120)
  elif arg.schedule == '3x':
    c.train.num_epochs, c.optim.lr_steps = 320, (270, 300)
  else:
    raise ValueError(f"schedule must be '1x' or '3x', got {arg.schedule!r}")
  return c

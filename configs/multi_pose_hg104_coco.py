r"""CenterNet human pose (multi_pose) with Hourglass-104 on COCO keypoints 2017, the official
``multi_pose_hg_1x`` / ``_3x``.

Official recipes (experiments/multi_pose_hg_{1x,3x}.sh): batch 24, lr 2.5e-4, 512x512 input,
1x: 50 epochs with a decay at 40, 3x: 150 epochs with a decay at 130; evaluated with flip at
keep-resolution, padded to a multiple of 128 (``--pad 127``). Zoo (COCO keypoints val2017, flip,
docs/parity.md 4.12): 1x 58.7 keypoint AP, 3x 64.0. One class (person), 17 joints, at most 32
people per image; training uses only the train2017 images with at least one annotation (64,115).

The data are the COCO person keypoints jsons with the 2017 image folders (TFDS coco/2017 has no
keypoints):

  python -m centernet_jax.train --config configs/multi_pose_hg104_coco.py:schedule=3x \
      --workdir runs/pose_hg104_3x --config.init=runs/zoo_hg104 \
      --config.data.train_annotations=coco/annotations/person_keypoints_train2017.json \
      --config.data.train_images=coco/train2017 \
      --config.data.val_annotations=coco/annotations/person_keypoints_val2017.json \
      --config.data.val_images=coco/val2017

The official runs start from the ctdet Hourglass-104 model (``--load_model ctdet_coco_hg.pth``):
convert it (``python -m centernet_jax.convert --format centernet --arch hourglass --input
ctdet_coco_hg.pth --output runs/zoo_hg104``) and name it as ``config.init``, as above. Backbone,
wh and reg are copied; the 80-class hm output convs and the pose heads (hps, hm_hp, hp_offset)
start afresh, and the log lists them (the official loader skips them too).

Evaluating the converted zoo pose weights (``--format centernet --arch hourglass`` reads the pose
heads from the file):

  python -m centernet_jax.convert --format centernet --arch hourglass \
      --input multi_pose_hg_3x.pth --output runs/zoo_pose_hg104_3x
  python -m centernet_jax.evaluate --config configs/multi_pose_hg104_coco.py \
      --workdir runs/zoo_pose_hg104_3x --config.model.dtype=float32 \
      --config.data.val_annotations=coco/annotations/person_keypoints_val2017.json \
      --config.data.val_images=coco/val2017

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib, tasks


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, schedule='1x')
  c = config_lib.coco_config(task='multi_pose', arch='hourglass', depth=104, batch_size=24,
                             lr=2.5e-4)
  c.data.source = 'coco_json'  # person_keypoints_*.json: TFDS coco/2017 has no keypoints
  c.model.num_classes = 1  # person
  c.model.heads = tasks.get('multi_pose').heads(1, c)
  c.model.head_conv = 256  # official: the hourglass heads are as wide as the stack
  c.data.eval_pad = 127  # official --pad 127 for hourglass: inputs are multiples of 128
  c.eval.flip_test = True  # every official multi_pose number is with flip
  if arg.schedule == '1x':
    c.train.num_epochs, c.optim.lr_steps = 50, (40,)
  elif arg.schedule == '3x':
    c.train.num_epochs, c.optim.lr_steps = 150, (130,)
  else:
    raise ValueError(f"schedule must be '1x' or '3x', got {arg.schedule!r}")
  return c

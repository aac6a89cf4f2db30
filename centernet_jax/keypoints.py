"""COCO person-keypoint conventions shared by data, task, evaluation and drawing (numpy only).

The 17 COCO joints, their 19 limbs (0-based; the json's ``skeleton`` is 1-based), the official
left/right flip pairs (CenterNet ``flip_idx``), pycocotools' OKS sigmas, and the joint order of a
mirrored image. Readers fall back to these when a data set or checkpoint names none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COCO_KEYPOINT_NAMES = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip',
    'left_knee', 'right_knee', 'left_ankle', 'right_ankle')
COCO_NUM_JOINTS = len(COCO_KEYPOINT_NAMES)
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# pycocotools' per-joint OKS sigmas of the 17 COCO joints (COCOeval Params.kpt_oks_sigmas).
COCO_OKS_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                   0.107, 0.107, 0.087, 0.087, 0.089, 0.089)


def check_flip_pairs(num_joints: int, flip_pairs: Sequence[Sequence[int]]) -> None:
  """Raises ValueError naming ``config.data.flip_pairs`` unless they are pairs of two different
  joints in [0, num_joints), each joint in one pair at most."""
  pairs = tuple(tuple(p) for p in flip_pairs)
  joints = [j for p in pairs for j in p]
  if (not all(len(p) == 2 for p in pairs)
      or not all(isinstance(j, int | np.integer) and not isinstance(j, bool)
                 and 0 <= j < num_joints for j in joints)
      or len(set(joints)) != len(joints)):
    raise ValueError(f'config.data.flip_pairs={pairs!r} must be pairs of distinct 0-based joint '
                     f'indices in [0, {num_joints}) (config.data.num_joints), each joint in at '
                     'most one pair')


def flip_permutation(num_joints: int, flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
  """[J] int32 joint order of a mirrored image: ``perm[a] = b`` and ``perm[b] = a`` per pair.

  Raises:
    ValueError: bad pairs (:func:`check_flip_pairs`).
  """
  check_flip_pairs(num_joints, flip_pairs)
  perm = np.arange(num_joints, dtype=np.int32)
  for a, b in flip_pairs:
    perm[a], perm[b] = b, a
  return perm

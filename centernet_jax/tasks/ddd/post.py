"""The ddd host post-process (numpy): alpha, rotation_y and the 3D box from the decoded heads.

Official CenterNet ``utils/ddd_utils.py`` and ``utils/post_process.py: ddd_post_process_3d``
(docs/parity.md 4.13). No JAX or TensorFlow here: a served model's outputs go through
:func:`objects_3d` on any host.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from centernet_jax.data import kitti as kitti_data


def alpha_from_rot(rot: np.ndarray) -> np.ndarray:
  """Official ``get_alpha``: alpha of the bin whose second logit is strictly larger.

  Bin 1 gives atan2(sin1, cos1) - pi/2, bin 2 atan2(sin2, cos2) + pi/2; ties go to bin 2; not
  wrapped (within (-3pi/2, 3pi/2]).

  Args:
    rot: [..., 8] decoded rot values.

  Returns:
    [...] float32 alpha.
  """
  rot = np.asarray(rot, np.float32)
  alpha1 = np.arctan2(rot[..., 2], rot[..., 3]) + np.float32(-0.5 * np.pi)
  alpha2 = np.arctan2(rot[..., 6], rot[..., 7]) + np.float32(0.5 * np.pi)
  return np.where(rot[..., 1] > rot[..., 5], alpha1, alpha2).astype(np.float32)


def alpha_to_rotation_y(alpha: np.ndarray, u: np.ndarray, cx: float, fx: float) -> np.ndarray:
  """Official ``alpha2rot_y``: alpha + atan2(u - cx, fx), wrapped into [-pi, pi] once.

  Args:
    alpha: [...] observation angles; u: [...] image x of the object centre (pixels);
    cx, fx: principal point x and focal length of P2.
  """
  rot_y = (np.asarray(alpha, np.float32)
           + np.arctan2(np.asarray(u, np.float32) - np.float32(cx), np.float32(fx)))
  rot_y = np.where(rot_y > np.pi, rot_y - 2 * np.pi, rot_y)
  return np.where(rot_y < -np.pi, rot_y + 2 * np.pi, rot_y).astype(np.float32)


def unproject(centers: np.ndarray, depth: np.ndarray, calib: np.ndarray) -> np.ndarray:
  """Official ``unproject_2d_to_3d``: the 3D point at ``depth`` seen at image point ``centers``.

  z = d - P[2, 3]; x = (u d - P[0, 3] - P[0, 2] z) / P[0, 0]; y = (v d - P[1, 3] - P[1, 2] z) /
  P[1, 1] (exact for KITTI's P2, whose first three columns are upper triangular with
  P[0, 1] = 0).

  Args:
    centers: [..., 2] (u, v) pixels; depth: [...] metres; calib: [3, 4] P2.

  Returns:
    [..., 3] float32 (x, y, z) in camera coordinates.
  """
  p = np.asarray(calib, np.float32)
  c = np.asarray(centers, np.float32)
  d = np.asarray(depth, np.float32)
  z = d - p[2, 3]
  x = (c[..., 0] * d - p[0, 3] - p[0, 2] * z) / p[0, 0]
  y = (c[..., 1] * d - p[1, 3] - p[1, 2] * z) / p[1, 1]
  return np.stack([x, y, z], axis=-1).astype(np.float32)


def locate(centers: np.ndarray, depth: np.ndarray, dims: np.ndarray, alpha: np.ndarray,
           calib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Official ``ddd2locrot``: bottom-centre location and rotation_y of boxes seen at ``centers``.

  location = :func:`unproject` (centre, depth) with y moved down by h / 2 (the 2D centre is taken
  as the 3D box's middle); rotation_y = :func:`alpha_to_rotation_y` (alpha, u).

  Args:
    centers: [..., 2] (u, v) pixels; depth: [...]; dims: [..., 3] (h, w, l); alpha: [...];
    calib: [3, 4] P2.

  Returns:
    (locations [..., 3], rotation_y [...]) float32.
  """
  calib = np.asarray(calib, np.float32)
  if calib.shape != (3, 4):
    raise ValueError(f'calib must be the 3 x 4 P2, got shape {calib.shape}')
  centers = np.asarray(centers, np.float32)
  locations = unproject(centers, depth, calib)
  locations[..., 1] += np.asarray(dims, np.float32)[..., 0] / 2
  return locations, alpha_to_rotation_y(alpha, centers[..., 0], calib[0, 2], calib[0, 0])


def objects_3d(dets: Mapping[str, np.ndarray], calib: np.ndarray, *,
               official_2d_box: bool = False) -> dict[str, np.ndarray]:
  """The official 3D post-process of one image's detections (``ddd_post_process_3d``).

  Args:
    dets: one image's detections in original pixels (after the pipeline maps ``POINT_KEYS``):
      centers [K, 2], boxes [K, 4], wh [K, 2] (the size mapped like a point), scores [K],
      classes [K], rot [K, 8], depth [K], dims [K, 3].
    calib: [3, 4] P2 in original image pixels.
    official_2d_box: the official box centre -+ wh / 2 with wh mapped like a point (wrong;
      parity only) instead of ``boxes``.

  Returns:
    dict classes [K] int32, scores [K], alpha [K], boxes [K, 4] xyxy, dims [K, 3] (h, w, l),
    locations [K, 3] (bottom centre), rotation_y [K], corners [K, 8, 3], float32 unless said.
  """
  dims = np.asarray(dets['dims'], np.float32)
  alpha = alpha_from_rot(dets['rot'])
  locations, rotation_y = locate(dets.get('centers3d', dets['centers']), dets['depth'], dims,
                                 alpha, calib)
  return {'classes': np.asarray(dets['classes'], np.int32),
          'scores': np.asarray(dets['scores'], np.float32), 'alpha': alpha,
          'boxes': boxes_2d(dets, official_2d_box), 'dims': dims, 'locations': locations,
          'rotation_y': rotation_y,
          'corners': kitti_data.box3d_corners(dims, locations, rotation_y).astype(np.float32)}


def boxes_2d(dets: Mapping[str, np.ndarray], official: bool) -> np.ndarray:
  """[K, 4] xyxy: ``boxes``, or the official centre -+ wh / 2 with wh mapped like a point."""
  if not official:
    return np.asarray(dets['boxes'], np.float32)
  centers = np.asarray(dets['centers'], np.float32)
  half = np.asarray(dets['wh'], np.float32) / 2
  return np.concatenate([centers - half, centers + half], axis=-1)


def ddd_post_process(dets: Mapping[str, np.ndarray], calibs: np.ndarray, *,
                     official_2d_box: bool = False, first_image_calib: bool = False,
                     peak_thresh: float = 0.2) -> list[dict[str, np.ndarray]]:
  """The host post-process of a batch: :func:`objects_3d` per image, scores > ``peak_thresh``.

  Args:
    dets: batch detections in original pixels ([B, K, ...], see :func:`objects_3d`).
    calibs: [B, 3, 4] each image's P2.
    official_2d_box: see :func:`objects_3d`.
    first_image_calib: the official (wrong for B > 1) use of the first image's P2 for all.
    peak_thresh: official ``--peak_thresh`` (merge_outputs keeps scores strictly above it).

  Returns:
    One :func:`objects_3d` dict per image, detections above the threshold only.
  """
  calibs = np.asarray(calibs, np.float32)
  out = []
  for i in range(np.asarray(dets['scores']).shape[0]):
    one = {k: np.asarray(v)[i] for k, v in dets.items() if k != 'valid'}
    objs = objects_3d(one, calibs[0] if first_image_calib else calibs[i],
                      official_2d_box=official_2d_box)
    keep = objs['scores'] > peak_thresh
    out.append({k: v[keep] for k, v in objs.items()})
  return out

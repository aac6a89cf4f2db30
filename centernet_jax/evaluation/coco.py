"""COCO box and keypoint evaluation with pycocotools, matching the official CenterNet test script.

Detections are converted to the COCO results format the way official CenterNet does it
(``datasets/dataset/coco.py`` and ``coco_hp.py: convert_eval_format``): contiguous label ->
original category id, xyxy -> xywh, keypoints as x, y, 1 triples, bbox, keypoints and score
rounded to 2 decimals. Evaluation runs over EVERY image of the
ground truth by default, so images without detections count as misses (unlike evaluators that
set ``imgIds`` to the images with detections, which inflates AP; docs/parity.md 4.11).

The ground truth is the one the data loader trains and reports on: annotations whose box has zero
or negative size, or lies entirely outside its image, are left out (pycocotools would count them
as objects no detection can match; ``data.errors.bbox_problem``), with one log line. When the
evaluated images hold no ground truth at all, the log says so next to the metrics (pycocotools
then reports -1 everywhere).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from centernet_jax.data.errors import bbox_problem

# Order of COCOeval.stats (the first nine entries).
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100')
# Order of COCOeval.stats for iouType 'keypoints' (OKS instead of IoU; 20 detections per image).
KEYPOINT_METRIC_NAMES = ('kp_AP', 'kp_AP50', 'kp_AP75', 'kp_APm', 'kp_APl', 'kp_AR', 'kp_AR50',
                         'kp_AR75', 'kp_ARm', 'kp_ARl')

GroundTruth = str | os.PathLike | Mapping[str, Any] | COCO


def _round2(x: float) -> float:
  # Official CenterNet: float("{:.2f}".format(x)) for bbox values and score.
  return float(f'{x:.2f}')


def detections_to_coco(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    image_id: int,
    category_ids: Sequence[int],
    round_results: bool = True,
    keypoints: np.ndarray | None = None,
) -> list[dict[str, Any]]:
  """Converts one image's detections to COCO results entries.

  Args:
    boxes: [N, 4] xyxy boxes in original image pixels (float32 keeps official arithmetic).
    scores: [N] scores.
    labels: [N] int contiguous labels in [0, len(category_ids)).
    image_id: the COCO image id.
    category_ids: label -> original COCO category id (e.g. the 80 -> 90-id mapping).
    round_results: round bbox values, keypoints and score to 2 decimals like the official code.
    keypoints: optional [N, J, 2] x, y of each detection's joints in original image pixels.

  Returns:
    N dicts {'image_id': int, 'category_id': int, 'bbox': [x, y, w, h], 'score': float} of plain
    Python numbers (json-serialisable), in input order; with ``keypoints`` each also has
    'keypoints': [x1, y1, 1, ..., xJ, yJ, 1] (3J numbers, visibility written as 1 as the
    official code does).
  """
  boxes = np.asarray(boxes)
  if not np.issubdtype(boxes.dtype, np.floating):
    boxes = boxes.astype(np.float32)
  boxes = boxes.reshape(-1, 4)
  scores = np.asarray(scores).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if not len(boxes) == len(scores) == len(labels):
    raise ValueError(
      f'boxes, scores and labels disagree in length: {len(boxes)}, {len(scores)}, {len(labels)}')
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    if not np.all(labels == np.round(labels)):
      raise ValueError(f'labels must be integers, got {labels.dtype}')
    labels = labels.astype(np.int64)
  cat_table = np.asarray(category_ids, dtype=np.int64).reshape(-1)
  bad = labels[(labels < 0) | (labels >= len(cat_table))]
  if bad.size:
    raise ValueError(
      f'labels {sorted(set(bad.tolist()))} out of range for {len(cat_table)} category ids')

  xywh = boxes.copy()
  xywh[:, 2:] -= boxes[:, :2]  # In the boxes' own dtype, as the official float32 code.
  fmt = _round2 if round_results else float
  cats = cat_table[labels.astype(np.int64)].tolist()
  out = [
    {'image_id': int(image_id), 'category_id': int(c), 'bbox': [fmt(v) for v in b],
     'score': fmt(s)}
    for b, s, c in zip(xywh.tolist(), scores.tolist(), cats, strict=True)
  ]
  if keypoints is not None:
    keypoints = np.asarray(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[0] != len(out) or keypoints.shape[2] != 2:
      raise ValueError(f'keypoints must be [N={len(out)}, J, 2], got shape {keypoints.shape}')
    if not np.issubdtype(keypoints.dtype, np.floating):
      keypoints = keypoints.astype(np.float32)
    triples = np.concatenate([keypoints, np.ones_like(keypoints[..., :1])], axis=-1)
    for det, kps in zip(out, triples.reshape(len(out), 3 * keypoints.shape[1]).tolist(),
                        strict=True):
      det['keypoints'] = [fmt(v) for v in kps]
  return out


def _quiet(fn: Callable[[], Any]) -> tuple[Any, str]:
  """Runs fn with stdout captured (pycocotools prints progress); returns (result, text)."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    out = fn()
  return out, buf.getvalue()


_REPORTED: set = set()  # (ground truth, counts) already logged: once per ground truth


def _kept_annotations(anns: list[dict], images: list[dict], name: str) -> list[dict]:
  """The annotations the data loader keeps: boxes of zero size, or entirely outside their
  image, are left out (logged once per ground truth with the count and the first ids)."""
  sizes = {img.get('id'): (img.get('width') or 0, img.get('height') or 0) for img in images}
  kept, left_out = [], {'degenerate': [], 'outside': []}
  for a in anns:
    bbox = a.get('bbox')
    problem = None
    if isinstance(bbox, list | tuple) and len(bbox) == 4:
      problem = bbox_problem(bbox, *sizes.get(a.get('image_id'), (0, 0)))
    if problem is None:
      kept.append(a)
    else:
      left_out[problem].append(a.get('id'))
  key = (name, tuple(len(v) for v in left_out.values()))
  if any(left_out.values()) and key not in _REPORTED:
    _REPORTED.add(key)
    for problem, ids in left_out.items():
      if ids:
        what = ('zero or negative width or height' if problem == 'degenerate' else
                'entirely outside its image')
        logging.warning('%s: %d ground-truth annotation(s) left out of the evaluation, box %s '
                        '(as in training), ids %s%s', name, len(ids), what, ids[:10],
                        ' ...' if len(ids) > 10 else '')
  return kept


def _gt_dataset(dataset: Mapping[str, Any], name: str = 'COCO ground truth') -> dict[str, Any]:
  """Validates a COCO gt dict and returns a copy with the fields pycocotools needs filled in
  and the annotations the data loader skips left out (:func:`_kept_annotations`)."""
  for key in ('images', 'categories'):
    if key not in dataset:
      raise ValueError(f'COCO ground truth lacks the {key!r} list')
  images = list(dataset['images'])
  image_ids = {img['id'] for img in images}
  anns = [dict(a) for a in dataset.get('annotations') or []]
  given = [a['id'] for a in anns if 'id' in a]
  if len(set(given)) != len(given):
    raise ValueError('COCO ground truth has duplicate annotation ids')
  next_id = max(given, default=0) + 1
  for a in anns:
    if a['image_id'] not in image_ids:
      raise ValueError(f'annotation {a.get("id")} refers to unknown image id {a["image_id"]}')
    if 'id' not in a:
      a['id'], next_id = next_id, next_id + 1
    a.setdefault('iscrowd', 0)
    if 'area' not in a:  # COCO's area is the mask area; the box area is the best stand-in.
      a['area'] = float(a['bbox'][2]) * float(a['bbox'][3])
    if 'keypoints' in a and 'num_keypoints' not in a:  # COCO: joints with v > 0
      a['num_keypoints'] = int(np.count_nonzero(np.asarray(a['keypoints'])[2::3] > 0))
  anns = _kept_annotations(anns, images, name)
  return {
    **dataset,
    'info': dict(dataset.get('info') or {}),
    'licenses': list(dataset.get('licenses') or []),
    'images': images,
    'categories': [dict(c) for c in dataset['categories']],
    'annotations': anns,
  }


def load_gt(gt: GroundTruth) -> COCO:
  """Builds a pycocotools COCO object from a json path, a COCO-format dict or a COCO object.

  A dict is copied (annotations shallowly), not written to disk and not modified; missing
  'info'/'licenses'/'annotations', annotation 'iscrowd' (0), 'area' (box area), 'id' and, with
  keypoints, 'num_keypoints' (count of v > 0) are filled. Annotations whose box has zero or
  negative size, or lies entirely outside its image, are left out, as the data loader skips
  them (logged). A COCO object is used as it is.

  Args:
    gt: path to a COCO instances json, a dict in COCO format, or a COCO object (returned as is).

  Returns:
    An indexed pycocotools COCO object.
  """
  if isinstance(gt, COCO):
    return gt
  name = 'COCO ground truth'
  if isinstance(gt, str | os.PathLike):
    name = os.fspath(gt)
    with open(gt) as f:
      gt = json.load(f)
  if not isinstance(gt, Mapping):
    raise TypeError(f'gt must be a path, a COCO-format dict or a COCO object, got {type(gt)}')
  coco = COCO()
  coco.dataset = _gt_dataset(gt, name)
  _quiet(coco.createIndex)
  return coco


def _clean_detections(coco_gt: COCO, detections: Iterable[Mapping[str, Any]],
                      num_joints: int | None = None) -> list[dict]:
  """Copies detections to plain dicts and checks their ids against the ground truth.

  With ``num_joints``, every detection must carry 'keypoints' (3 * num_joints finite numbers)
  and 'bbox' may be left out; without, 'bbox' is required and keypoints are dropped.
  """
  out, bad_cats, bad_imgs = [], set(), set()
  for i, d in enumerate(detections):
    try:
      det = {'image_id': int(d['image_id']), 'category_id': int(d['category_id']),
             'score': float(d['score'])}
      if num_joints is None or 'bbox' in d:
        det['bbox'] = [float(v) for v in d['bbox']]
      if num_joints is not None:
        det['keypoints'] = [float(v) for v in d['keypoints']]
    except KeyError as e:
      raise ValueError(f'detection {i} lacks key {e}; got {dict(d)}') from None
    if 'bbox' in det and len(det['bbox']) != 4:
      raise ValueError(f'detection {i} bbox must be [x, y, w, h], got {d["bbox"]}')
    if num_joints is not None and (len(det['keypoints']) != 3 * num_joints
                                   or not np.all(np.isfinite(det['keypoints']))):
      raise ValueError(f'detection {i} keypoints must be {3 * num_joints} finite numbers '
                       f'(x, y, v for {num_joints} joints), got {d["keypoints"]}')
    if det['category_id'] not in coco_gt.cats:
      bad_cats.add(det['category_id'])
    if det['image_id'] not in coco_gt.imgs:
      bad_imgs.add(det['image_id'])
    out.append(det)
  if bad_cats:
    raise ValueError(
      f'detections use category ids {sorted(bad_cats)[:20]} that are not in the ground truth '
      f'(known: {sorted(coco_gt.cats)[:100]}); map contiguous labels with category_ids')
  if bad_imgs:
    raise ValueError(
      f'detections use image ids {sorted(bad_imgs)[:20]} (of {len(bad_imgs)}) that are not in '
      'the ground truth')
  return out


def _results_coco(coco_gt: COCO, dets: list[dict]) -> COCO:
  """Same as ``coco_gt.loadRes(dets)`` for boxes and keypoints, but accepts an empty list.

  As in loadRes, a detection's area is its bbox's (official results carry one), or for
  keypoints without a bbox the area of the joints' extent (then also its bbox).
  """
  anns = []
  for i, d in enumerate(dets):
    d = dict(d)
    if 'bbox' not in d:
      x, y = np.asarray(d['keypoints'][0::3]), np.asarray(d['keypoints'][1::3])
      x0, y0 = float(x.min()), float(y.min())
      d['bbox'] = [x0, y0, float(x.max()) - x0, float(y.max()) - y0]
    w, h = d['bbox'][2], d['bbox'][3]
    anns.append({**d, 'area': w * h, 'id': i + 1, 'iscrowd': 0})
  res = COCO()
  res.dataset = {
    'info': copy.deepcopy(coco_gt.dataset.get('info', {})),
    'images': list(coco_gt.dataset['images']),
    'categories': copy.deepcopy(coco_gt.dataset['categories']),
    'annotations': anns,
  }
  _quiet(res.createIndex)
  return res


def _load_detections(detections: Sequence[Mapping[str, Any]] | str | os.PathLike):
  if isinstance(detections, str | os.PathLike):
    with open(detections) as f:
      return json.load(f)
  return detections


def _check_image_ids(coco_gt: COCO, image_ids: Iterable[int] | None) -> list[int]:
  if image_ids is None:
    return sorted(coco_gt.getImgIds())
  image_ids = sorted({int(i) for i in image_ids})
  unknown = [i for i in image_ids if i not in coco_gt.imgs]
  if unknown:
    raise ValueError(f'image_ids {unknown[:20]} are not in the ground truth')
  if not image_ids:
    raise ValueError('image_ids is empty')
  return image_ids


def _no_ground_truth(coco_gt: COCO, image_ids: list[int], cat_ids: Sequence[int] | None = None,
                     keypoints: bool = False) -> str | None:
  """Why every metric will be -1 (no ground truth pycocotools scores in ``image_ids``), or None.

  pycocotools ignores crowd annotations and, for keypoints, people without labelled joints.
  """
  wanted = set(image_ids)
  anns = [a for a in coco_gt.dataset['annotations'] if a['image_id'] in wanted
          and (cat_ids is None or a['category_id'] in cat_ids)]
  scored = [a for a in anns if not a.get('iscrowd')
            and (not keypoints or a.get('num_keypoints', 0) > 0)]
  if scored:
    return None
  what = 'people with labelled joints' if keypoints else 'objects'
  return (f'no ground truth to score: the {len(image_ids)} evaluated images hold no {what} '
          f'({len(anns)} annotations, {sum(bool(a.get("iscrowd")) for a in anns)} of them crowd'
          '), so pycocotools reports -1 for every metric; give the validation split annotated '
          'objects')


def _run_cocoeval(coco_eval: COCOeval, image_ids: list[int], header: str,
                  log: Callable[[str], Any] | None, why_empty: str | None = None) -> np.ndarray:
  """evaluate + accumulate + summarize over ``image_ids``; logs the summary (and
  ``why_empty``, the reason every metric is -1, also as a warning); returns stats."""
  coco_eval.params.imgIds = image_ids
  if why_empty is not None:
    logging.warning('%s', why_empty)
    header = f'{header}\n{why_empty}'

  def run():
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

  _, text = _quiet(run)
  if log is not None:
    log(header + '\n' + text.rstrip('\n'))
  return coco_eval.stats


def evaluate_detections(
    gt: GroundTruth,
    detections: Sequence[Mapping[str, Any]] | str | os.PathLike,
    image_ids: Iterable[int] | None = None,
    log: Callable[[str], Any] | None = print,
) -> dict[str, float]:
  """COCO box AP/AR of detections with pycocotools (iouType 'bbox').

  Args:
    gt: ground truth, as accepted by :func:`load_gt`.
    detections: COCO results entries ({'image_id', 'category_id' (original id), 'bbox' xywh,
      'score'}, other keys ignored), or the path of such a json list. Not modified. May be empty.
    image_ids: images to evaluate; default every image of gt (images without detections count).
      Detections on gt images outside this set are ignored, as pycocotools does.
    log: called once with pycocotools' printed output (progress and the standard 12-line
      summary); None to stay silent.

  Returns:
    {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100'} as Python floats in [0, 1]
    (COCOeval.stats order). As in pycocotools, a metric with no ground truth at all (e.g. APl
    when there are no large objects) is -1; when the images hold no ground truth at all
    (every metric -1) the log says so.

  Raises:
    ValueError: detections with category or image ids absent from gt, or unknown image_ids.
  """
  coco_gt = load_gt(gt)
  dets = _clean_detections(coco_gt, _load_detections(detections))
  image_ids = _check_image_ids(coco_gt, image_ids)
  coco_eval = COCOeval(coco_gt, _results_coco(coco_gt, dets), 'bbox')
  stats = _run_cocoeval(
      coco_eval, image_ids,
      f'COCO bbox evaluation: {len(dets)} detections on {len(image_ids)} images', log,
      _no_ground_truth(coco_gt, image_ids))
  return {name: float(v) for name, v in zip(METRIC_NAMES, stats, strict=False)}


def _keypoint_categories(coco_gt: COCO) -> tuple[list[int], int]:
  """(category ids with keypoints, J) of the ground truth, checking every annotation of them.

  A category has keypoints when its entry names them ('keypoints' list, the COCO convention) or
  one of its annotations carries them.
  """
  anns = coco_gt.dataset['annotations']
  cat_ids = sorted({c['id'] for c in coco_gt.dataset['categories'] if c.get('keypoints')}
                   | {a['category_id'] for a in anns if 'keypoints' in a})
  if not cat_ids:
    raise ValueError('the ground truth has no keypoints (no category lists them and no '
                     'annotation carries them): not a COCO keypoints file')
  lengths = {}
  for a in anns:
    if a['category_id'] not in cat_ids:
      continue
    if 'keypoints' not in a:
      raise ValueError(f'ground-truth annotation {a["id"]} (category {a["category_id"]}) has no '
                       "'keypoints' although its category has keypoints")
    lengths.setdefault(len(a['keypoints']), a['id'])
  if len(lengths) > 1 or any(n % 3 for n in lengths):
    raise ValueError('ground-truth keypoints must all be 3J numbers (x, y, v per joint); found '
                     + ', '.join(f'{n} (annotation {i})' for n, i in lengths.items()))
  num_joints = next(iter(lengths), 0) // 3
  if not num_joints:  # no annotation: the count of the categories' names
    names = {len(c.get('keypoints') or ()) for c in coco_gt.dataset['categories']
             if c['id'] in cat_ids}
    num_joints = max(names)
  return cat_ids, num_joints


def evaluate_keypoints(
    gt: GroundTruth,
    detections: Sequence[Mapping[str, Any]] | str | os.PathLike,
    image_ids: Iterable[int] | None = None,
    log: Callable[[str], Any] | None = print,
    oks_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
  """COCO keypoint AP/AR (OKS) of detections with pycocotools (iouType 'keypoints').

  OKS of a detection and a ground-truth person with joints (x_j, y_j), visibility v_j and area
  s: ``mean over v_j > 0 of exp(-d_j^2 / (2 s (2 sigma_j)^2))``, d_j the joint distance.

  Args:
    gt: ground truth, as accepted by :func:`load_gt` (COCO person-keypoints format: annotations
      with 'keypoints' [x1, y1, v1, ...] and 'num_keypoints', filled from v > 0 when absent).
      Only the categories with keypoints are evaluated.
    detections: COCO results entries ({'image_id', 'category_id', 'keypoints' (3J numbers;
      the visibilities are not used), 'score', 'bbox' (optional: its area filters detections by
      area range as in loadRes)}), or the path of such a json list. Not modified. May be empty.
    image_ids: images to evaluate; default every image of gt.
    log: called once with pycocotools' printed output; None to stay silent.
    oks_sigmas: [J] per-joint OKS sigma (``config.eval.oks_sigmas``); None: pycocotools' COCO
      values, which need J = 17.

  Returns:
    {'kp_AP', 'kp_AP50', 'kp_AP75', 'kp_APm', 'kp_APl', 'kp_AR', 'kp_AR50', 'kp_AR75', 'kp_ARm',
    'kp_ARl'} as Python floats (COCOeval.stats order; -1 where there is no ground truth).

  Raises:
    ValueError: no keypoints in gt, J disagreeing between gt, detections and oks_sigmas, bad
      ids (as :func:`evaluate_detections`).
  """
  coco_gt = load_gt(gt)
  cat_ids, num_joints = _keypoint_categories(coco_gt)
  if oks_sigmas is None:
    oks_sigmas = Params(iouType='keypoints').kpt_oks_sigmas
  sigmas = np.asarray(oks_sigmas, np.float64).reshape(-1)
  if len(sigmas) != num_joints:
    raise ValueError(f'{len(sigmas)} OKS sigmas for {num_joints} joints in the ground truth: set '
                     f'config.eval.oks_sigmas to {num_joints} values')
  if np.any(~np.isfinite(sigmas) | (sigmas <= 0)):
    raise ValueError(f'OKS sigmas must be positive, got {sigmas.tolist()}')
  # Detections of categories without keypoints (a box-only class) are not part of this metric.
  other = set(coco_gt.cats) - set(cat_ids)
  dets = [d for d in _load_detections(detections) if d.get('category_id') not in other]
  dets = _clean_detections(coco_gt, dets, num_joints=num_joints)
  image_ids = _check_image_ids(coco_gt, image_ids)
  coco_eval = COCOeval(coco_gt, _results_coco(coco_gt, dets), 'keypoints')
  coco_eval.params.catIds = cat_ids
  coco_eval.params.kpt_oks_sigmas = sigmas
  stats = _run_cocoeval(
      coco_eval, image_ids,
      f'COCO keypoints evaluation: {len(dets)} detections on {len(image_ids)} images', log,
      _no_ground_truth(coco_gt, image_ids, cat_ids, keypoints=True))
  return {name: float(v) for name, v in zip(KEYPOINT_METRIC_NAMES, stats, strict=True)}


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.floating):
    return float(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'{type(obj).__name__} is not JSON serialisable')


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
  """Writes obj as json atomically (temporary file + os.replace), creating parent folders.

  Numpy scalars and arrays are converted to Python numbers and lists.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    with open(tmp, 'w') as f:
      json.dump(obj, f, default=_json_default, indent=indent)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

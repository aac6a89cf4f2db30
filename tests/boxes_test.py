"""Tests for centernet_jax.boxes against closed-form and loop oracles."""

import numpy as np
import pytest

from centernet_jax import boxes


def _similarity_oracle(center, scale, output_size, shift=(0.0, 0.0)):
  """rot = 0 official affine in closed form: zoom k = dst_w / scale_w, no rotation,
  and the (shifted) crop centre lands on the canvas centre."""
  scale = np.broadcast_to(np.asarray(scale, np.float64), (2,))
  k = output_size[0] / scale[0]
  src_c = np.asarray(center, np.float64) + scale * np.asarray(shift, np.float64)
  return np.array([[k, 0.0, output_size[0] / 2 - k * src_c[0]],
                   [0.0, k, output_size[1] / 2 - k * src_c[1]]])


def _affine_loop(points, m):
  out = np.zeros_like(points, np.float64)
  for i in range(points.shape[0]):
    out[i] = np.dot(m, np.array([points[i, 0], points[i, 1], 1.0]))
  return out


def _iou_loop(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = iw * ih
      area_p = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1])
      area_q = max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])
      union = area_p + area_q - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


@pytest.mark.parametrize('center, scale, output_size, shift, expected', [
    # k = 50 / 200 = 0.25; t = (25 - 0.25 * 100, 25 - 0.25 * 50).
    ((100, 50), 200, (50, 50), (0, 0), [[0.25, 0, 0], [0, 0.25, 12.5]]),
    # Non-square scale: only scale[0] sets the zoom (k = 32 / 128).
    ((64, 32), (128, 64), (32, 16), (0, 0), [[0.25, 0, 0], [0, 0.25, 0]]),
    # Shift moves the source centre by scale * shift = (10, -10) -> (20, 10); k = 2.
    ((10, 20), (100, 50), (200, 100), (0.1, -0.2), [[2, 0, 60], [0, 2, 30]]),
    # Identity: centre of a 128 canvas, scale 128.
    ((64, 64), 128, (128, 128), (0, 0), [[1, 0, 0], [0, 1, 0]]),
])
def test_get_affine_transform_known_values(center, scale, output_size, shift, expected):
  m = boxes.get_affine_transform(center, scale, output_size, shift=shift)
  assert m.shape == (2, 3) and m.dtype == np.float32
  np.testing.assert_allclose(m, expected, atol=1e-5)


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('inv', [False, True])
def test_get_affine_transform_random(seed, inv):
  rng = np.random.default_rng(seed)
  center = rng.uniform(0, 800, 2)
  scale = rng.uniform(50, 1000, 2) if seed % 2 else float(rng.uniform(50, 1000))
  output_size = tuple(int(v) for v in rng.integers(16, 600, 2))
  shift = rng.uniform(-0.3, 0.3, 2)
  m = boxes.get_affine_transform(center, scale, output_size, inv=inv, shift=shift)
  oracle = _similarity_oracle(center, scale, output_size, shift)
  if inv:
    full = np.vstack([oracle, [0, 0, 1]])
    oracle = np.linalg.inv(full)[:2]
  np.testing.assert_allclose(m, oracle, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('seed', range(4))
def test_solve_affine_maps_points(seed):
  rng = np.random.default_rng(seed)
  src = rng.uniform(-50, 50, (3, 2))
  true = rng.normal(size=(2, 3))
  dst = _affine_loop(src, true)
  np.testing.assert_allclose(boxes.solve_affine(src, dst), true, atol=1e-9)


@pytest.mark.parametrize('seed', range(4))
def test_affine_transform_matches_loop(seed):
  rng = np.random.default_rng(seed)
  pts = rng.uniform(-100, 100, (7, 2))
  m = rng.normal(size=(2, 3))
  np.testing.assert_allclose(boxes.affine_transform(pts, m), _affine_loop(pts, m), rtol=1e-5,
                             atol=1e-4)
  # Leading dimensions are preserved.
  got = boxes.affine_transform(pts.reshape(7, 1, 2), m)
  assert got.shape == (7, 1, 2)


@pytest.mark.parametrize('seed', range(6))
def test_transform_preds_round_trip(seed):
  rng = np.random.default_rng(seed)
  img_w, img_h = rng.integers(100, 700, 2)
  center = np.array([img_w / 2, img_h / 2], np.float32)
  scale = (max(img_w, img_h) * rng.uniform(0.6, 1.3) if seed % 2 else
           np.array([img_w + 1, img_h + 1], np.float32))
  out_size = (128, 128) if seed % 2 else (int(img_w // 4), int(img_h // 4))
  x1y1 = rng.uniform(0, [img_w, img_h], (5, 2))
  x2y2 = x1y1 + rng.uniform(1, 100, (5, 2))
  orig = np.concatenate([x1y1, x2y2], axis=1)
  fwd = boxes.get_affine_transform(center, scale, out_size)
  out = _affine_loop(orig.reshape(-1, 2), fwd.astype(np.float64)).reshape(5, 4)
  back = boxes.transform_preds(out, center, scale, out_size)
  assert back.shape == (5, 4)
  np.testing.assert_allclose(back, orig, rtol=1e-4, atol=2e-2)


@pytest.mark.parametrize('seed', range(4))
def test_box_iou_matches_loop(seed):
  rng = np.random.default_rng(seed)
  a = np.concatenate([rng.uniform(0, 50, (5, 2)), np.zeros((5, 2))], axis=1)
  a[:, 2:] = a[:, :2] + rng.uniform(0, 30, (5, 2))
  b = np.concatenate([rng.uniform(0, 50, (4, 2)), np.zeros((4, 2))], axis=1)
  b[:, 2:] = b[:, :2] + rng.uniform(0, 30, (4, 2))
  b[0] = a[0]  # identical pair
  b[1] = [a[1, 0], a[1, 1], a[1, 0], a[1, 1] + 5]  # zero width
  got = boxes.box_iou(a, b)
  assert got.shape == (5, 4)
  np.testing.assert_allclose(got, _iou_loop(a, b), rtol=1e-5, atol=1e-6)
  assert got[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize('a, b, expected', [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
    ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
    ([0, 0, 10, 10], [10, 10, 20, 20], 0.0),  # touching corners
    ([3, 3, 3, 3], [3, 3, 3, 3], 0.0),  # empty union
])
def test_box_iou_known(a, b, expected):
  assert boxes.box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize('seed', range(3))
def test_xyxy_xywh(seed):
  rng = np.random.default_rng(seed)
  xywh = rng.uniform(0, 100, (2, 3, 4))
  xyxy = boxes.xywh_to_xyxy(xywh)
  np.testing.assert_allclose(xyxy[..., 2], xywh[..., 0] + xywh[..., 2])
  np.testing.assert_allclose(xyxy[..., 3], xywh[..., 1] + xywh[..., 3])
  np.testing.assert_allclose(boxes.xyxy_to_xywh(xyxy), xywh, atol=1e-9)
  np.testing.assert_allclose(boxes.xyxy_to_xywh(np.array([1.0, 2.0, 4.0, 8.0])),
                             [1.0, 2.0, 3.0, 6.0])


# --- Letterbox -------------------------------------------------------------------------------


def _warp_loop(image, trans, out_hw):
  """cv2.warpAffine (bilinear, zero border) pixel by pixel: out(p) = image(trans^-1 p)."""
  inv = np.linalg.inv(np.vstack([np.asarray(trans, np.float64), [0, 0, 1]]))
  h, w = image.shape[:2]
  out = np.zeros(tuple(out_hw) + image.shape[2:])
  for y in range(out_hw[0]):
    for x in range(out_hw[1]):
      sx, sy = inv[0] @ [x, y, 1], inv[1] @ [x, y, 1]
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
        for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
          if 0 <= yy < h and 0 <= xx < w:
            out[y, x] += wy * wx * image[yy, xx]
  return out


@pytest.mark.parametrize('orig_hw,mode,pad,size,expected', [
    ((60, 80), 'keep_res', 31, 512, (64, 96)),
    ((64, 64), 'keep_res', 31, 512, (96, 96)),  # an exact multiple still gets a border
    ((427, 640), 'keep_res', 127, 512, (512, 768)),
    ((427, 640), 'fixed_res', 127, 512, (512, 512)),
])
def test_canvas_hw(orig_hw, mode, pad, size, expected):
  assert boxes.canvas_hw(orig_hw, mode, pad=pad, size=size) == expected


def test_unknown_letterbox_mode_is_named():
  with pytest.raises(ValueError, match="'keep_res' or 'fixed_res', got 'crop'"):
    boxes.canvas_hw((10, 10), 'crop')


@pytest.mark.parametrize('seed', range(3))
def test_warp_affine_matches_loop(seed):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 255, (9, 13, 2)).astype(np.float32)
  zoom = rng.uniform(0.5, 2.0)
  trans = np.array([[zoom, 0, rng.uniform(-3, 3)], [0, zoom, rng.uniform(-3, 3)]])
  if seed == 2:  # not axis aligned
    trans[0, 1], trans[1, 0] = 0.3, -0.2
  got = boxes.warp_affine(image, trans, (11, 15))
  assert got.shape == (11, 15, 2) and got.dtype == np.float32
  np.testing.assert_allclose(got, _warp_loop(image, trans, (11, 15)), atol=1e-3)


@pytest.mark.parametrize('orig_hw,input_hw,mode', [
    ((50, 40), (64, 64), 'keep_res'),
    ((64, 64), (64, 64), 'keep_res'),
    ((30, 90), (64, 64), 'fixed_res'),
    ((90, 30), (64, 96), 'fixed_res'),
])
def test_letterbox_and_boxes_to_original(orig_hw, input_hw, mode):
  """Oracle: keep_res is the centred pad of eval_transform; fixed_res a centred aspect resize."""
  rng = np.random.default_rng(1)
  h, w = orig_hw
  in_h, in_w = input_hw
  image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
  canvas, inverse = boxes.letterbox(image, input_hw, mode)
  assert canvas.shape == (in_h, in_w, 3) and canvas.dtype == np.uint8
  if mode == 'keep_res':
    top, left = in_h // 2 - h // 2, in_w // 2 - w // 2
    zoom, offset = 1.0, np.array([left, top], np.float64)
    np.testing.assert_array_equal(canvas[top:top + h, left:left + w], image)
    assert canvas.sum() == image.astype(np.int64).sum()  # zero border
  else:
    zoom = min(in_w / w, in_h / h)
    offset = np.array([in_w / 2 - zoom * w / 2, in_h / 2 - zoom * h / 2])
    if in_h == in_w:  # the pipeline's official fixed_res warp (tf, bilinear) is the oracle
      from centernet_jax.data import transforms
      ref = transforms.eval_transform(image, mode='fixed_res', size=in_h, channel_order='RGB')
      ref = np.round(np.asarray(ref['image']) * 255)
      rows = np.flatnonzero(ref.any(axis=(1, 2)))
      cols = np.flatnonzero(ref.any(axis=(0, 2)))
      np.testing.assert_array_equal(np.flatnonzero(canvas.any(axis=(1, 2))), rows)
      np.testing.assert_array_equal(np.flatnonzero(canvas.any(axis=(0, 2))), cols)
      # The same cv2 maths, border blend included: equal to rounding everywhere.
      np.testing.assert_allclose(canvas, ref, atol=1)
  orig = np.array([[2.0, 3.0, w - 5.0, h - 1.0]])
  in_canvas = np.concatenate([orig[:, :2] * zoom + offset, orig[:, 2:] * zoom + offset], axis=1)
  back = boxes.boxes_to_original(in_canvas, inverse, orig_hw)
  np.testing.assert_allclose(back, orig, atol=1e-3)
  # Boxes outside the image clip to it.
  far = boxes.boxes_to_original(np.array([[-1e4, -1e4, 1e4, 1e4]]), inverse, orig_hw)
  np.testing.assert_allclose(far, [[0, 0, w, h]])
  # The letterbox's (center, scale) give the same inverse through get_affine_transform.
  center, scale = boxes.letterbox_center_scale(orig_hw, input_hw, mode)
  np.testing.assert_allclose(
      boxes.get_affine_transform(center, scale, (in_w, in_h), inv=True), inverse, atol=1e-6)


def test_letterbox_keep_res_refuses_a_larger_image():
  with pytest.raises(ValueError, match=r"100x40 image does not fit the 96x96 canvas"):
    boxes.letterbox(np.zeros((100, 40, 3), np.uint8), (96, 96), 'keep_res')


def test_points_to_original_maps_every_pair():
  """[..., 2n] x, y pairs (boxes, keypoints) through one affine; clipping per axis."""
  inverse = np.array([[2.0, 0.0, -10.0], [0.0, 2.0, -4.0]], np.float32)
  points = np.array([[[5.0, 3.0, 6.0, 4.0, 100.0, 1.0]]])  # [1, 1, 3 pairs]
  got = boxes.points_to_original(points, inverse)
  np.testing.assert_allclose(got, [[[0.0, 2.0, 2.0, 4.0, 190.0, -2.0]]])
  clipped = boxes.points_to_original(points, inverse, orig_hw=(3, 50))
  np.testing.assert_allclose(clipped, [[[0.0, 2.0, 2.0, 3.0, 50.0, 0.0]]])

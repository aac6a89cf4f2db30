"""Tests of the KITTI reader (centernet_jax.data.kitti) and the synthetic set (shapes_ddd)."""

import filecmp
import math
import os

import numpy as np
import pytest
from PIL import Image

from centernet_jax.data import kitti, shapes_ddd
from centernet_jax.data.errors import DataError

P2_KITTI = shapes_ddd.KITTI_P2.astype(np.float32)
GOOD_LINE = 'Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59'


# ---------------------------------------------------------------------------------------------
# Oracles written from the KITTI devkit's definitions


def corners_oracle(dims, loc, ry):
  """One box: R(ry) @ offsets + loc, offsets from the devkit's x/y/z corner lists."""
  h, w, ln = dims
  xs = [ln / 2, ln / 2, -ln / 2, -ln / 2, ln / 2, ln / 2, -ln / 2, -ln / 2]
  ys = [0, 0, 0, 0, -h, -h, -h, -h]
  zs = [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2]
  rot = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
  return (rot @ np.array([xs, ys, zs])).T + np.asarray(loc)


def project_oracle(p, P2):
  hom = [sum(P2[r][c] * v for c, v in enumerate([*p, 1.0])) for r in range(3)]
  return [hom[0] / hom[2], hom[1] / hom[2]]


def angle_diff(a, b):
  return np.abs((np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi)


def random_boxes(seed, shape):
  rng = np.random.default_rng(seed)
  dims = rng.uniform(0.5, 5, shape + (3,))
  loc = np.concatenate([rng.uniform(-20, 20, shape + (1,)), rng.uniform(0, 2, shape + (1,)),
                        rng.uniform(3, 60, shape + (1,))], -1)
  return dims, loc, rng.uniform(-4, 4, shape)


# ---------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize('seed,shape', [(0, ()), (1, (5,)), (2, (3, 4))])
@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_box3d_corners_matches_the_devkit_formula(seed, shape, backend):
  dims, loc, ry = random_boxes(seed, shape)
  args = (dims, loc, ry)
  if backend == 'jax':
    import jax.numpy as jnp
    args = tuple(jnp.asarray(a, jnp.float32) for a in args)
  got = np.asarray(kitti.box3d_corners(*args))
  assert got.shape == shape + (8, 3)
  flat = got.reshape(-1, 8, 3)
  for k, (d, p, r) in enumerate(zip(dims.reshape(-1, 3), loc.reshape(-1, 3), ry.reshape(-1),
                                    strict=True)):
    np.testing.assert_allclose(flat[k], corners_oracle(d, p, r), rtol=1e-5, atol=1e-4)


def test_box3d_corners_keeps_float32():
  dims, loc, ry = (a.astype(np.float32) for a in random_boxes(3, (2,)))
  assert kitti.box3d_corners(dims, loc, ry).dtype == np.float32


@pytest.mark.parametrize('seed,shape', [(0, (1,)), (1, (8,)), (2, (2, 8))])
@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_project_matches_the_homogeneous_formula(seed, shape, backend):
  rng = np.random.default_rng(seed)
  points = np.concatenate([rng.uniform(-10, 10, shape + (2,)), rng.uniform(2, 50, shape + (1,))],
                          -1)
  P2 = P2_KITTI.astype(np.float64) + rng.normal(0, 0.5, (3, 4)) * [[1], [1], [0]]
  args = (points, P2)
  if backend == 'jax':
    import jax.numpy as jnp
    args = (jnp.asarray(points, jnp.float32), jnp.asarray(P2, jnp.float32))
  got = np.asarray(kitti.project(*args)).reshape(-1, 2)
  want = np.array([project_oracle(p, P2) for p in points.reshape(-1, 3)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_alpha_from_rotation_y(seed):
  rng = np.random.default_rng(seed)
  ry = rng.uniform(-4, 4, 50)
  loc = np.stack([rng.uniform(-30, 30, 50), np.ones(50), rng.uniform(1, 60, 50)], -1)
  got = kitti.alpha_from_rotation_y(ry, loc)
  for a, r, (x, _, z) in zip(got, ry, loc, strict=True):
    want = r - math.atan2(x, z)
    while want >= math.pi:
      want -= 2 * math.pi
    while want < -math.pi:
      want += 2 * math.pi
    assert a == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize('angle,want', [(math.pi, -math.pi), (-math.pi, -math.pi), (0.5, 0.5),
                                        (3 * math.pi, -math.pi), (-4.0, 2 * math.pi - 4.0)])
def test_wrap_angle_is_half_open(angle, want):
  assert kitti.wrap_angle(angle) == pytest.approx(want)


# ---------------------------------------------------------------------------------------------
# Files


def random_objects(rng, n, score=False):
  objects = []
  for k in range(n):
    kind = list(kitti.CLASS_CODES)[k % len(kitti.CLASS_CODES)]
    x1, y1 = rng.uniform(0, 600, 2)
    obj = {'type': kind, 'truncated': round(float(rng.uniform(0, 1)), 2),
           'occluded': int(rng.integers(0, 4)), 'alpha': float(rng.uniform(-3, 3)),
           'bbox': [x1, y1, x1 + rng.uniform(0, 90), y1 + rng.uniform(0, 90)],
           'dimensions': rng.uniform(0.3, 4, 3).tolist(),
           'location': [rng.uniform(-9, 9), rng.uniform(0, 2), rng.uniform(2, 60)],
           'rotation_y': float(rng.uniform(-3, 3))}
    if score:
      obj['score'] = float(rng.uniform(0, 1))
    objects.append(obj)
  return objects


def assert_objects_close(got, want, atol=0.0051):
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert g['type'] == w['type'] and g['occluded'] == w['occluded']
    assert set(g) == set(w)
    for key in ('truncated', 'alpha', 'rotation_y') + (('score',) if 'score' in w else ()):
      assert g[key] == pytest.approx(w[key], abs=atol), key
    for key in ('bbox', 'dimensions', 'location'):
      np.testing.assert_allclose(g[key], w[key], atol=atol, err_msg=key)


@pytest.mark.parametrize('score', [False, True])
@pytest.mark.parametrize('seed', [0, 1])
def test_label_file_round_trip(tmp_path, seed, score):
  objects = random_objects(np.random.default_rng(seed), 12, score)
  path = str(tmp_path / '000007.txt')
  kitti.write_label_file(path, objects)
  assert_objects_close(kitti.read_label_file(path), objects)


def test_calib_round_trip(tmp_path):
  P2 = np.random.default_rng(0).uniform(1, 700, (3, 4))
  path = str(tmp_path / 'calib.txt')
  kitti.write_calib(path, P2)
  got = kitti.read_calib(path)
  assert got.dtype == np.float32 and got.shape == (3, 4)
  np.testing.assert_allclose(got, P2, rtol=1e-6)
  with open(path) as f:  # the official converter reads P2 from the third line
    assert f.read().splitlines()[2].startswith('P2: ')


def test_reads_an_official_calib_file(tmp_path):
  text = ('P0: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 '
          '1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00\n'
          'P1: 1 0 0 0 0 1 0 0 0 0 1 0\n'
          'P2: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 '
          '1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03\n'
          'P3: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\n'
          'Tr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 1 0\nTr_imu_to_velo: 1 0 0 0 0 1 0 0 0 0 1 0\n\n')
  (tmp_path / 'c.txt').write_text(text)
  np.testing.assert_allclose(kitti.read_calib(str(tmp_path / 'c.txt')), P2_KITTI, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# A tiny data set in the official layout


def write_image(root, name, width=96, height=32, P2=None, objects=(), labels=True):
  base = os.path.join(root, 'training')
  for d in ('image_2', 'label_2', 'calib'):
    os.makedirs(os.path.join(base, d), exist_ok=True)
  Image.new('RGB', (width, height)).save(os.path.join(base, 'image_2', name + '.png'))
  kitti.write_calib(os.path.join(base, 'calib', name + '.txt'),
                    shapes_ddd.camera_p2(width, height) if P2 is None else P2)
  if labels:
    kitti.write_label_file(os.path.join(base, 'label_2', name + '.txt'), objects)


def write_split(root, names, file='split.txt'):
  path = os.path.join(root, file)
  with open(path, 'w') as f:
    f.write('\n'.join(names) + '\n')
  return path


def label_path(root, name):
  return os.path.join(root, 'training', 'label_2', name + '.txt')


def test_load_keeps_every_type_in_order_with_the_official_codes(tmp_path):
  root = str(tmp_path)
  objects = random_objects(np.random.default_rng(0), 9)
  write_image(root, '000003', objects=objects)
  write_image(root, '000010', width=80, height=40)
  data = kitti.load_kitti(root, write_split(root, ['000010', '000003']))
  assert [r.image_id for r in data.records] == [10, 3]
  empty, rec = data.records
  assert (empty.width, empty.height, empty.boxes.shape, empty.dims.shape) == (80, 40, (0, 4),
                                                                              (0, 3))
  assert rec.file_name == '000003.png' and rec.path.endswith('training/image_2/000003.png')
  assert (rec.width, rec.height) == (96, 32)
  np.testing.assert_allclose(rec.calib, shapes_ddd.camera_p2(96, 32), rtol=1e-6)
  assert rec.types == [o['type'] for o in objects]  # file order: the slots follow it
  want = [0, 1, 2, -3, -3, -2, -99, -99, -1]  # Pedestrian Car Cyclist Van Truck P_s Tram Misc DC
  assert rec.labels.tolist() == want and rec.labels.dtype == np.int32
  for name, arr, dtype, shape in [('boxes', rec.boxes, np.float32, (9, 4)),
                                  ('alpha', rec.alpha, np.float32, (9,)),
                                  ('dims', rec.dims, np.float32, (9, 3)),
                                  ('locations', rec.locations, np.float32, (9, 3)),
                                  ('rotation_y', rec.rotation_y, np.float32, (9,)),
                                  ('truncated', rec.truncated, np.float32, (9,)),
                                  ('occluded', rec.occluded, np.int32, (9,))]:
    assert arr.dtype == dtype and arr.shape == shape, name
  np.testing.assert_array_equal(rec.depth, rec.locations[:, 2])
  np.testing.assert_allclose(rec.boxes, [o['bbox'] for o in objects], atol=0.0051)
  np.testing.assert_allclose(rec.dims, [o['dimensions'] for o in objects], atol=0.0051)
  assert_objects_close(data.ground_truth()[3], objects)


def test_objects_return_the_files_decimals(tmp_path):
  """float32 storage must not move a value across a difficulty boundary (0.15 -> 0.1500000059)."""
  root = str(tmp_path)
  line = 'Car 0.15 1 -1.57 10.00 5.00 50.00 30.00 1.53 1.63 3.88 0.10 1.65 17.30 -1.59'
  write_image(root, '000001')
  with open(label_path(root, '000001'), 'w') as f:
    f.write(line + '\n')
  obj = kitti.load_kitti(root, write_split(root, ['000001'])).records[0].objects()[0]
  assert obj['truncated'] == 0.15 and obj['alpha'] == -1.57 and obj['rotation_y'] == -1.59
  assert obj['bbox'] == [10.0, 5.0, 50.0, 30.0] and obj['dimensions'] == [1.53, 1.63, 3.88]
  assert obj['location'] == [0.1, 1.65, 17.3]
  assert kitti.format_label_line(obj) == line


@pytest.mark.parametrize('kind,code', list(kitti.CLASS_CODES.items()))
def test_class_code_table(kind, code):
  official = {'Pedestrian': 0, 'Car': 1, 'Cyclist': 2, 'Van': -3, 'Truck': -3,
              'Person_sitting': -2, 'Tram': -99, 'Misc': -99, 'DontCare': -1}
  assert official[kind] == code
  assert kitti.CLASS_NAMES[code] == kind if code >= 0 else True
  obj = kitti.parse_label_line(GOOD_LINE.replace('Car', kind, 1), 'f:1')
  rec = kitti.make_record(1, 'a.png', 'a.png', 10, 10, P2_KITTI, [obj])
  assert rec.labels.tolist() == [code]


BAD_LINES = [
    ('Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70',
     '14 fields'),
    (GOOD_LINE + ' 0.9 7', '17 fields'),
    (GOOD_LINE.replace('587.01', '58x.01'), "x1 is '58x.01', not a number"),
    (GOOD_LINE.replace('46.70', 'nan'), "z is 'nan', not a finite number"),
    (GOOD_LINE.replace('Car', 'Bus'), "unknown type 'Bus'"),
    (GOOD_LINE.replace('Car 0.00', 'Car 1.50'), 'truncated is 1.50'),
    (GOOD_LINE.replace('Car 0.00 0', 'Car 0.00 4'), 'occluded is 4'),
    (GOOD_LINE.replace('Car 0.00 0', 'Car 0.00 1.5'), 'occluded is 1.5'),
    (GOOD_LINE.replace('587.01 173.33 614.12', '614.12 173.33 587.01'), 'x2 < x1'),
    (GOOD_LINE.replace('1.65 1.67 3.64', '1.65 0.00 3.64'), 'dimensions h w l'),
]


@pytest.mark.parametrize('line,message', BAD_LINES)
def test_bad_label_lines_name_the_file_and_line(tmp_path, line, message):
  root = str(tmp_path)
  write_image(root, '000001')
  with open(label_path(root, '000001'), 'w') as f:
    f.write(GOOD_LINE + '\n\n' + line + '\n')
  with pytest.raises(DataError, match='label_2/000001.txt:3: ') as e:
    kitti.load_kitti(root, write_split(root, ['000001']))
  assert message in str(e.value) and 'image id 000001' in str(e.value)


@pytest.mark.parametrize('line', [
    'DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10',
    'Car -1 -1 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 -3.64 -0.65 1.71 46.70 -1.59 0.87'])
def test_dontcare_and_result_lines_are_not_range_checked(line):
  obj = kitti.parse_label_line(line, 'f:1')
  assert obj['occluded'] == -1 and ('score' in obj) == line.startswith('Car')


def test_bad_lines_are_skipped_within_the_budget(tmp_path, caplog):
  root = str(tmp_path)
  write_image(root, '000001', objects=random_objects(np.random.default_rng(1), 9))
  with open(label_path(root, '000001'), 'a') as f:
    f.write(GOOD_LINE.replace('Car', 'Bus') + '\n')
  split = write_split(root, ['000001'])
  data = kitti.load_kitti(root, split, max_bad_fraction=0.2)
  assert data.num_invalid_lines == 1 and len(data.records[0].types) == 9
  assert "000001.txt:10: unknown type 'Bus'" in caplog.text
  with pytest.raises(DataError, match='1 of 10 annotations fail validation'):
    kitti.load_kitti(root, split, max_bad_fraction=0.05)


@pytest.mark.parametrize('calib,message', [
    ('P0: 1 0 0 0 0 1 0 0 0 0 1 0\n', "0 lines start with 'P2:'"),
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 0\nP2: 1 0 0 0 0 1 0 0 0 0 1 0\n', "2 lines start with 'P2:'"),
    ('P0: 1\nP2: 700 0 40 0 0 700 10 0 0 0 1\n', 'calib/000001.txt:2: P2 has 11 numbers'),
    ('P2: 700 0 40 0 0 700 10 0 0 0 1 0 5\n', 'P2 has 13 numbers'),
    ('P2: 700 0 40 0 0 700 1O 0 0 0 1 0\n', "P2[1,2] is '1O', not a number"),
    ('P2: -700 0 40 0 0 700 10 0 0 0 1 0\n', 'focal lengths fx=-700'),
    ('P2: 700 0 140 0 0 700 10 0 0 0 1 0\n', 'principal point (cx, cy) = (140, 10) lies outside '
     'the 96 x 32 image'),
    ('P2: 700 0 40 0 0 700 -3 0 0 0 1 0\n', 'principal point'),
])
def test_bad_calibs_are_named(tmp_path, calib, message):
  root = str(tmp_path)
  write_image(root, '000001')
  with open(os.path.join(root, 'training', 'calib', '000001.txt'), 'w') as f:
    f.write(calib)
  with pytest.raises(DataError, match='calib/000001.txt') as e:
    kitti.load_kitti(root, write_split(root, ['000001']))
  assert message in str(e.value)


def test_missing_files_name_every_id(tmp_path):
  root = str(tmp_path)
  for name in ('000001', '000002', '000003', '000004'):
    write_image(root, name)
  os.remove(os.path.join(root, 'training', 'calib', '000002.txt'))
  os.remove(label_path(root, '000003'))
  os.remove(os.path.join(root, 'training', 'image_2', '000004.png'))
  split = write_split(root, ['000001', '000002', '000003', '000004', '000009'])
  with pytest.raises(DataError) as e:
    kitti.load_kitti(root, split)
  msg = str(e.value)
  assert msg.startswith(f'{split}: 4 of 5 image ids have no files')
  for part in ('000002 (no calib file)', '000003 (no label_2 file)', '000004 (no image_2 file)',
               '000009 (no image_2 / calib / label_2 file)'):
    assert part in msg
  data = kitti.load_kitti(root, split, max_bad_fraction=0.9)
  assert [r.image_id for r in data.records] == [1] and data.num_skipped_images == 4
  with pytest.raises(DataError, match='4 of 5 image ids have a missing or bad file'):
    kitti.load_kitti(root, split, max_bad_fraction=0.5)
  os.remove(label_path(root, '000001'))  # the test subset has no labels
  assert len(kitti.load_kitti(root, write_split(root, ['000001']), with_labels=False)
             .records[0].types) == 0


def test_unreadable_image_is_named(tmp_path):
  root = str(tmp_path)
  write_image(root, '000001')
  with open(os.path.join(root, 'training', 'image_2', '000001.png'), 'wb') as f:
    f.write(b'not a png')
  with pytest.raises(DataError, match='image_2/000001.png: not a readable image'):
    kitti.load_kitti(root, write_split(root, ['000001']))


@pytest.mark.parametrize('text,message', [
    ('000001\n00a002\n', 'split.txt:2: image id \'00a002\' is not a number'),
    ('000001\n\n000001\n', 'split.txt:3: image id 000001 already on line 1'),
    ('\n\n', 'split.txt: no image id'),
])
def test_bad_split_files(tmp_path, text, message):
  (tmp_path / 'split.txt').write_text(text)
  with pytest.raises(DataError) as e:
    kitti.read_split(str(tmp_path / 'split.txt'))
  assert message in str(e.value)


def test_missing_split_and_label_and_calib_files(tmp_path):
  with pytest.raises(DataError, match='split file not found: .*nope.txt'):
    kitti.read_split(str(tmp_path / 'nope.txt'))
  with pytest.raises(DataError, match='label file not found'):
    kitti.read_label_file(str(tmp_path / 'x.txt'))
  with pytest.raises(DataError, match='calib file not found'):
    kitti.read_calib(str(tmp_path / 'x.txt'))


# ---------------------------------------------------------------------------------------------
# The synthetic set


def check_labels(objects, P2, width, height):
  """Every label follows from its geometry (see the shapes_ddd module docstring)."""
  P2 = np.asarray(P2, np.float64)
  for obj in objects:
    if obj['type'] == 'DontCare':
      assert obj['alpha'] == -10 and obj['dimensions'] == [-1, -1, -1]
      continue
    corners = corners_oracle(obj['dimensions'], obj['location'], obj['rotation_y'])
    uv = np.array([project_oracle(p, P2) for p in corners])
    full = np.concatenate([uv.min(0), uv.max(0)])
    box = np.clip(full, 0, [width - 1, height - 1] * 2)
    np.testing.assert_allclose(obj['bbox'], box, atol=1e-6)
    if obj['truncated'] == 0:
      np.testing.assert_allclose(obj['bbox'], full, atol=0.02)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
    assert obj['truncated'] == pytest.approx(1 - area(box) / area(full), abs=0.0051)
    x, _, z = obj['location']
    assert angle_diff(obj['alpha'], obj['rotation_y'] - math.atan2(x, z)) < 1e-9
    assert -math.pi <= obj['alpha'] < math.pi
    assert obj['location'][1] == pytest.approx(shapes_ddd.CAMERA_HEIGHT, abs=0.051)
    assert shapes_ddd.DEPTH_RANGE[0] <= z <= shapes_ddd.DEPTH_RANGE[1]
    mean, std = shapes_ddd.CLASS_DIMS[obj['type']]
    assert np.all(np.abs(np.array(obj['dimensions']) - mean) <= 2 * np.array(std) + 0.006)
    assert obj['occluded'] in (0, 1, 2)


def test_generated_labels_follow_the_geometry():
  width, height = 192, 64
  P2 = shapes_ddd.camera_p2(width, height)
  kinds, occluded, truncated = set(), set(), 0
  for i in range(40):
    image, objects = shapes_ddd.render_scene(np.random.default_rng([3, i]), width, height, P2)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    check_labels(objects, P2, width, height)
    kinds |= {o['type'] for o in objects}
    occluded |= {o['occluded'] for o in objects}
    truncated += sum(o['truncated'] > 0 for o in objects)
  assert kinds == {'Car', 'Pedestrian', 'Cyclist', 'DontCare'}
  assert {0, 1, 2} <= occluded and truncated > 0


def test_camera_p2_scales_the_kitti_camera():
  P2 = shapes_ddd.camera_p2(384, 128)
  s = 384 / 1242
  assert shapes_ddd.pixel_scale(384) == pytest.approx(s)
  assert P2[0, 0] == pytest.approx(721.5377 * s) and P2[1, 1] == pytest.approx(721.5377 * s)
  assert P2[0, 2] == pytest.approx(609.5593 * s)
  assert P2[1, 2] == pytest.approx(172.854 * s + (128 - 375 * s) / 2)
  p = np.array([2.0, 1.0, 20.0])  # a scaled and shifted image of the same point
  u, v = project_oracle(p, shapes_ddd.KITTI_P2)
  np.testing.assert_allclose(kitti.project(p, P2), [u * s, v * s + (128 - 375 * s) / 2])


def render_objects(objects, width=192, height=64, seed=0):
  P2 = shapes_ddd.camera_p2(width, height)
  background = np.full((height * shapes_ddd.SUPERSAMPLE, width * shapes_ddd.SUPERSAMPLE, 3), 90.0)
  return shapes_ddd.render(np.random.default_rng(seed), objects, background, P2)


def car(x, z, ry=0.0):
  return {'type': 'Car', 'dimensions': [1.5, 1.6, 3.9], 'location': [x, 1.65, z],
          'rotation_y': ry}


@pytest.mark.parametrize('objects,want', [
    ([car(0, 10)], [('Car', 0, 0.0)]),  # alone, in view
    ([car(0, 20), car(0, 10)], [('DontCare', -1, -1), ('Car', 0, 0.0)]),  # hidden behind
    ([car(1.0, 14, 0.3), car(-0.5, 9, 1.57)], [('Car', 1, 0.0), ('Car', 0, 0.0)]),  # partly
    ([car(0.6, 25, 1.57), car(-0.5, 12, 1.57)], [('Car', 2, 0.0), ('Car', 0, 0.0)]),  # largely
    ([car(-12.0, 15, 1.57)], [('Car', 0, (0.3, 0.5))]),  # leaves the image on the left
    ([car(-30.0, 15, 1.57)], []),  # out of view: no label
])
def test_occlusion_and_truncation_levels(objects, want):
  _, labels = render_objects(objects)
  check_labels(labels, shapes_ddd.camera_p2(192, 64), 192, 64)
  assert [(o['type'], o['occluded']) for o in labels] == [w[:2] for w in want]
  for label, (_, _, trunc) in zip(labels, want, strict=True):
    if isinstance(trunc, tuple):
      assert trunc[0] < label['truncated'] < trunc[1]
    else:
      assert label['truncated'] == trunc


@pytest.mark.parametrize('seed', range(4))
def test_front_face_is_near_white_and_back_face_near_black_so_the_heading_shows(seed):
  # Seen straight on, with the same face normal (towards the camera) and so the same lighting:
  # rotation_y = pi/2 shows the front (heading), 0 a side, -pi/2 the back (heading away, +z).
  # Whatever the drawn colour, the front is near white and the back near black.
  means = {}
  for name, ry in (('front', math.pi / 2), ('side', 0.0), ('back', -math.pi / 2)):
    image, labels = render_objects([car(0, 8, ry)], seed=seed)
    x1, y1, x2, y2 = labels[0]['bbox']
    cx, cy = int((x1 + x2) / 2), int(y1 + 0.7 * (y2 - y1))  # on the face, below the top face
    means[name] = image[cy - 2:cy + 3, cx - 2:cx + 3].astype(float).mean()
  assert means['front'] > 190 and means['back'] < 70, means
  assert means['front'] > means['side'] + 20 and means['back'] < means['side'] - 20, means


def test_generate_is_deterministic_and_loads(tmp_path):
  params = dict(num_train=3, num_val=2, width=96, height=32)
  a = shapes_ddd.generate(str(tmp_path / 'a'), seed=5, **params)
  shapes_ddd.generate(str(tmp_path / 'b'), seed=5, **params)
  shapes_ddd.generate(str(tmp_path / 'c'), seed=6, **params)
  names = sorted(os.path.relpath(os.path.join(d, f), tmp_path / 'a')
                 for d, _, files in os.walk(tmp_path / 'a') for f in files)
  assert len(names) == 5 * 3 + 2 + 1
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', names, shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'c', names, shallow=False)
  assert 'training/image_2/000000.png' in mismatch
  train = kitti.load_kitti(a['kitti_root'], a['train_split'])
  val = kitti.load_kitti(a['kitti_root'], a['val_split'])
  assert [r.image_id for r in train.records] == [0, 1, 2]
  assert [r.image_id for r in val.records] == [3, 4]
  rec = val.records[1]
  assert (rec.width, rec.height) == (96, 32)
  _, want = shapes_ddd.render_scene(np.random.default_rng([5, 1, 1]), 96, 32)
  assert_objects_close(rec.objects(), want)


def test_image_i_does_not_depend_on_the_count(tmp_path):
  shapes_ddd.generate(str(tmp_path / 'a'), num_train=1, num_val=1, width=64, height=24)
  shapes_ddd.generate(str(tmp_path / 'b'), num_train=2, num_val=1, width=64, height=24)
  assert filecmp.cmp(tmp_path / 'a/training/image_2/000000.png',
                     tmp_path / 'b/training/image_2/000000.png', shallow=False)
  assert filecmp.cmp(tmp_path / 'a/training/label_2/000001.txt',  # val 0 in both
                     tmp_path / 'b/training/label_2/000002.txt', shallow=False)


def test_ensure_generates_once_and_refuses_other_parameters(tmp_path):
  out = str(tmp_path / 'ddd')
  params = dict(num_train=1, num_val=1, width=64, height=24, seed=1)
  paths = shapes_ddd.ensure(out, **params)
  assert os.path.isfile(paths['val_split'])
  stamp = os.path.getmtime(paths['train_split'])
  shapes_ddd.ensure(out, **params)
  assert os.path.getmtime(paths['train_split']) == stamp
  with pytest.raises(ValueError, match='made with'):
    shapes_ddd.ensure(out, **dict(params, seed=2))


def test_record_center3d_projects_the_box_middle_and_falls_back_to_the_2d_centre():
  p2 = shapes_ddd.camera_p2(384, 128).astype(np.float32)
  rec = kitti.KittiRecord(
      image_id=0, file_name='000000.png', path='', width=384, height=128, calib=p2,
      types=['Car', 'DontCare'], boxes=np.float32([[100, 50, 140, 80], [10, 20, 30, 60]]),
      labels=np.int32([1, -1]), alpha=np.float32([0.2, -10]),
      dims=np.float32([[1.5, 1.6, 3.9], [-1, -1, -1]]),
      locations=np.float32([[2.0, 1.65, 15.0], [-1000, -1000, -1000]]),
      rotation_y=np.float32([0.3, -10]), truncated=np.float32([0, -1]),
      occluded=np.int32([0, -1]))
  hom = p2 @ np.array([2.0, 1.65 - 0.75, 15.0, 1.0])
  np.testing.assert_allclose(rec.center3d, [hom[:2] / hom[2], [20.0, 40.0]], rtol=1e-5)
  assert rec.center3d.dtype == np.float32

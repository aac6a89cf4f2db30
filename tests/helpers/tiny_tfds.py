"""A tiny TFDS data set with the coco/2017 features, prepared locally (no download).

``prepare(data_dir, file_format)`` writes it in the given file format ('array_record' for random
access). Images are JPEGs of varying size; the objects use the coco/2017 layout (normalised
ymin, xmin, ymax, xmax boxes, COCO category names as labels).
"""

import numpy as np
import tensorflow_datasets as tfds

NAMES = ('person', 'bicycle', 'car')  # COCO ids 1, 2, 3
NUM_TRAIN, NUM_VAL = 11, 5


def image_id(split: str, i: int) -> int:
  return (100 if split == 'train' else 900) + i


def objects(split: str, i: int) -> dict:
  """Example i's objects: i % 3 + 1 boxes; val example 1 also has a zero-width box."""
  n = i % 3 + 1
  y0 = np.linspace(0.05, 0.4, n)
  bbox = [tfds.features.BBox(y, 0.1 + 0.1 * k, y + 0.3, 0.5 + 0.1 * k) for k, y in enumerate(y0)]
  label = [(i + k) % len(NAMES) for k in range(n)]
  crowd = [k == 2 for k in range(n)]
  if split == 'validation' and i == 1:
    bbox.append(tfds.features.BBox(0.2, 0.3, 0.4, 0.3))
    label.append(0)
    crowd.append(False)
  m = len(bbox)
  return {'area': [50 + k for k in range(m)], 'bbox': bbox,
          'id': [1000 * i + k for k in range(m)], 'is_crowd': crowd, 'label': label}


def hw(split: str, i: int) -> tuple[int, int]:
  return (24 + 2 * i, 32 + (8 if split == 'validation' else 0))


class TinyCoco(tfds.core.GeneratorBasedBuilder):
  """coco/2017 feature structure, a few generated images per split."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'image/filename': tfds.features.Text(),
        'image/id': np.int64,
        'objects': tfds.features.Sequence({
            'area': np.int64, 'bbox': tfds.features.BBoxFeature(), 'id': np.int64,
            'is_crowd': np.bool_, 'label': tfds.features.ClassLabel(names=NAMES)})}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples('train', NUM_TRAIN),
            'validation': self._generate_examples('validation', NUM_VAL)}

  def _generate_examples(self, split, num):
    for i in range(num):
      h, w = hw(split, i)
      rng = np.random.default_rng([0 if split == 'train' else 1, i])
      small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
      pixels = np.kron(small, np.ones((4, 4, 1), np.uint8))[:h, :w]
      yield i, {'image': pixels, 'image/filename': f'{split}_{i}.jpg',
                'image/id': image_id(split, i), 'objects': objects(split, i)}


def prepare(data_dir: str, file_format: str = 'array_record') -> TinyCoco:
  """Generates the data set into ``data_dir`` (the route the pipeline's error message gives)."""
  builder = TinyCoco(data_dir=data_dir)
  builder.download_and_prepare(file_format=file_format)
  return builder

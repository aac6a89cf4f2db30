"""Input side: sources (COCO-format folders, TFDS, the built-in shapes set) read by index,
transformed and batched in tf.data.

- ``config``: the ``config.data`` section (no TensorFlow).
- ``sources``: one ``Source`` interface (COCO-json, TFDS random access, the KITTI object layout)
  -> canonical features.
- ``pipeline``: data set information and the training / evaluation iterators
  (index -> read -> decode -> transform -> batch).
- ``transforms``: the pre-processing as tf ops (ctdet / multi_pose, and the official ddd
  pre-processing for KITTI sources); ``coco``: COCO instances files; ``kitti``: KITTI label,
  calib and split files and the 3D box geometry; ``shapes``, ``shapes_pose``, ``shapes_ddd``:
  the built-in generators (numpy and PIL only); ``errors``: ``DataError``, skip budgets and
  messages naming bad records.

TensorFlow is imported only by the modules that run ``tf.data`` (``coco``, ``sources``,
``transforms``, ``pipeline``; ``errors`` inside its functions), each through :func:`import_tf`,
which also hides every GPU from TensorFlow so that it never takes accelerator memory from JAX.
"""

_GPU_HIDDEN = False


def import_tf():
  """Imports tensorflow with GPUs hidden from it (first call) and returns the module."""
  global _GPU_HIDDEN
  import tensorflow as tf

  if not _GPU_HIDDEN:
    _GPU_HIDDEN = True
    try:
      tf.config.set_visible_devices([], 'GPU')
    except (RuntimeError, ValueError):  # devices already initialised: nothing left to hide
      pass
  return tf

"""Input side: COCO-format folders, TFDS coco/2017 and the built-in shapes data set.

TensorFlow is imported only by the modules of this package that run ``tf.data``
(``coco``, ``transforms``, ``pipeline``), each through :func:`import_tf`, which also hides
every GPU from TensorFlow so that it never takes accelerator memory from JAX.
``shapes`` needs only numpy and PIL.
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

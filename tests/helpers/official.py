"""Official PyTorch state_dict key/shape -> our variable path/shape (shared by model tests)."""

from collections.abc import Callable


def official_to_ours(key: str, shape: list[int], is_transpose: Callable[[list[str]], bool]):
  """Maps one official entry; None for entries we do not keep.

  'base.' (DLA) becomes 'backbone/', ResNet stems and stages go under 'backbone/'; conv weights
  OIHW -> HWIO; ConvTranspose2d weights (in, out, kh, kw), as ``is_transpose(path)`` tells,
  -> (kh, kw, in, out); BN weight -> scale; running statistics -> batch_stats mean/var.
  """
  parts = key.split('.')
  leaf, path = parts[-1], parts[:-1]
  if leaf == 'num_batches_tracked' or key.startswith('base.fc.'):
    return None
  if path[0] == 'base':
    path = ['backbone', *path[1:]]
  elif path[0] in ('conv1', 'bn1') or path[0].startswith('layer'):
    path = ['backbone', *path]
  if leaf in ('running_mean', 'running_var'):
    return ('batch_stats', *path, leaf[len('running_'):]), tuple(shape)
  if leaf == 'bias':
    return ('params', *path, 'bias'), tuple(shape)
  if len(shape) == 1:
    return ('params', *path, 'scale'), tuple(shape)
  if is_transpose(path):
    cin, cout, kh, kw = shape
  else:  # Conv2d (out, in, kh, kw); depthwise ConvTranspose2d (C, 1, kh, kw) reads the same
    cout, cin, kh, kw = shape
  return ('params', *path, 'kernel'), (kh, kw, cin, cout)

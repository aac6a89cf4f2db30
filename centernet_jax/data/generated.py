"""Built-in data sets generated once into a folder: atomic creation and the parameter check.

The synthetic sets (``shapes``, ``shapes_pose``, ``shapes_ddd``) are pure functions of their
parameters, written with a ``meta.json`` that records them. :func:`ensure` makes a folder at most
once, even with several processes racing, and refuses a folder made with other parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def ensure(out_dir: str, meta: Mapping[str, Any], generate: Callable[[str], Any], what: str, *,
           require_meta: bool = True) -> None:
  """Runs ``generate(folder)`` into ``out_dir`` unless it is there, then checks its meta.json.

  The folder is written under a temporary name and renamed, so an interrupted run or racing
  processes leave either nothing or a complete folder; an empty folder made beforehand is
  filled. A folder made with other parameters is never overwritten.

  Args:
    out_dir: the data set's folder.
    meta: the parameters ``generate`` writes to ``<folder>/meta.json``.
    generate: writes the whole data set into the folder it is given.
    what: the data set's name, for the message.
    require_meta: whether a folder without meta.json is an error (else it is used as it is).

  Raises:
    ValueError: the folder holds a data set made with other parameters (or, with
      ``require_meta``, none that says so), naming both and the setting to change.
  """
  if os.path.isdir(out_dir) and not os.listdir(out_dir):
    os.rmdir(out_dir)  # an empty folder made beforehand: fill it
  if not os.path.exists(out_dir):
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    tmp = f'{os.path.abspath(out_dir)}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    generate(tmp)
    try:
      os.rename(tmp, out_dir)
    except OSError:  # another process finished first
      shutil.rmtree(tmp, ignore_errors=True)
  meta_file = os.path.join(out_dir, 'meta.json')
  found = None
  if os.path.isfile(meta_file):
    with open(meta_file) as f:
      found = json.load(f)
  elif not require_meta:
    return
  if found != dict(meta):
    raise ValueError(f'{out_dir} holds {found or f"no {what} data set"}, not a {what} data set '
                     f'made with {dict(meta)}; delete it or set config.data.shapes_dir to another '
                     'folder')


def command_line(doc: str, generate: Callable[..., Mapping[str, str]],
                 argv: Sequence[str] | None) -> None:
  """``python -m`` of a square-image set: parses --out, sizes and seed, generates, prints paths.

  ``generate(out, num_train, num_val, image_size, seed)`` as the shapes modules define it.
  """
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--num_train', type=int, default=600)
  parser.add_argument('--num_val', type=int, default=100)
  parser.add_argument('--image_size', type=int, default=128)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  print(json.dumps(generate(args.out, args.num_train, args.num_val, args.image_size, args.seed),
                   indent=2))

"""What the command-line entry points share: the config, checks before any work, quiet logs.

Each entry point's ``__main__`` defines its own flags, then calls :func:`run`::

  cli.run(main, run_flags=('workdir',), required=('workdir',))

- ``--config`` takes a file, the name of a shipped config (``ctdet_resnet18_coco``, from any
  working directory, also after ``pip install``), either with ``:arg``. Without ``--config``,
  the config a training run saved (``<workdir>/config.json``) is used, found through the
  ``run_flags`` (``--workdir``, ``--checkpoint``). ``--config.x=y`` overrides either.
- Before ``main`` runs, the config is validated (:func:`config_lib.validate`) and the path flags
  are checked: a bad value, a config that cannot be found, a workdir that is a file are one
  ``error: ...`` line on stderr and exit status 2, never a traceback.
- Logging: our own INFO lines; absl, Orbax, JAX and TensorFlow from WARNING up, unless
  ``--verbose``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from centernet_jax import config_lib

FLAGS = flags.FLAGS
USAGE_ERROR = 2  # exit status of a command line that cannot work (bad flag, config or path)
# Libraries whose INFO lines only --verbose shows (Orbax logs through absl).
NOISY_LOGGERS = ('absl', 'orbax', 'jax', 'tensorflow', 'etils')
PATH_FLAGS = ('workdir', 'checkpoint', 'output')  # folders: must not be (or be under) a file
CONFIG_HELP = ('Experiment config: a file, or the name of a shipped config (e.g. '
               'ctdet_resnet18_coco), optionally with :arg.')


def fail(error: BaseException | str, status: int = USAGE_ERROR) -> NoReturn:
  """Prints ``error: <message>`` on stderr and exits with ``status``."""
  print(f'error: {error_text(error)}', file=sys.stderr, flush=True)
  sys.exit(status)


def error_text(error: BaseException | str) -> str:
  """The message of ``error`` as a person reads it (a KeyError's str() is its repr)."""
  if isinstance(error, KeyError) and len(error.args) == 1:
    return str(error.args[0])
  return str(error)


def _argv_value(argv: Sequence[str], name: str) -> tuple[int, int, str] | None:
  """(index, number of arguments, value) of the last ``--name V`` or ``--name=V`` in argv."""
  found = None
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == '--':
      break
    for prefix in (f'--{name}', f'-{name}'):
      if arg == prefix and i + 1 < len(argv):
        found = (i, 2, argv[i + 1])
        i += 1
        break
      if arg.startswith(prefix + '='):
        found = (i, 1, arg[len(prefix) + 1:])
        break
    i += 1
  return found


def define_config_flag(argv: list[str], run_flags: Sequence[str] = ()) -> str:
  """Defines ``--config`` for ``argv`` (rewritten in place to the resolved file).

  Args:
    argv: the command line; a ``--config`` naming a shipped config is replaced by its path.
    run_flags: flags naming a training run whose saved config stands in for ``--config``.

  Returns:
    Where the config comes from (for messages): the file, the saved config.json, or ''.

  Raises:
    config_lib.ConfigError: ``--config`` names nothing, or a saved config cannot be read.
  """
  found = _argv_value(argv, 'config')
  if found is not None:
    i, n, spec = found
    resolved = config_lib.resolve_config_spec(spec)
    argv[i:i + n] = [f'--config={resolved}']
    config_flags.DEFINE_config_file('config', None, CONFIG_HELP, lock_config=True,
                                    sys_argv=argv)
    return resolved
  for name in run_flags:
    value = _argv_value(argv, name)
    saved = config_lib.saved_config(value[2]) if value else None
    if saved is not None:
      config_flags.DEFINE_config_dict('config', saved, CONFIG_HELP, lock_config=True,
                                      sys_argv=argv)
      return config_lib.saved_config_path(value[2])
  config_flags.DEFINE_config_file('config', None, CONFIG_HELP, lock_config=True, sys_argv=argv)
  return ''


def run(main: Callable[[list[str]], None], *, run_flags: Sequence[str] = ('workdir',),
        required: Sequence[str] = ()) -> None:
  """Defines ``--config`` and ``--verbose``, then ``app.run(main)`` with :func:`parse_flags`
  and :func:`setup_logging`.

  Args:
    main: the entry point's main(argv).
    run_flags: see :func:`define_config_flag`.
    required: flags that must be given (absl's check, reported as one line).
  """
  argv = list(sys.argv)
  try:
    define_config_flag(argv, run_flags)
  except config_lib.ConfigError as e:
    fail(e)
  sys.argv[:] = argv
  flags.DEFINE_bool('verbose', False, 'Show the INFO logs of absl, Orbax, JAX and TensorFlow.')
  for name in required:
    flags.mark_flag_as_required(name)

  def quiet_main(args: list[str]) -> None:
    # Here, not in parse_flags: absl sets its verbosity to INFO right after parsing.
    setup_logging(bool(FLAGS.verbose))
    return main(args)

  app.run(quiet_main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser of the entry points: flags, config and paths checked before main.

  ``--config.x.y=v`` with an unknown key raises AttributeError/KeyError inside ml_collections;
  that, absl's own flag errors, a missing config, a config that fails :func:`config_lib.validate`
  and a path flag naming a file end in ``error: ...`` on stderr and exit status 2.
  """
  try:
    rest = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = error_text(e).strip('"\'')
    if isinstance(e, AttributeError | KeyError):
      message = (f'unknown config key {message}: the shared keys are listed in '
                 'centernet_jax/config_lib.py (data: centernet_jax/data/config.py), each '
                 "task's own in centernet_jax/tasks/<config.task>.py: add_config")
    fail(message)
  verbose = bool(FLAGS['verbose'].value) if 'verbose' in FLAGS else False
  for name in PATH_FLAGS:
    value = FLAGS[name].value if name in FLAGS else None
    problem = path_problem(value) if isinstance(value, str) and value else None
    if problem:
      fail(f'--{name} {value}: {problem}')
  if 'config' in FLAGS:
    config = FLAGS['config'].value
    if config is None:
      fail('no config: give --config (a file, or a shipped config: '
           f'{", ".join(config_lib.shipped_configs())}), or the --workdir of a training run '
           f'(its {config_lib.SAVED_CONFIG} is used)')
    try:
      config_lib.validate(config)
    except (config_lib.ConfigError, OSError) as e:  # OSError: the config file failed to load
      fail(e)
  if not verbose:
    import_tensorflow_quietly()
  return rest


def path_problem(path: str) -> str | None:
  """Why ``path`` cannot be (or become) a directory, or None."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    return None if os.path.isdir(path) else 'is a file, not a directory'
  parent = os.path.dirname(path)
  while not os.path.exists(parent) and parent != os.path.dirname(parent):
    parent = os.path.dirname(parent)
  return None if os.path.isdir(parent) else f'{parent} is a file: no directory can be made in it'


class _DropReadOnlyNotices(logging.Filter):
  """Orbax's notices on opening checkpoints read-only ("Given directory is read only=...",
  "CheckpointManagerOptions.read_only=True, setting ...") read like a permissions problem; the
  restore paths open every checkpoint read-only on purpose."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith('Given directory is read only')
                or message.startswith('CheckpointManagerOptions.read_only=True'))


READ_ONLY_FILTER = _DropReadOnlyNotices()


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (every entry point reads data with it) with its C++ start-up lines
  (oneDNN, CPU features, absl's "All log messages before absl::InitializeLog()") hidden.

  TensorFlow 2.21 reads ``TF_CPP_MIN_LOG_LEVEL`` only from the environment the process started
  with, so setting it here is too late: stderr is pointed at /dev/null for the import instead.
  An import error still raises, after stderr is back.
  """
  import importlib.util

  if 'tensorflow' in sys.modules or importlib.util.find_spec('tensorflow') is None:
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow  # noqa: F401
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def setup_logging(verbose: bool = False) -> None:
  """Our INFO lines; the libraries' only from WARNING up unless ``verbose``.

  Also sets ``TF_CPP_MIN_LOG_LEVEL`` (unless set) for the processes this one starts; for this
  process see :func:`import_tensorflow_quietly`.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')
  logging.getLogger().setLevel(logging.INFO)
  for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
  absl_logger = logging.getLogger('absl')
  if READ_ONLY_FILTER not in absl_logger.filters:
    absl_logger.addFilter(READ_ONLY_FILTER)

"""Shared fixtures: the smoke config and a shapes data set generated once per session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for the test run: the suite compiles the same small
# models in many tests, in both xdist workers and in the subprocesses tests start (they inherit
# the environment). Set before jax is imported; an outside setting wins.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(ROOT, '.pytest_cache', 'jax_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
sys.path.insert(0, ROOT)  # so `configs` imports as a package-less module path


def _load_module(module_name: str, path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str):
  """Loads configs/<name>.py like --config does, unlocked."""
  return _load_module(name, os.path.join(ROOT, 'configs', name + '.py')).get_config()


def load_experiment(name: str, module_name: str = ''):
  """experiments/<name>.py as a module (the scripts are not a package)."""
  return _load_module(module_name or f'_{name}_under_test',
                      os.path.join(ROOT, 'experiments', name + '.py'))


@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('shapes'))


@pytest.fixture
def smoke_config(shapes_dir):
  c = load_config('smoke')
  c.data.shapes_dir = shapes_dir
  return c

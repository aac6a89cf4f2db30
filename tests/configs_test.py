"""Every config file loads, carries every key of the base config, and says how to run it."""

import glob
import os

import pytest

from centernet_jax import config_lib
from tests.conftest import ROOT, load_config

NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _keys(cfg, prefix=''):
  out = set()
  for k, v in cfg.items():
    out.add(prefix + k)
    if hasattr(v, 'items'):
      out |= _keys(v, prefix + k + '.')
  return out


@pytest.mark.parametrize('name', NAMES)
def test_config_complete_and_documented(name):
  cfg = load_config(name)
  assert _keys(cfg) == _keys(config_lib.base_config())
  with open(os.path.join(ROOT, 'configs', name + '.py')) as f:
    text = f.read()
  assert 'centernet_jax.train' in text or 'make demo' in text
  assert cfg.train.batch_size % 8 == 0  # splits over 1, 2, 4 or 8 devices


def test_parse_arg():
  out = config_lib.parse_arg('a=3,b=x,c=true', a=1, b='y', c=False)
  assert (out.a, out.b, out.c) == (3, 'x', True)
  with pytest.raises(ValueError, match='unknown config argument'):
    config_lib.parse_arg('z=1', a=1)

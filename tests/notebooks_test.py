"""The notebooks in experiments/notebooks run top to bottom on CPU, and are stored without outputs.

Each notebook is executed with nbclient in a kernel that runs this interpreter (the venv's
python, through a kernelspec written to a temporary folder), with the small setting, its work
directory under pytest's tmp_path and the CPU backend. Any cell error fails the test. The three
notebooks share one JAX compilation cache (compiling the tiny model's initialiser alone takes
about 20 s of CPU): the first to run pays for the compiles the others reuse.
"""

from __future__ import annotations

import json
import os
import re
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, 'experiments', 'notebooks')
NOTEBOOKS = ('quickstart', 'finetune_coco_format', 'inference')
KERNEL_NAME = 'centernet-jax-test'


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name + '.ipynb'), as_version=4)


@pytest.fixture(scope='session')
def jupyter_path(tmp_path_factory) -> str:
  """A JUPYTER_PATH entry whose kernelspec runs this interpreter (not `python` from PATH)."""
  root = tmp_path_factory.mktemp('jupyter')
  spec_dir = root / 'kernels' / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'centernet_jax test kernel', 'language': 'python'}))
  return str(root)


@pytest.fixture(scope='session')
def compilation_cache(tmp_path_factory) -> str:
  """One JAX compilation cache for every notebook of the session (shared by xdist workers)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # the controller's folder, above each worker's own
  path = base / 'notebooks_jax_cache'
  path.mkdir(exist_ok=True)
  return str(path)


def _execute(name: str, workdir: str, cache: str) -> nbformat.NotebookNode:
  """Runs every cell in a fresh kernel (shut down afterwards); returns the executed notebook.

  The kernelspec is looked up on JUPYTER_PATH (the caller points it at ``jupyter_path``).
  """
  from nbclient import NotebookClient

  nb = _read(name)
  env = dict(os.environ, JAX_PLATFORMS='cpu', CENTERNET_NOTEBOOK_SETTING='small',
             CENTERNET_NOTEBOOK_WORKDIR=workdir, JAX_COMPILATION_CACHE_DIR=cache,
             MPLBACKEND='module://matplotlib_inline.backend_inline', TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('CENTERNET_CHECKPOINT', None)
  client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=600,
                          resources={'metadata': {'path': workdir}})
  client.execute(env=env)  # raises CellExecutionError on the first failing cell
  return nb


def _outputs(nb: nbformat.NotebookNode) -> str:
  """Every text output of the executed notebook, concatenated."""
  texts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      texts.append(out.get('text', ''))
      texts.append(out.get('data', {}).get('text/plain', ''))
      texts.append(out.get('data', {}).get('text/markdown', ''))
  return '\n'.join(texts)


def _images(nb: nbformat.NotebookNode) -> int:
  return sum('image/png' in out.get('data', {}) for cell in nb.cells
             for out in cell.get('outputs', []))


# What each notebook must leave behind besides running without error: files (relative to its
# work directory), the number of figures, and a pattern its printed output matches.
EXPECTED = {
    'quickstart': (['quickstart/metrics.jsonl', 'quickstart/checkpoints/40/model',
                    'quickstart/eval/step_40/metrics.json', 'restored_eval/detections.json'],
                   2, r'80 detections on 8 images: identical'),
    'finetune_coco_format': (['mine/annotations/train.json', 'mine/images/val/val_0007.png',
                              'pretrain/checkpoints/40/model', 'finetune/checkpoints/40/model',
                              'finetune/eval/step_40/detections.json'],
                             2, r'category ids \[[0-9, ]+\]'),
    'inference': (['trained/checkpoints/40/model', 'predictions/grid.png',
                   'predictions/000000.json'],
                  1, r'\| 8 \| [0-9.]+ \| [0-9.]+ \| [0-9]+ \|'),
}


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_on_cpu(name, tmp_path, monkeypatch, jupyter_path, compilation_cache):
  monkeypatch.setenv('JUPYTER_PATH', jupyter_path)
  workdir = str(tmp_path / 'work')
  os.makedirs(workdir)
  nb = _execute(name, workdir, compilation_cache)
  files, figures, pattern = EXPECTED[name]
  missing = [f for f in files if not os.path.exists(os.path.join(workdir, f))]
  assert not missing, f'{name}.ipynb did not write {missing}'
  assert _images(nb) >= figures
  assert re.search(pattern, _outputs(nb)), f'{name}.ipynb output lacks {pattern!r}'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == 'code':
      assert cell.outputs == [], f'{name}.ipynb cell {i} has outputs: strip them'
      assert cell.execution_count is None, f'{name}.ipynb cell {i} has an execution count'
  sources = '\n'.join(c.source for c in nb.cells)
  assert re.search(r"^SETTING = os\.environ\.get\('CENTERNET_NOTEBOOK_SETTING', 'auto'\)",
                   sources, re.M), 'the setting variable must be at the top'


def test_readme_links_every_notebook_with_the_notebooks_repository():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  for name in NOTEBOOKS:
    repo_url = re.search(r"^REPO_URL = '(https://github\.com/[^']+)'", '\n'.join(
        c.source for c in _read(name).cells), re.M).group(1)
    slug = repo_url.removeprefix('https://github.com/')
    badge = (f'(https://colab.research.google.com/github/{slug}/blob/main/experiments/notebooks/'
             f'{name}.ipynb)')
    assert badge in readme, f'README.md has no Open in Colab link {badge}'

"""Metrics to JSON lines (``<workdir>/metrics.jsonl``) and TensorBoard; process 0 only."""

from __future__ import annotations

import json
import logging
import os
import time

import jax


class MetricWriter:
  """Appends one JSON object per call and mirrors scalars to TensorBoard when available."""

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl', tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._path = os.path.join(workdir, filename)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:  # tensorboard writing goes through tensorflow; optional where tf is absent
          from flax.metrics import tensorboard as flax_tb
          self._tb = flax_tb.SummaryWriter(os.path.join(workdir, 'tensorboard'))
        except ImportError as e:  # pragma: no cover - only without tensorflow
          logging.warning('TensorBoard disabled: %s', e)

  def write(self, step: int, scalars: dict[str, float], prefix: str = '') -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time()}
    record.update({prefix + k: float(v) for k, v in scalars.items()})
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.scalar(prefix + k, float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, filename: str = 'metrics.jsonl') -> list[dict]:
  """Reads back every record written by MetricWriter."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

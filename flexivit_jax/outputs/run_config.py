"""`<workdir>/config.json`: the completed config of a training run, written and read here only.

The trainer writes it before it trains (process 0); `evaluate` reads the model, data,
pp and grids of a workdir from it, and `compare` the image side of its evaluations.
Readers ask `RunConfig` what they need instead of walking the JSON themselves, so the
file's shape is known in one place.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import atomic

CONFIG_JSON = "config.json"


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_JSON)


def write(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `<workdir>/config.json` atomically (local or gs://); returns its path.

  Call it from one process only (process 0): every process holds the same config.
  """
  return atomic.write_atomic(config_path(workdir), config.to_json_best_effort(indent=2))


def read(workdir: str) -> Optional["RunConfig"]:
  """The config.json of a training workdir, or None when `workdir` has none (an npz file)."""
  path = config_path(workdir)
  text = atomic.read_text(path)
  if text is None:
    return None
  try:
    values = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path!r} is not valid JSON ({e}); it should be the config a "
                    "training run wrote") from None
  return RunConfig(path, values)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A run's config.json as read back: its values, and what the readers ask of them."""
  path: str
  values: Mapping[str, Any]

  @property
  def model_fields(self) -> dict:
    """The FlexiViT fields of `config.model` (empty when the config sets none)."""
    return dict(self.values.get("model") or {})

  @property
  def task(self) -> str:
    """The run's task (`config.task`; configs from before it are classification)."""
    return self.values.get("task") or "classification"

  @property
  def data_dir(self) -> Optional[str]:
    return (self.values.get("input") or {}).get("data_dir")

  def evaluator(self, name: Optional[str] = None) -> Optional[Mapping[str, Any]]:
    """`evals.<name>` ({data, pp, ...}); by default the first evaluator by name whose type is
    the run's task (`classification`, or `segmentation`: the one a checkpoint's score is read
    with, never a few-shot or retrieval probe); None if absent."""
    evals = self.values.get("evals") or {}
    if name is None:
      task = self.values.get("task") or "classification"
      names = [n for n in sorted(evals) if evals[n].get("type", "classification") == task]
      return evals[names[0]] if names else None
    return evals.get(name)

  @property
  def evaluator_names(self) -> list[str]:
    return sorted(self.values.get("evals") or {})

  def eval_seqhws(self) -> Optional[list[int]]:
    """The grids the run evaluates (`eval_flexi`, else `flexi`), when given as seqhw ints."""
    flexi = self.values.get("eval_flexi") or self.values.get("flexi") or {}
    values = (flexi.get("seqhw") or {}).get("v")
    if values and all(isinstance(v, int) for v in values):
      return sorted(values)
    return None

  def eval_image_size(self, evaluator: Optional[str] = None) -> Optional[int]:
    """The side of the images `evaluator` sees (its pp, else the training pp).

    None when the pp leaves the size to the data (no resize or crop) or makes
    non-square images.
    """
    ev = self.evaluator(evaluator)
    pp = ev.get("pp") if ev else (self.values.get("input") or {}).get("pp")
    return pp_image_side(pp) if pp else None


@functools.lru_cache(maxsize=None)
def pp_image_side(pp: str) -> Optional[int]:
  """The side of the square images `pp` makes, as the input pipeline's own ops make them.

  The pp's ops run in a TensorFlow graph on an encoded image of unknown size, so
  the output has a static size exactly when some op fixes it (resize, a crop), the
  last such op deciding; no copy of the ops' size rules lives here. Ops that need a
  key this bare example lacks (labels) do not touch the image and are skipped.
  """
  import tensorflow as tf

  from flexivit_jax.data import preprocess
  spec_ops = preprocess.parse(pp)

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
  def image_of(encoded):
    example, seed = {"image": encoded}, tf.zeros([2], tf.int64)
    for op, fn in spec_ops:
      try:
        example = fn(example, seed) if op.random else fn(example)
      except KeyError:
        continue
    return example["image"]

  height, width = image_of.get_concrete_function().output_shapes[:2]
  return height if height is not None and height == width else None

"""Compute arithmetic for patch-size curricula: equal-compute step counts.

A curriculum config (a list of `dict(until, v, p)` stages, see flexi.py) must be
compared with its baseline at the same training compute. These estimates size
the runs before anything compiles; the trainer then logs the exact compiled
cost as `compute/gflops`, which is what plots and docs use.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def vit_image_flops(seqhw: int, width: int, depth: int, mlp_dim: int, extra_tokens: int = 1
                    ) -> float:
  """Approximate forward FLOPs for one image: dense layers plus attention, per block."""
  n = seqhw * seqhw + extra_tokens
  dense = n * (8 * width * width + 4 * width * mlp_dim)  # qkv+out projections, MLP.
  attention = 4 * n * n * width  # Scores and weighted sum.
  return float(depth * (dense + attention))


def _weights(stage: Mapping) -> Sequence[float]:
  p = stage.get("p", "uniform")
  values = stage["v"]
  if p in (None, "uniform"):
    return [1.0 / len(values)] * len(values)
  return [w / sum(p) for w in p]


def mean_step_flops(stages: Sequence[Mapping], **arch) -> float:
  """Expected per-image FLOPs over a whole curriculum (stages weighted by length)."""
  total, start = 0.0, 0.0
  for stage in stages:
    mean = sum(w * vit_image_flops(v, **arch) for v, w in zip(stage["v"], _weights(stage)))
    total += (stage["until"] - start) * mean
    start = stage["until"]
  return total


def equal_compute_steps(stages: Sequence[Mapping], target_seqhw: int, baseline_steps: float,
                        **arch) -> int:
  """Steps of the curriculum that cost what `baseline_steps` at `target_seqhw` cost."""
  ratio = vit_image_flops(target_seqhw, **arch) / mean_step_flops(stages, **arch)
  return int(round(baseline_steps * ratio))

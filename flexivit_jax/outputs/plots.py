"""Plots of eval results; matplotlib is set up here and nowhere else."""
from __future__ import annotations

import os
from typing import Mapping, Optional

from flexivit_jax.outputs.eval_names import (FlexiKey, flexi_sort_key,
                                             seqhw_and_patch)


def _plot_lines(lines: Mapping[str, tuple], path: str, *, xlabel: str, title: str,
                invert_x: bool = False) -> str:
  """Writes a PNG of prec@1 curves {label: (xs, accuracies in [0, 1])}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (xs, accs) in lines.items():
    ax.plot(xs, [a * 100 for a in accs], marker="o", label=label)
  if invert_x:
    ax.invert_xaxis()
  return save_plot(fig, ax, path, xlabel=xlabel, ylabel="prec@1 (%)", title=title)


def save_plot(fig, ax, path: str, *, xlabel: str, ylabel: str, title: str,
              grid_which: str = "major") -> str:
  """Labels an accuracy plot, saves it as PNG and closes it."""
  import matplotlib.pyplot as plt
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which=grid_which)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # `--out plots/x.png` as typed.
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_accuracy(curves: Mapping[str, Mapping[FlexiKey, float]], path: str, *,
                  image_size: Optional[int] = None, title: str = "") -> str:
  """Writes a PNG of prec@1 against patch size (or seqhw), one line per curve."""
  lines = {}
  for label, curve in curves.items():
    xs = sorted(curve, key=lambda x: flexi_sort_key(x, image_size))
    points = [seqhw_and_patch(x, image_size) for x in xs]
    lines[label] = ([p if image_size or t is None else t for t, p in points],
                    [curve[x] for x in xs])
  xlabel = "patch size (px)" if image_size else "seqhw (tokens per side)"
  return _plot_lines(lines, path, xlabel=xlabel, title=title, invert_x=bool(image_size))


def plot_over_compute(curves: Mapping[str, list], path: str, *, title: str = "") -> str:
  """Writes a PNG of prec@1 against cumulative training GFLOPs, one line per run."""
  lines = {label: ([g for g, _ in points], [a for _, a in points])
           for label, points in curves.items()}
  return _plot_lines(lines, path, xlabel="training compute (GFLOPs, XLA cost analysis)",
                     title=title)

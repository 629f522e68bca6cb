"""Plots of results; matplotlib is set up here and nowhere else.

`new_figure` picks the file-only backend (no display needed: pods, CI) and makes the
figure, `label_axes` styles an accuracy plot, `save_figure` writes the PNG atomically
(local or gs://) and closes the figure. `plot_lines` composes them for line plots;
figures of another kind (the analyses' heatmaps, a t-SNE) draw their own axes between
`new_figure` and `save_figure`.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Optional, Sequence

from flexivit_jax.outputs import atomic
from flexivit_jax.outputs.eval_names import (FlexiKey, flexi_sort_key,
                                             seqhw_and_patch)


def new_figure(figsize: tuple = (6, 4), ncols: int = 1):
  """(figure, axes) on the Agg backend: one axes, or `ncols` side by side."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt.subplots(1, ncols, figsize=figsize)


def label_axes(ax, *, xlabel: str, ylabel: str, title: str, grid_which: str = "major") -> None:
  """Axis labels, a light grid, the legend and the title of a line plot."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which=grid_which)
  ax.legend()
  ax.set_title(title)


def save_figure(fig, path: str, *, tight: bool = True) -> str:
  """Writes the figure to `path` (PNG unless its suffix says otherwise) and closes it."""
  import matplotlib.pyplot as plt
  if tight:
    fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
  plt.close(fig)
  return atomic.write_atomic(path, buffer.getvalue())


def plot_lines(lines: Mapping[str, tuple], path: str, *, xlabel: str, ylabel: str,
               title: str, invert_x: bool = False, log_x: bool = False,
               point_labels: Optional[Mapping[str, Sequence[str]]] = None,
               figsize: tuple = (6, 4)) -> str:
  """A PNG of curves {label: (xs, ys)}, points marked; `point_labels` names each point.

  A log x axis gets minor grid lines too.
  """
  fig, ax = new_figure(figsize)
  for label, (xs, ys) in lines.items():
    ax.plot(xs, ys, marker="o", label=label)
    for text, x, y in zip((point_labels or {}).get(label, ()), xs, ys):
      ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=8)
  if invert_x:
    ax.invert_xaxis()
  if log_x:
    ax.set_xscale("log")
  label_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title,
             grid_which="both" if log_x else "major")
  return save_figure(fig, path)


def _percent(accs: Sequence[float]) -> list:
  return [a * 100 for a in accs]


def plot_accuracy(curves: Mapping[str, Mapping[FlexiKey, float]], path: str, *,
                  image_size: Optional[int] = None, title: str = "",
                  metric: str = "prec@1") -> str:
  """Writes a PNG of `metric` (a fraction, shown in %) against patch size (or seqhw),
  one line per curve."""
  lines = {}
  for label, curve in curves.items():
    xs = sorted(curve, key=lambda x: flexi_sort_key(x, image_size))
    points = [seqhw_and_patch(x, image_size) for x in xs]
    lines[label] = ([p if image_size or t is None else t for t, p in points],
                    _percent([curve[x] for x in xs]))
  xlabel = "patch size (px)" if image_size else "seqhw (tokens per side)"
  return plot_lines(lines, path, xlabel=xlabel, ylabel=f"{metric} (%)", title=title,
                    invert_x=bool(image_size))


def plot_accuracy_vs_cost(curves: Mapping[str, Mapping[FlexiKey, float]],
                          gflops: Mapping[FlexiKey, float], path: str, *,
                          image_size: Optional[int] = None, title: str = "",
                          metric: str = "prec@1") -> str:
  """Writes a PNG of `metric` (prec@1, miou) against forward GFLOPs per image (log x), each
  point named by its patch size: the accuracy-for-compute trade-off of one model."""
  lines, names = {}, {}
  for label, curve in curves.items():
    xs = sorted((x for x in curve if x in gflops), key=lambda x: gflops[x])
    lines[label] = ([gflops[x] for x in xs], _percent([curve[x] for x in xs]))
    names[label] = [_point_name(x, image_size) for x in xs]
  return plot_lines(lines, path, xlabel="GFLOPs per image (forward, XLA count, log scale)",
                    ylabel=f"{metric} (%)", title=title, log_x=True, point_labels=names)


def _point_name(key: FlexiKey, image_size: Optional[int]) -> str:
  seqhw, patch = seqhw_and_patch(key, image_size)
  return f"p{patch}" if patch is not None else f"s{seqhw}"


def plot_over_compute(curves: Mapping[str, list], path: str, *, title: str = "") -> str:
  """Writes a PNG of prec@1 against cumulative training GFLOPs, one line per run."""
  lines = {label: ([g for g, _ in points], _percent([a for _, a in points]))
           for label, points in curves.items()}
  return plot_lines(lines, path, xlabel="training compute (GFLOPs, XLA cost analysis)",
                    ylabel="prec@1 (%)", title=title)


def plot_accuracy_vs_gflops(runs: Mapping[str, Sequence[Mapping]], path: str,
                            title: str = "top-1 vs compute") -> str:
  """PNG of top-1 against GFLOPs/image (log x) of eval.json rows, each point named
  by its patch size, one line per run."""
  lines, names = {}, {}
  for label, rows in runs.items():
    rows = sorted((r for r in rows if r["gflops"]), key=lambda r: r["gflops"])
    lines[label] = ([r["gflops"] for r in rows], _percent([r["top1"] for r in rows]))
    names[label] = [f"p{r['patch']}" for r in rows]
  return plot_lines(lines, path, xlabel="GFLOPs per image (XLA count, log scale)",
                    ylabel="top-1 (%)", title=title, log_x=True, point_labels=names)


def plot_matrix(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str, *,
                xlabel: str, ylabel: str, title: str, percent: bool = True) -> str:
  """A heatmap of a square matrix of fractions (rows: ylabel, columns: xlabel), each cell
  written in it (as a percentage by default)."""
  import numpy as np
  values = np.asarray(matrix, float) * (100 if percent else 1)
  side = max(3.5, 0.6 * len(labels) + 2)
  fig, ax = new_figure((side + 1, side))
  image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100 if percent else None)
  ax.set_xticks(range(len(labels)), labels)
  ax.set_yticks(range(len(labels)), labels)
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8,
              color="white" if values[i, j] < 0.6 * np.nanmax(values) else "black")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046)
  return save_figure(fig, path)

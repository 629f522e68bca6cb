"""Plots: one set-up, PNGs written whole (local or URL) for every plot the package makes."""
import numpy as np
import pytest

from flexivit_jax.outputs import plots

PNG = b"\x89PNG"


def test_line_plots_write_whole_pngs_into_folders_made_as_needed(tmp_path):
  out = tmp_path / "plots"
  curves = {"flexi": {(("seqhw", 3),): 0.9, (("seqhw", 6),): 0.95}}
  written = [
      plots.plot_accuracy(curves, str(out / "acc.png"), image_size=48, title="t"),
      plots.plot_over_compute({"run": [(1.0, 0.5), (2.0, 0.7)]}, str(out / "flops.png")),
      plots.plot_accuracy_vs_gflops(
          {"run": [{"gflops": 0.01, "top1": 0.5, "patch": 16},
                   {"gflops": None, "top1": 0.1, "patch": 4}]}, str(out / "gflops.png")),
      plots.plot_accuracy_vs_cost(curves, {(("seqhw", 3),): 0.01, (("seqhw", 6),): 0.04},
                                  str(out / "cost.png"), image_size=48)]
  names = ("acc.png", "flops.png", "gflops.png", "cost.png")
  assert written == [str(out / n) for n in names]
  assert all(open(p, "rb").read(4) == PNG for p in written)
  assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_figures_drawn_by_their_callers_save_to_urls_too():
  import tensorflow as tf
  fig, axes = plots.new_figure((4, 2), ncols=2)
  for ax in axes:
    ax.imshow(np.eye(3))
  path = plots.save_figure(fig, "ram://flexivit_plots/heatmap.png", tight=False)
  with tf.io.gfile.GFile(path, "rb") as f:
    assert f.read(4) == PNG
  assert not tf.io.gfile.exists(path + ".tmp")


@pytest.mark.parametrize("suffix,magic", [(".png", PNG), (".pdf", b"%PDF")])
def test_the_suffix_picks_the_format(tmp_path, suffix, magic):
  path = plots.plot_lines({"a": ([1, 2], [3, 4])}, str(tmp_path / f"p{suffix}"), xlabel="x",
                          ylabel="y", title="t")
  assert open(path, "rb").read(4) == magic

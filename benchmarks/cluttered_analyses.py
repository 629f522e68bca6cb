"""Resize methods (paper Fig. 3) and CKA across grids (paper Fig. 6) on `cluttered_digits`.

Two runs from the README demo's config (64 px, width 64, depth 4, Adam 2e-3,
cosine, batch 64, `--steps` steps each, seed 0), trained into `--root` or read
back from there (the same folders and configs as benchmarks/one_vs_many.py, so
the default `--root` shares them):
  teacher        a plain ViT at patch 8 (seqhw 8): `demo_cluttered.py:baseline`;
  flexi_scratch  the README demo's FlexiViT (a random patch per step, seqhw 4..8);
  flexi_distill  with `--distilled`: the paper's recipe (one_vs_many.py's), a FlexiViT
                 initialised from the teacher and distilled from it at patch 8.
Then, on the test split (1,000 images):
  resize methods  the ViT with its 8 px kernel resized by vanilla / area / norm / PI-resize
                  (flexivit_jax.analysis.resize_methods), (a) as in the paper: image and
                  patch scaled together, the 8x8 grid kept (patches 4..16 px = images
                  32..128 px); (b) image kept at 64 px, so the grid changes with the patch
                  (the position embedding resampled too);
  CKA             (flexivit_jax.analysis.cka) per block, between each model's
                  representations at the finest grid (8, patch 8) and each coarser one
                  (7, 6, 5, 4 = patches 9, 10, 12, 16), patch tokens (area-averaged onto
                  the coarser grid) and the cls token, on the first `--num_images` test
                  images; the arc-cosine distance between their final representations,
                  and how often the predicted class at a coarser grid is the one at grid 8.
Writes OUT_DIR/cluttered_resize_methods.{json,png} and OUT_DIR/cluttered_cka.{json,png}.

  python benchmarks/cluttered_analyses.py --root workdirs/one_vs_many --out_dir docs/figures \
      [--distilled]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import cluttered_runs as common  # benchmarks/cluttered_runs.py; puts the repo on sys.path.
import one_vs_many  # benchmarks/one_vs_many.py: the distilled FlexiViT's config.
from flexivit_jax.analysis import cka, resize_methods, subjects
from flexivit_jax.outputs import plots, tables

FINEST, COARSER = 8, (7, 6, 5, 4)  # seqhw; patches 8 | 9, 10, 12, 16 px at 64 px.
PATCHES = (4, 6, 8, 9, 10, 12, 16)  # Resize methods: the ViT's 8 px kernel resized to these.
TEST = {"name": "cluttered_digits", "split": "test"}
MODELS = {"flexi_scratch": "FlexiViT (README demo)", "flexi_distill": "FlexiViT, distilled",
          "teacher": "ViT trained at patch 8"}


def train_runs(root: str, steps: int, adopt: dict, distilled: bool = False) -> dict:
  """{name: result} of the runs, trained (or read back) in `root`; the teacher first (the
  distilled FlexiViT starts from it)."""
  configs = {"teacher": common.demo_config(f"baseline,steps={steps}"),
             "flexi_scratch": common.demo_config(f"steps={steps}")}
  if distilled:
    configs["flexi_distill"] = one_vs_many.distill_config(
        steps, os.path.abspath(os.path.join(root, "teacher")))
  for name, source in adopt.items():
    common.adopt_copy(source, os.path.join(root, name), configs[name])
  return {name: common.train(common.quiet(c), os.path.join(root, name))
          for name, c in configs.items()}


def resize_analysis(workdir: str) -> dict:
  """Both resize settings for the ViT in `workdir`: {"fixed_grid": {method: {patch: %}},
  "fixed_image": {...}}."""
  model, params = subjects.load_subject(workdir)
  patch = model.hparams()["patch_size"][0]
  kw = dict(data_cfg=TEST, pp_template=subjects.DIGITS_PP)
  by_factor = resize_methods.resize_methods(model, params, common.IMAGE,
                                            factors=[p / patch for p in PATCHES], **kw)
  fixed_grid = {m: {str(round(float(f) * patch)): 100 * v for f, v in r.items()}
                for m, r in by_factor.items()}
  fixed_image = resize_methods.fixed_image(model, params, common.IMAGE,
                                           patches=[p for p in PATCHES if p >= patch], **kw)
  return dict(fixed_grid=fixed_grid,
              fixed_image={m: {p: 100 * v for p, v in r.items()} for m, r in fixed_image.items()})


def cka_analysis(workdir: str, images) -> dict:
  """Per-block CKA of grid FINEST vs each COARSER grid, and arc-cosine distances."""
  model, params = subjects.load_subject(workdir)
  pairs = {str(g): cka.cka_between_grids(model, params, images, FINEST, g)["per_layer"]
           for g in COARSER}
  grids = sorted((FINEST,) + COARSER)
  distance, _ = cka.arccos_distances(model, params, images, grids)
  predicted = {g: np.asarray(subjects.forward(model, params, images, seqhw=g)[0]).argmax(-1)
               for g in (FINEST,) + COARSER}
  same = {str(g): 100 * float(np.mean(predicted[g] == predicted[FINEST])) for g in COARSER}
  return dict(per_layer=pairs, arccos=dict(grids=grids, distance=distance),
              same_prediction_as_finest=same)


def resize_tables(resize: dict, acc: dict) -> str:
  methods = list(resize["fixed_grid"])
  grid = tables.format_rows(
      ["patch", "image", *methods],
      [[p, f"{8 * p}px", *(f"{resize['fixed_grid'][m][str(p)]:.1f}" for m in methods)]
       for p in PATCHES])
  seqhw = lambda p: common.IMAGE // int(p)
  image = tables.format_rows(
      ["patch", "seqhw", *methods, "FlexiViT"],
      [[p, seqhw(p), *(f"{resize['fixed_image'][m][p]:.1f}" for m in methods),
        f"{acc['flexi_scratch'][seqhw(p)]:.1f}"] for p in resize["fixed_image"]["pi"]])
  return f"(a) grid kept at 8x8, image and patch scaled:\n{grid}\n" \
         f"(b) image kept at 64 px, grid changes:\n{image}"


def cka_table(results: dict, acc: dict) -> str:
  rows = []
  for name, r in results.items():
    for g, layers in r["per_layer"].items():
      same = r.get("same_prediction_as_finest", {}).get(g)
      rows.append([MODELS[name], f"8 vs {g}", f"{acc[name][int(g)]:.1f}",
                   "-" if same is None else f"{same:.1f}",
                   *(f"{x['patch_tokens']:.2f}/{x['pooled_token']:.2f}" for x in layers)])
  depth = len(next(iter(results.values()))["per_layer"][str(COARSER[0])])
  return tables.format_rows(["model", "seqhw", "top-1 at coarser", "same class as at 8 (%)",
                             *(f"block {i} patch/cls" for i in range(depth))], rows)


def plot_resize(resize: dict, path: str) -> str:
  fig, axes = plots.new_figure((10, 3.8), ncols=2)
  for ax, key, title in ((axes[0], "fixed_grid", "grid 8x8 kept, image scaled (paper Fig. 3)"),
                         (axes[1], "fixed_image", "image 64 px kept, grid changes")):
    for m, curve in resize[key].items():
      ax.plot([int(p) for p in curve], list(curve.values()), marker="o", label=m)
    ax.axvline(8, color="grey", lw=0.8, ls=":")
    plots.label_axes(ax, xlabel="patch size (px)", ylabel="test top-1 (%)", title=title)
    ax.title.set_fontsize(9)
  return plots.save_figure(fig, path)


def plot_cka(results: dict, path: str) -> str:
  """Per-block CKA curves: a patch-token and a cls-token panel per model."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in MODELS if n in results]
  fig, axes = plt.subplots(len(names), 2, figsize=(8, 3 * len(names)), squeeze=False)
  panels = [(n, k) for n in names for k in ("patch_tokens", "pooled_token")]
  for ax, (name, key) in zip(axes.flat, panels):
    for g, layers in results[name]["per_layer"].items():
      ax.plot([x["block"] for x in layers], [x[key] for x in layers], marker="o",
              label=f"8 vs {g} (patch {common.IMAGE // int(g)})")
    ax.set_xticks([x["block"] for x in layers])
    ax.set_ylim(0, 1.02)
    tokens = "patch tokens" if key == "patch_tokens" else "cls token"
    plots.label_axes(ax, xlabel="block", ylabel="linear CKA", title=f"{MODELS[name]}: {tokens}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
  return plots.save_figure(fig, path)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/one_vs_many")
  p.add_argument("--steps", type=int, default=2400)
  p.add_argument("--num_images", type=int, default=500, help="test images for CKA")
  p.add_argument("--out_dir", default=None, help="writes cluttered_{resize_methods,cka}.{json,png}")
  p.add_argument("--adopt", action="append", default=[], metavar="NAME=WORKDIR",
                 help="teacher=DIR (demo_cluttered.py:baseline) or flexi_scratch=DIR "
                      "(demo_cluttered.py): use that finished run (checked to be the same "
                      "training config) instead of training it again")
  p.add_argument("--distilled", action="store_true",
                 help="also train (or read back) one_vs_many.py's distilled FlexiViT and "
                      "include it in the CKA analysis")
  args = p.parse_args()
  adopt = dict(a.split("=", 1) for a in args.adopt)
  if set(adopt) - {"teacher", "flexi_scratch"}:
    p.error(f"--adopt names teacher or flexi_scratch, not "
            f"{sorted(set(adopt) - {'teacher', 'flexi_scratch'})}")
  runs = train_runs(args.root, args.steps, adopt, args.distilled)
  acc = {n: {s: round(common.test_acc(r, s), 2) for s in (FINEST,) + COARSER}
         for n, r in runs.items()}
  workdirs = {n: os.path.join(args.root, n) for n in MODELS if n in runs}

  start = time.time()
  resize = resize_analysis(workdirs["teacher"])
  resize_s = round(time.time() - start, 1)
  print(resize_tables(resize, acc), flush=True)

  start = time.time()
  images, _ = subjects.eval_images(TEST, subjects.eval_pp(subjects.DIGITS_PP, common.IMAGE),
                                   args.num_images)
  similarity = {n: cka_analysis(workdirs[n], images) for n in workdirs}
  cka_s = round(time.time() - start, 1)
  print(cka_table(similarity, acc))
  for n, r in similarity.items():
    print(f"{MODELS[n]}: arc-cosine distance (rad) between final representations, "
          f"seqhw {r['arccos']['grids']}:")
    print(tables.format_rows(["seqhw", *r["arccos"]["grids"]],
                             [[g, *(f"{v:.3f}" for v in row)]
                              for g, row in zip(r["arccos"]["grids"], r["arccos"]["distance"])]))
  trained = ", ".join(f"{n} {r['wall_s']}" for n, r in runs.items())
  print(f"wall s: training {trained}; resize methods {resize_s}; CKA {cka_s}")
  if args.out_dir:
    meta = dict(steps=args.steps, seed=0, image=common.IMAGE, test_top1=acc,
                train_wall_s={n: r["wall_s"] for n, r in runs.items()})
    out = lambda name: os.path.join(args.out_dir, name)
    common.write_json(out("cluttered_resize_methods.json"),
                      dict(meta, analysis_wall_s=resize_s, **resize))
    common.write_json(out("cluttered_cka.json"),
                      dict(meta, analysis_wall_s=cka_s, num_images=len(images), **similarity))
    print("plot:", plot_resize(resize, out("cluttered_resize_methods.png")))
    print("plot:", plot_cka(similarity, out("cluttered_cka.png")))


if __name__ == "__main__":
  main()

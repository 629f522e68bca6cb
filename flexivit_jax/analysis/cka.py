"""How similar are a FlexiViT's representations at two grid sizes? (paper Sec. 5)

Linear CKA between every block's output at grid A and every block's output at
grid B, for the patch tokens (the finer grid's area-averaged onto the coarser
grid: each coarse cell the overlap-weighted mean of the fine tokens it covers)
and, separately, for the pooled token (cls token, or the mean token for gap/map
heads). Plus the arc-cosine distance between the final representations of the
same images at different grids, and a t-SNE of them (scikit-learn).

  python -m flexivit_jax.analysis.cka --out OUT [--checkpoint CKPT] [--grids 12,6]
  python -m flexivit_jax.analysis.cka --out OUT --dataset cluttered_digits [--grids 8,4]

`--dataset` picks the subject's bundled data and the defaults: sklearn_digits
(48 px, grids 12 vs 6, arc-cosine over 3..12) or cluttered_digits (the README
demo's FlexiViT: 64 px, grids 8 vs 4, arc-cosine over 4..8).

results.json holds the per-layer CKA, both CKA matrices (rows: blocks at grid A)
and the arc-cosine distance matrix; plots cka.png (heatmaps) and tsne.png.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from flexivit_jax import cli
from flexivit_jax.analysis import common, subjects
from flexivit_jax.errors import UserError
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import plots, tables

IMAGE_SIZE, GRIDS, ALL_GRIDS = 48, (12, 6), (3, 4, 6, 8, 12)
# {dataset: defaults}; posemb: the stored position-embedding grid of a trained subject.
FULL = {"sklearn_digits": dict(image_size=IMAGE_SIZE, grids=GRIDS, all_grids=ALL_GRIDS,
                               posemb=6),
        "cluttered_digits": dict(image_size=64, grids=(8, 4), all_grids=(4, 5, 6, 7, 8),
                                 posemb=8)}
RUNLOCAL = {"sklearn_digits": dict(image_size=16, grids=(4, 2), all_grids=(2, 4), posemb=2),
            "cluttered_digits": dict(image_size=16, grids=(4, 2), all_grids=(2, 4), posemb=4)}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA of two (examples, features) matrices (Kornblith et al. 2019)."""
  x = np.asarray(x, np.float64) - np.mean(x, 0)
  y = np.asarray(y, np.float64) - np.mean(y, 0)
  cross = np.linalg.norm(y.T @ x) ** 2
  return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def area_weights(fine: int, coarse: int) -> np.ndarray:
  """(coarse, fine) weights: row i averages the fine cells over coarse cell i of the same
  extent, each weighted by its overlap (rows sum to 1; h/grid blocks when it divides)."""
  edges_f = np.arange(fine + 1) / fine
  edges_c = np.arange(coarse + 1) / coarse
  lo = np.maximum(edges_c[:-1, None], edges_f[None, :-1])
  hi = np.minimum(edges_c[1:, None], edges_f[None, 1:])
  return np.clip(hi - lo, 0.0, None) * coarse


def area_average(tokens: np.ndarray, grid: int) -> np.ndarray:
  """(n, h, w, d) patch tokens -> (n, grid, grid, d), area-averaged (grid <= h, w)."""
  n, h, w, d = tokens.shape
  if grid > h or grid > w or grid < 1:
    raise UserError(f"cannot area-average a {h}x{w} token grid to {grid}x{grid}; "
                     f"allowed: 1..{min(h, w)}")
  return np.einsum("ih,jw,nhwd->nijd", area_weights(h, grid), area_weights(w, grid), tokens)


def block_features(model: FlexiViT, params: Mapping, images, seqhw: int
                   ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
  """(patch tokens (n, h, w, d) per block, pooled token (n, d) per block, pre_logits)."""
  _, out = subjects.forward(model, params, images, seqhw=seqhw)
  blocks = [np.asarray(out["encoder"][k]["+mlp"]) for k in sorted(out["encoder"])
            if k.startswith("block")]
  has_cls = model.pool_type == "tok"
  n = blocks[0].shape[0]
  patches = [b[:, 1:] if has_cls else b for b in blocks]
  pooled = [b[:, 0] if has_cls else b.mean(axis=1) for b in blocks]
  patches = [p.reshape(n, seqhw, seqhw, -1) for p in patches]
  return patches, pooled, np.asarray(out["pre_logits"])


def cka_between_grids(model: FlexiViT, params: Mapping, images, grid_a: int, grid_b: int
                      ) -> dict:
  """CKA matrices (blocks at grid_a x blocks at grid_b) for patch and pooled tokens."""
  common_grid = min(grid_a, grid_b)
  pa, qa, _ = block_features(model, params, images, grid_a)
  pb, qb, _ = block_features(model, params, images, grid_b)
  flat = lambda t: area_average(t, common_grid).reshape(-1, t.shape[-1])
  pa, pb = [flat(t) for t in pa], [flat(t) for t in pb]
  patch = [[linear_cka(x, y) for y in pb] for x in pa]
  pooled = [[linear_cka(x, y) for y in qb] for x in qa]
  return {"grids": [grid_a, grid_b], "common_grid": common_grid,
          "patch_tokens": patch, "pooled_token": pooled,
          "per_layer": [{"block": i, "patch_tokens": patch[i][i], "pooled_token": pooled[i][i]}
                        for i in range(len(patch))]}


def arccos_distances(model: FlexiViT, params: Mapping, images, grids: Sequence[int]
                     ) -> tuple[list[list[float]], np.ndarray]:
  """Mean arc-cosine distance (radians) between an image's representations at two grids."""
  reps = np.stack([block_features(model, params, images, g)[2] for g in grids])  # (G, n, d)
  unit = reps / np.linalg.norm(reps, axis=-1, keepdims=True)
  cos = np.clip(np.einsum("and,bnd->abn", unit, unit), -1.0, 1.0)
  return np.arccos(cos).mean(-1).tolist(), reps


def tsne(reps: np.ndarray, seed: int = 0) -> np.ndarray:
  """2-D t-SNE of (G, n, d) representations -> (G, n, 2)."""
  from sklearn.manifold import TSNE
  g, n, d = reps.shape
  perplexity = min(30.0, (g * n - 1) / 3)
  emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
             ).fit_transform(reps.reshape(g * n, d))
  return emb.reshape(g, n, 2)


def plot_cka(results: Mapping, path: str) -> tuple[int, int]:
  """Heatmaps of both CKA matrices; returns the (rows, cols) drawn: (blocks, blocks)."""
  ga, gb = results["grids"]
  fig, axes = plots.new_figure((9, 4), ncols=2)
  for ax, key in zip(axes, ("patch_tokens", "pooled_token")):
    mat = np.asarray(results[key])
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="magma", origin="upper")
    ax.set_yticks(range(mat.shape[0]), [f"block {i}" for i in range(mat.shape[0])])
    ax.set_xticks(range(mat.shape[1]), [str(i) for i in range(mat.shape[1])])
    ax.set_ylabel(f"seqhw {ga}")
    ax.set_xlabel(f"block at seqhw {gb}")
    ax.set_title(key.replace("_", " "))
    for (i, j), v in np.ndenumerate(mat):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="black" if v > 0.6 else "white")
  fig.colorbar(im, ax=axes, shrink=0.8, label="linear CKA")
  plots.save_figure(fig, path, tight=False)  # The colorbar spans both axes: no tight layout.
  return mat.shape


def plot_tsne(emb: np.ndarray, labels: np.ndarray, grids: Sequence[int], path: str) -> str:
  fig, ax = plots.new_figure((5, 4.5))
  markers = "os^Dv<>ph*"
  for k, g in enumerate(grids):
    ax.scatter(emb[k, :, 0], emb[k, :, 1], c=labels, cmap="tab10", s=10,
               marker=markers[k % len(markers)], label=f"seqhw {g}", alpha=0.7)
  ax.legend(fontsize=8)
  ax.set_title("t-SNE of final representations (colour: class)")
  ax.set_xticks([])
  ax.set_yticks([])
  return plots.save_figure(fig, path)


def table(results: Mapping) -> str:
  rows = [[r["block"], r["patch_tokens"], r["pooled_token"]] for r in results["per_layer"]]
  ga, gb = results["grids"]
  return tables.format_rows(["block", f"CKA patch {ga}vs{gb}", f"CKA pooled {ga}vs{gb}"],
                            [[b, f"{p:.3f}", f"{q:.3f}"] for b, p, q in rows])


def analyse(model, params, images, labels, grids, all_grids, out: str) -> dict:
  """Everything the CLI writes: results, cka.png, tsne.png."""
  results = cka_between_grids(model, params, images, *grids)
  results["arccos"] = {"grids": list(all_grids)}
  results["arccos"]["distance"], reps = arccos_distances(model, params, images, all_grids)
  os.makedirs(out, exist_ok=True)
  plot_cka(results, os.path.join(out, "cka.png"))
  plot_tsne(tsne(reps), labels, all_grids, os.path.join(out, "tsne.png"))
  return results


def check_grids(grids: Sequence[int], image_size: int) -> None:
  """Every grid must fit the image (at least one pixel per patch)."""
  bad = [g for g in grids if g > image_size]
  if bad:
    raise UserError(f"grids {bad} are larger than the {image_size} px image; "
                     f"allowed: 1..{image_size} tokens per side")


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(__doc__, "flexivit_jax.analysis.cka")
  p.add_argument("--checkpoint", default=None, help="a FlexiViT (default: train one)")
  p.add_argument("--image_size", type=int, default=None)
  p.add_argument("--grids", default=None, help="the two grids compared by CKA, e.g. 12,6")
  p.add_argument("--all_grids", default=None, help="grids of the arc-cosine/t-SNE view")
  p.add_argument("--num_images", type=int, default=200)
  common.add_subject_args(p, default_steps=1200)
  return p


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  cli.quiet_libraries()
  d, image_size = common.setting(args, RUNLOCAL, FULL)
  grids = common.int_list(args.grids, "--grids") if args.grids else list(d["grids"])
  if len(grids) != 2:
    raise UserError(f"--grids takes two grids, got {args.grids!r}")
  all_grids = (common.int_list(args.all_grids, "--all_grids") if args.all_grids
               else list(d["all_grids"]))
  check_grids(grids + all_grids, image_size)
  if args.num_images < 2:
    raise UserError(f"--num_images must be at least 2 (CKA centres over images), "
                     f"got {args.num_images}")
  if args.checkpoint:
    model, params = subjects.load_subject(args.checkpoint, args.model)
  else:
    model, params = subjects.train_subject(
        os.path.join(args.out, "subject"), image_size=image_size,
        train_seqhws=sorted(set(all_grids) | set(grids)), posemb=d["posemb"],
        steps=None if args.runlocal else common.steps(args), runlocal=args.runlocal,
        progress=args.progress, dataset=args.dataset)
  images, labels = subjects.eval_images(common.eval_data(args),
                                        subjects.eval_pp(args.pp, image_size), args.num_images)
  common.progress(args, 1, "analysis").line(
      f"CKA between seqhw {grids[0]} and {grids[1]}, arc-cosine distances and t-SNE over seqhw "
      f"{','.join(map(str, all_grids))} on {len(images)} images")
  results = analyse(model, params, images, labels, grids, all_grids, args.out)
  print(table(results))
  print("arc-cosine distance (rad) between grids " + str(all_grids) + ":")
  print(tables.format_rows(["seqhw"] + all_grids, [[g] + [f"{v:.3f}" for v in row] for g, row
                                                   in zip(all_grids, results["arccos"]["distance"])]))
  print(f"wrote {common.write_results(args.out, results)}")
  print(f"wrote {os.path.join(args.out, 'cka.png')} and {os.path.join(args.out, 'tsne.png')}")


if __name__ == "__main__":
  main()

"""How to resize the patch embedding (paper Fig. 3): vanilla, area, norm and PI-resize.

A ViT trained at one image size and patch size is evaluated with the image and
the patch scaled together by each factor, so the token grid stays the same and
only the patch-embedding kernel is resized:
  vanilla  bilinear resize of the kernel;
  area     vanilla, scaled by the area ratio;
  norm     vanilla, then every token rescaled to the mean token norm the model
           has at its training size;
  pi       PI-resize (exact for upsampling).

  python -m flexivit_jax.analysis.resize_methods --out OUT [--checkpoint CKPT --image_size 32]
  python -m flexivit_jax.analysis.resize_methods --out OUT --dataset cluttered_digits \
      [--checkpoint CKPT] [--patches 4,6,8,9,10,12,16]

`--dataset` picks the subject's bundled data and the defaults: sklearn_digits
(32 px, 8 px patches, `--factors` 0.5..2) or cluttered_digits (64 px, 8 px
patches: the README demo's ViT at patch 8, evaluated at patches 4..16 px, i.e.
images 32..128 px). `--patches` names the evaluated patch sizes instead of
factors (factor = patch / the subject's patch).

results.json is {method: {factor: top1}}; also a table and resize_methods.png.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

import jax.numpy as jnp

from flexivit_jax import cli
from flexivit_jax.analysis import common, subjects
from flexivit_jax.errors import UserError
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import plots, tables

METHODS = ("vanilla", "area", "norm", "pi")
FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
# The subject: 32 px digits, 8 px patches (a 4x4 grid); every factor then gives
# an integer image side and patch (16..64 px, 4..16 px).
IMAGE_SIZE, PATCH = 32, 8
# On cluttered_digits: 64 px, 8 px patches (an 8x8 grid), evaluated at patches 4, 6, 8,
# 9, 10, 12, 16 px (images 32..128 px): the README demo's patch sizes and two finer ones.
CLUTTERED_FACTORS = (0.5, 0.75, 1.0, 1.125, 1.25, 1.5, 2.0)
FULL = {"sklearn_digits": dict(image_size=IMAGE_SIZE, factors=FACTORS),
        "cluttered_digits": dict(image_size=64, factors=CLUTTERED_FACTORS)}
# runlocal: the demos' tiny models at 16 px (8 px patches on digits, 4 px on cluttered).
RUNLOCAL = {"sklearn_digits": dict(image_size=16, factors=FACTORS),
            "cluttered_digits": dict(image_size=16, factors=FACTORS)}


def mean_token_norm(model: FlexiViT, params: Mapping, images) -> float:
  """Mean L2 norm of the patch-embedding tokens at the model's own patch size."""
  _, out = subjects.forward(model, params, images)
  return float(jnp.mean(jnp.linalg.norm(out["stem"], axis=-1)))


def method_model(model: FlexiViT, method: str, token_norm: float) -> FlexiViT:
  if method not in METHODS:
    raise UserError(f"unknown resize method {method!r}; allowed: {', '.join(METHODS)}")
  return model.clone(resize_method=method, token_norm=token_norm if method == "norm" else None)


def eval_sizes(image_size: int, patch: int, factors: Sequence[float]) -> dict[float, int]:
  """{factor: image side} for a model trained at `image_size` with `patch`; each side must
  be an integer multiple of the (fixed) grid, so the scaled patch is an integer too."""
  if image_size % patch:
    raise UserError(f"image side {image_size} px is not a multiple of the model's patch "
                     f"({patch} px); allowed: {patch}, {2 * patch}, {3 * patch}, ...")
  grid = image_size // patch
  sizes = {f: int(round(image_size * f)) for f in factors}
  bad = [f for f, s in sizes.items() if abs(s - image_size * f) > 1e-9 or s % grid or s < 1]
  if bad:
    raise UserError(f"factors {bad} do not give an integer image side and patch for "
                     f"{image_size} px images on a {grid}x{grid} grid")
  return sizes


def resize_methods(model: FlexiViT, params: Mapping, image_size: int, *, data_cfg: Mapping,
                   pp_template: str, factors: Sequence[float] = FACTORS,
                   methods: Sequence[str] = METHODS, batch_size: int = 100,
                   progress=None) -> dict[str, dict[str, float]]:
  """{method: {factor: top1}} with image and patch scaled together by each factor.

  `progress` (a metrics.Progress over the factors, optional) gets a line per factor.
  """
  patch = model.hparams()["patch_size"][0]
  grid = image_size // patch
  sizes = eval_sizes(image_size, patch, factors)
  images, _ = subjects.eval_images(data_cfg, subjects.eval_pp(pp_template, image_size), 256)
  norm = mean_token_norm(model, params, images)
  results = {m: {} for m in methods}
  for f, size in sizes.items():
    pp = subjects.eval_pp(pp_template, size)
    base = subjects.top1(model, params, data_cfg, pp, grid, batch_size) if size == image_size \
        else None
    for m in methods:  # At the training size no method changes anything.
      results[m][str(f)] = base if base is not None else subjects.top1(
          method_model(model, m, norm), params, data_cfg, pp, grid, batch_size)
    if progress is not None:
      progress.update(1)
      progress.log({"scale": f, "image": f"{size}px",
                    **{m: f"{results[m][str(f)] * 100:.2f}%" for m in methods}})
  return results


def fixed_image(model: FlexiViT, params: Mapping, image_size: int, *, data_cfg: Mapping,
                pp_template: str, patches: Sequence[int], methods: Sequence[str] = METHODS,
                batch_size: int = 100) -> dict[str, dict[str, float]]:
  """{method: {patch: top1}} with the image kept at `image_size`: the token grid changes
  with the patch (the position embedding is resampled to it), as when a ViT trained at one
  patch size is deployed at another; the contrast to `resize_methods`' fixed grid. At the
  model's own patch nothing is resized, so every method shares the plain model's number."""
  grids = {p: image_size // p for p in patches}
  bad = [p for p, g in grids.items() if g < 1 or image_size // g != p]
  if bad:
    raise UserError(f"patches {bad} are not image_size // seqhw for any grid of a "
                     f"{image_size} px image (e.g. {image_size // 4}, {image_size // 8})")
  pp = subjects.eval_pp(pp_template, image_size)
  images, _ = subjects.eval_images(data_cfg, pp, 256)
  norm = mean_token_norm(model, params, images)
  own = model.hparams()["patch_size"][0]
  base = {p: subjects.top1(model, params, data_cfg, pp, g, batch_size)
          for p, g in grids.items() if p == own}
  return {m: {str(p): base[p] if p in base else subjects.top1(
      method_model(model, m, norm), params, data_cfg, pp, g, batch_size)
              for p, g in grids.items()} for m in methods}


def table(results: Mapping[str, Mapping[str, float]], image_size: int, patch: int) -> str:
  factors = list(next(iter(results.values())))
  rows = [[f, f"{round(float(f) * image_size)}px/p{round(float(f) * patch)}"]
          + [results[m][f] * 100 for m in results] for f in factors]
  return tables.format_rows(["factor", "image/patch"] + list(results), rows)


def plot(results: Mapping[str, Mapping[str, float]], path: str) -> str:
  curves = {m: ([float(f) for f in c], [v * 100 for v in c.values()])
            for m, c in results.items()}
  return plots.plot_lines(curves, path, xlabel="image and patch scale factor",
                          ylabel="top-1 (%)", title="resizing the patch embedding",
                          figsize=(5, 3.5))


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(__doc__, "flexivit_jax.analysis.resize_methods")
  p.add_argument("--checkpoint", default=None, help="a fixed-patch ViT (default: train one)")
  p.add_argument("--image_size", type=int, default=None,
                 help=f"the checkpoint's training image side (default {IMAGE_SIZE})")
  p.add_argument("--factors", default=None,
                 help="image and patch scale factors (default: --dataset's, e.g. "
                      f"{','.join(map(str, FACTORS))} on sklearn_digits)")
  p.add_argument("--patches", default=None,
                 help="the patch sizes (px) to evaluate at instead of --factors, e.g. 8,12,16")
  common.add_subject_args(p, default_steps=1000)
  return p


def factors_of(args, defaults: Sequence[float], patch: int) -> list[float]:
  """--factors, or --patches as factors of the subject's `patch`, or the defaults."""
  if args.factors and args.patches:
    raise UserError(f"pass --factors or --patches, not both (got --factors {args.factors} "
                     f"and --patches {args.patches})")
  if args.patches:
    return [p / patch for p in common.int_list(args.patches, "--patches")]
  factors = common.float_list(args.factors, "--factors") if args.factors else list(defaults)
  if not factors or min(factors) <= 0:
    raise UserError(f"--factors must be positive numbers, got {args.factors!r}")
  return factors


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  cli.quiet_libraries()
  d, image_size = common.setting(args, RUNLOCAL, FULL)
  if args.checkpoint:
    model, params = subjects.load_subject(args.checkpoint, args.model)
    patch = model.hparams()["patch_size"][0]
  else:
    patch = subjects.subject_config(image_size=image_size, train_seqhws=[1], posemb=1,
                                    steps=None, runlocal=args.runlocal,
                                    dataset=args.dataset).model.patch_size[0]
  factors = factors_of(args, d["factors"], patch)
  eval_sizes(image_size, patch, factors)  # Bad sizes fail before a subject trains.
  if not args.checkpoint:
    grid = image_size // patch
    model, params = subjects.train_subject(
        os.path.join(args.out, "subject"), image_size=image_size, train_seqhws=[grid],
        posemb=grid, steps=None if args.runlocal else common.steps(args),
        runlocal=args.runlocal, progress=args.progress, dataset=args.dataset)
  results = resize_methods(model, params, image_size, data_cfg=common.eval_data(args),
                           pp_template=args.pp, factors=factors, batch_size=args.batch_size,
                           progress=common.progress(args, len(factors), "factor"))
  print(table(results, image_size, model.hparams()["patch_size"][0]))
  print(f"wrote {common.write_results(args.out, results)}")
  print(f"wrote {plot(results, os.path.join(args.out, 'resize_methods.png'))}")


if __name__ == "__main__":
  main()

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


def mean_token_norm(model: FlexiViT, params: Mapping, images) -> float:
  """Mean L2 norm of the patch-embedding tokens at the model's own patch size."""
  _, out = subjects.forward(model, params, images)
  return float(jnp.mean(jnp.linalg.norm(out["stem"], axis=-1)))


def method_model(model: FlexiViT, method: str, token_norm: float) -> FlexiViT:
  if method not in METHODS:
    raise UserError(f"unknown resize method {method!r}; allowed: {', '.join(METHODS)}")
  return model.clone(resize_method=method, token_norm=token_norm if method == "norm" else None)


def resize_methods(model: FlexiViT, params: Mapping, image_size: int, *, data_cfg: Mapping,
                   pp_template: str, factors: Sequence[float] = FACTORS,
                   methods: Sequence[str] = METHODS, batch_size: int = 100,
                   progress=None) -> dict[str, dict[str, float]]:
  """{method: {factor: top1}} with image and patch scaled together by each factor.

  `progress` (a metrics.Progress over the factors, optional) gets a line per factor.
  """
  patch = model.hparams()["patch_size"][0]
  grid = image_size // patch
  sizes = {f: int(round(image_size * f)) for f in factors}
  bad = [f for f, s in sizes.items() if abs(s - image_size * f) > 1e-9 or s % grid]
  if bad:
    raise UserError(f"factors {bad} do not give an integer image side and patch for "
                     f"{image_size} px images on a {grid}x{grid} grid")
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
  p.add_argument("--factors", default=",".join(map(str, FACTORS)))
  common.add_subject_args(p, default_steps=1000)
  return p


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  cli.quiet_libraries()
  factors = common.float_list(args.factors, "--factors")
  if args.checkpoint:
    model, params = subjects.load_subject(args.checkpoint, args.model)
    image_size = args.image_size or IMAGE_SIZE
  else:
    image_size = args.image_size or (16 if args.runlocal else IMAGE_SIZE)
    patch = subjects.subject_config(image_size=image_size, train_seqhws=[1], posemb=1,
                                    steps=None, runlocal=args.runlocal).model.patch_size[0]
    grid = image_size // patch
    model, params = subjects.train_subject(
        os.path.join(args.out, "subject"), image_size=image_size, train_seqhws=[grid],
        posemb=grid, steps=None if args.runlocal else args.steps, runlocal=args.runlocal,
        progress=args.progress)
  results = resize_methods(model, params, image_size, data_cfg=common.data_cfg(args.data),
                           pp_template=args.pp, factors=factors, batch_size=args.batch_size,
                           progress=common.progress(args, len(factors), "factor"))
  print(table(results, image_size, model.hparams()["patch_size"][0]))
  print(f"wrote {common.write_results(args.out, results)}")
  print(f"wrote {plot(results, os.path.join(args.out, 'resize_methods.png'))}")


if __name__ == "__main__":
  main()

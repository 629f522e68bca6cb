"""bfloat16 vs float32 logits of the reference checkpoint at every seqhw (dtype_mm).

Loads the bundled big_vision reference checkpoint (tests/testdata/bv_gap_ckpt.npz,
a 2-block width-48 GAP FlexiViT) and runs it with dtype_mm="float32" and
"bfloat16" on the reference's 2 images plus `--random` images drawn uniformly
from [-1, 1] (seed `--seed`), at each seqhw 5..30 (240 px). Prints, per seqhw,
the max |logit difference|, the max |float32 logit| (scale) and the top-1
agreement between the two precisions.

  python benchmarks/precision.py [--random 62] [--seed 0]
"""
from __future__ import annotations

import argparse
import functools
import pathlib

import jax
import numpy as np

from flexivit_jax import load_params
from flexivit_jax.models.vit import FlexiViT

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "testdata"
REF_MODEL = dict(num_classes=10, width=48, depth=2, num_heads=3, mlp_dim=96,
                 patch_size=(32, 32), posemb_size=(7, 7), pool_type="gap")
SEQHWS = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)


def compare(params, images, seqhw):
  """(max |Δ|, max |float32 logit|, top-1 agreement) of bf16 vs float32 at `seqhw`."""
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = FlexiViT(**REF_MODEL, dtype_mm=dtype)
    fn = jax.jit(functools.partial(model.apply, seqhw=seqhw))
    out[dtype] = np.asarray(fn({"params": params}, images)[0])
  f32, bf16 = out["float32"], out["bfloat16"]
  agree = float(np.mean(np.argmax(f32, -1) == np.argmax(bf16, -1)))
  return float(np.abs(f32 - bf16).max()), float(np.abs(f32).max()), agree


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--random", type=int, default=62)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  params = load_params(str(DATA / "bv_gap_ckpt.npz"))
  with np.load(DATA / "bv_gap.npz") as f:
    ref_images = f["images"]
  rng = np.random.default_rng(args.seed)
  extra = rng.uniform(-1, 1, (args.random, *ref_images.shape[1:])).astype(np.float32)
  images = np.concatenate([ref_images, extra])
  print(f"{len(images)} images (2 reference + {args.random} uniform, seed {args.seed})")
  print("| seqhw | patch | max abs diff | max abs f32 logit | top-1 agreement |")
  print("|---|---|---|---|---|")
  for seqhw in SEQHWS:
    diff, scale, agree = compare(params, images, seqhw)
    print(f"| {seqhw} | {240 // seqhw} | {diff:.4f} | {scale:.3f} | {agree:.1%} |", flush=True)


if __name__ == "__main__":
  main()

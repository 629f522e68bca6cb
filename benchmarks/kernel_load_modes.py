"""Logit differences between model_load.kernel='keep' and 'pi_resize'.

Loads tests/testdata/bv_gap_ckpt.npz (32x32 kernel) into a 16x16 model both ways
and prints, per seqhw at 240 px, the max |logit - reference logit| of each
mode (reference: tests/testdata/bv_gap.npz, big_vision resizing 32 -> P once).

  PYTHONPATH=. python benchmarks/kernel_load_modes.py
"""
import pathlib

import jax
import numpy as np

from flexivit_jax.checkpoints import adapt, sources
from flexivit_jax.models.vit import FlexiViT

DATA = pathlib.Path(__file__).parent.parent / "tests" / "testdata"
MODEL = dict(num_classes=10, width=48, depth=2, num_heads=3, mlp_dim=96, patch_size=(16, 16),
             posemb_size=(7, 7), pool_type="gap")


def main():
  ref = dict(np.load(DATA / "bv_gap.npz"))
  stored = sources.load_params(DATA / "bv_gap_ckpt.npz")
  init = jax.tree.map(np.zeros_like, stored)
  init["embedding"]["kernel"] = np.zeros((16, 16, 3, 48), np.float32)
  apply = jax.jit(FlexiViT(**MODEL).apply, static_argnames="seqhw")
  modes = {m: adapt.load_pretrained(init, stored, kernel=m, log=lambda _: None)[0]
           for m in ("keep", "pi_resize")}
  print("| seqhw | patch | keep: max diff | pi_resize: max diff |")
  print("|---|---|---|---|")
  for s in (5, 6, 8, 10, 12, 15, 16, 20, 24, 30):
    want = ref[f"logits:seqhw={s}"]
    diffs = [np.abs(np.asarray(apply({"params": p}, ref["images"], seqhw=s)[0]) - want).max()
             for p in modes.values()]
    print(f"| {s} | {240 // s} | {diffs[0]:.2g} | {diffs[1]:.3g} |")


if __name__ == "__main__":
  main()

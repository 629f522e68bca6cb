"""Writes the tiny checkpoints that the recipes' `runlocal` forms start from.

  PYTHONPATH=. python configs/testdata/make_tiny_checkpoints.py

`tiny_vit.npz`: a randomly initialised (seed 0) ViT in big_vision's npz layout,
width 16, depth 1, 2 heads, MLP 32, pool `tok`, 8x8 kernel, 3x3 posemb (its
native grid at 24 px), 10 classes with a non-zero head, so that as a teacher it
gives non-trivial logits. It stands in for the DeiT-III / AugReg / FlexiViT
checkpoints of the full recipes (teacher, student init, transfer source); the
recipes' loaders resample its posemb and drop its head as they do for the real
ones. A few KB; regenerate after a change of the parameter layout.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.checkpoints import npz
from flexivit_jax.models.vit import FlexiViT

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_VIT = dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32, pool_type="tok",
                patch_size=(8, 8), posemb_size=(3, 3), head_zeroinit=False)


def tiny_vit_params(seed: int = 0) -> dict:
  model = FlexiViT(**TINY_VIT)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 24, 24, 3)))["params"]
  return jax.tree.map(np.asarray, params)


def main() -> None:
  path = os.path.join(HERE, "tiny_vit.npz")
  npz.save_params(path, tiny_vit_params())
  print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
  main()

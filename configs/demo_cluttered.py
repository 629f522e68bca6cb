"""README demo: a small FlexiViT on the bundled `cluttered_digits`, at 64 px.

A digit of 12-20 px placed among clutter on a 64 px canvas: coarse patches blur
it into its surroundings, so accuracy rises with compute as the patch shrinks.
Trains with a random patch size per step (seqhw 4..8 = patches 16, 12, 10, 9,
8 px) and evaluates on the test split at every size; prints a table (accuracy
and forward GFLOPs per image at each size) and writes a plot of accuracy against
GFLOPs. `:baseline` trains a plain ViT at one patch size (8 px) on the same
schedule, evaluated at the same sizes.

  python -m flexivit_jax.train --config configs/demo_cluttered.py --workdir workdirs/demo
  python -m flexivit_jax.train --config configs/demo_cluttered.py:baseline --workdir workdirs/base
  python -m flexivit_jax.compare workdirs/demo workdirs/base --out compare

Arguments (comma separated): baseline; runlocal (a tiny model on
`cluttered_digits/small` at 16 px for a few steps: smoke tests); steps=N.
The 8x8-digits demo is configs/demo_digits.py.
"""
from flexivit_jax.training.demos import cluttered_config as get_config  # noqa: F401

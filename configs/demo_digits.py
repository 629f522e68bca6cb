"""Embedded demo: a small FlexiViT on the bundled sklearn digits, at 48 px.

Trains with a random patch size per step (seqhw 3..12 = patches 16..4 px) and
evaluates on the test split at every size; prints a table and writes a plot.
`:baseline` trains a plain ViT at one patch size (8 px) on the same schedule,
evaluated at the same sizes, to show what FlexiViT buys.

  python -m flexivit_jax.train --config configs/demo_digits.py --workdir workdirs/demo
  python -m flexivit_jax.train --config configs/demo_digits.py:baseline --workdir workdirs/base
  python -m flexivit_jax.compare workdirs/demo workdirs/base --out compare.png

Arguments (comma separated): baseline; runlocal (a tiny model on 16 px images
for a few steps: smoke tests); steps=N; classes=A-B (train and evaluate on the
digits A..B only, labels renumbered from 0: the pretraining half of the
transfer demo, see configs/demo_transfer.py).
"""
from flexivit_jax.training.demos import digits_config as get_config, parse_classes  # noqa: F401

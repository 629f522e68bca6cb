r"""Faster pre-training with a patch-size curriculum on ImageNet-21k (paper, SPEC 7).

FlexiViT-B trained as `i21k_sup` (supervised, sigmoid xent, same optimizer and
data), except that the patch-size distribution changes over training: coarse
patches early (cheap steps), finer later, ending at the target patch 16 px
(seqhw 15 at 240 px). `:baseline` is a plain ViT-B/16 (kernel stored at 16x16,
posemb 15x15, seqhw 15 at every step) trained for `epochs`; the curriculum run
gets the epochs that cost the same training compute (estimated from token
counts by flexivit_jax.training.curriculum; the logged `compute/gflops` is exact).
Both evaluate on the i21k val slice at seqhw 15. The paper does not publish its
stages; these are ours.

  python -m flexivit_jax.train --config configs/i21k_curriculum.py --workdir gs://B/curr
  python -m flexivit_jax.train --config configs/i21k_curriculum.py:baseline --workdir gs://B/b16
  python -m flexivit_jax.compare gs://B/curr gs://B/b16 --x flops --out curriculum.png

Arguments: baseline; epochs=N (the baseline's epochs, default 90); runlocal.
"""
import os

from flexivit_jax.training.config import load_config_file, parse_arg
from flexivit_jax.training.curriculum import equal_compute_steps

B = dict(width=768, depth=12, mlp_dim=3072)
TARGET = 15  # seqhw at 240 px = patch 16.
STAGES = (dict(until=0.25, v=(5, 6, 8)), dict(until=0.5, v=(8, 10)),
          dict(until=0.75, v=(10, 12, 15)), dict(until=1.0, v=(TARGET,)))
SUP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "i21k_sup.py")


def get_config(arg=None):
  arg = parse_arg(arg, baseline=False, epochs=90, runlocal=False)
  c = load_config_file(SUP + (":runlocal" if arg.runlocal else f":epochs={arg.epochs}"))
  if arg.runlocal:
    stages, target = (dict(until=0.5, v=(1, 2)), dict(until=1.0, v=(4,))), 4
  else:
    stages, target = STAGES, TARGET
    # One evaluator at the target size: the curve of accuracy against compute.
    c.evals = dict(val=dict(c.evals["val"], log_steps=2000))
  c.eval_flexi = dict(seqhw=dict(v=(target,)))
  if arg.baseline:
    c.flexi = dict(seqhw=dict(v=(target,)))
    if not arg.runlocal:
      c.model = dict(c.model, patch_size=(16, 16), posemb_size=(TARGET, TARGET))
  else:
    c.flexi = dict(seqhw=[dict(s, p="uniform") for s in stages])
    if not arg.runlocal:
      c.total_epochs = equal_compute_steps(stages, target, arg.epochs, **B)
  if not arg.runlocal:  # At most seqhw 15: 4 microbatches of 32 fit a v3 core (`train --plan`).
    c.grad_accum_steps = 4
  return c

"""Patch-size curriculum on the bundled digits (48 px): coarse early, fine late.

The paper's faster-pretraining claim (SPEC 7) in miniature: a FlexiViT trained
with a curriculum that ends at the target patch (6 px, seqhw 8) against
`:baseline`, a plain ViT trained only at the target patch for the same training
compute. Both evaluate at the target seqhw every `eval_every` steps and log
`compute/gflops`, so accuracy can be plotted against compute:

  python -m flexivit_jax.train --config configs/demo_curriculum.py --workdir workdirs/curr
  python -m flexivit_jax.train --config configs/demo_curriculum.py:baseline --workdir workdirs/curr_base
  python -m flexivit_jax.compare workdirs/curr workdirs/curr_base --x flops --out curr.png

Arguments: baseline; runlocal (tiny model, 16 px, a few steps); steps=N (the
baseline's steps; the curriculum takes as many steps as fit in the same compute,
estimated from the token counts and checked against the logged compute/gflops).
"""
from flexivit_jax.training.config import default_config, parse_arg
from flexivit_jax.training.curriculum import equal_compute_steps

# Coarse patches (16/12 px) first, then 12/8, then 8/6, ending at the target 6 px.
STAGES = (dict(until=0.25, v=(3, 4)), dict(until=0.5, v=(4, 6)), dict(until=0.75, v=(6, 8)),
          dict(until=1.0, v=(8,)))
TARGET = 8


def get_config(arg=None):
  arg = parse_arg(arg, baseline=False, runlocal=False, steps=500, eval_every=50)
  c = default_config()
  c.seed = 0
  if arg.runlocal:
    image, width, depth, mlp, base_steps = 16, 16, 1, 32, 2
    stages, target = (dict(until=0.5, v=(1, 2)), dict(until=1.0, v=(4,))), 4
    c.model = dict(num_classes=10, width=width, depth=depth, num_heads=2, mlp_dim=mlp,
                   patch_size=(8, 8), posemb_size=(2, 2), pool_type="tok")
  else:
    image, width, depth, mlp, base_steps = 48, 64, 4, 128, arg.steps
    stages, target = STAGES, TARGET
    c.model = dict(num_classes=10, width=width, depth=depth, num_heads=4, mlp_dim=mlp,
                   patch_size=(8, 8), posemb_size=(6, 6), pool_type="tok")
  if arg.baseline:
    c.total_steps = base_steps
    c.flexi = dict(seqhw=dict(v=(target,)))
  else:
    c.total_steps = 2 if arg.runlocal else equal_compute_steps(
        stages, target, base_steps, width=width, depth=depth, mlp_dim=mlp)
    c.flexi = dict(seqhw=[dict(s, p="uniform") for s in stages])
  c.eval_flexi = dict(seqhw=dict(v=(target,)))

  pp = (f'decode|resize({image})|value_range(-1, 1)|'
        'onehot(10, key="label", key_result="labels")|keep("image", "labels")')
  c.input = dict(data=dict(name="sklearn_digits", split="train"),
                 batch_size=16 if arg.runlocal else 64, pp=pp)
  c.loss = "softmax_xent"
  c.lr = 2e-3
  c.wd = 1e-4
  c.schedule = dict(decay_type="cosine", warmup_steps=c.total_steps // 10)
  c.grad_clip_norm = 1.0
  c.evals = dict(test=dict(data=dict(name="sklearn_digits", split="test"), pp=pp,
                           batch_size=64 if arg.runlocal else 100))
  c.log_training_steps = 1 if arg.runlocal else 25
  c.log_eval_steps = 1 if arg.runlocal else arg.eval_every
  c.ckpt_steps = 1000
  return c

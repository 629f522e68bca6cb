"""Fine-tune coarse, deploy fine, on real digits with classes unseen in pretraining.

Stage 1 pretrains on digits 0-4 (configs/demo_digits.py:classes=0-4); this config
fine-tunes that model on digits 5-9 (labels renumbered 0-4) at ONE grid (`seqhw`,
default 4 = 12 px patches at 48 px) with a new head, and evaluates the result at
grids 3, 4, 6, 8, 12. `:baseline` starts from the plain ViT of
`demo_digits.py:classes=0-4,baseline` instead. Optimizer as big_vision's ViT
transfer (SGD momentum 0.9 in bf16, no weight decay, clip 1.0, warmup + cosine).

  python -m flexivit_jax.train --config configs/demo_digits.py:classes=0-4 --workdir workdirs/digits04
  python -m flexivit_jax.train --config configs/demo_digits.py:classes=0-4,baseline --workdir workdirs/digits04_base
  python -m flexivit_jax.train --config configs/demo_transfer.py:init=workdirs/digits04 --workdir workdirs/tr
  python -m flexivit_jax.train --config configs/demo_transfer.py:baseline --workdir workdirs/tr_base
  python -m flexivit_jax.compare workdirs/tr workdirs/tr_base --out transfer.png

Arguments: init=WORKDIR|NPZ (default workdirs/digits04, or workdirs/digits04_base
with baseline); seqhw=N (the fine-tuning grid); steps=N; lr=X; runlocal (tiny
model at 16 px from configs/testdata/tiny_vit.npz unless init is given).
"""
import os

from flexivit_jax.training.config import default_config, parse_arg

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")


def get_config(arg=None):
  arg = parse_arg(arg, init="", seqhw=0, baseline=False, runlocal=False, steps=500, lr=0.03)
  c = default_config()
  c.seed = 0
  if arg.runlocal:
    image, grids, default_seqhw = 16, (1, 2, 4), 2
    c.model = dict(num_classes=5, width=16, depth=1, num_heads=2, mlp_dim=32,
                   patch_size=(8, 8), posemb_size=(2, 2), pool_type="tok")
    init = os.path.join(TESTDATA, "tiny_vit.npz")
  else:
    image, grids, default_seqhw = 48, (3, 4, 6, 8, 12), 4
    c.model = dict(num_classes=5, width=64, depth=4, num_heads=4, mlp_dim=128,
                   patch_size=(8, 8), posemb_size=(6, 6), pool_type="tok")
    init = "workdirs/digits04_base" if arg.baseline else "workdirs/digits04"
  c.model_init = arg.init or init
  c.model_load = dict(dont_load=("head/.*",))  # A new, zero-initialised 5-class head.
  c.total_steps = 2 if arg.runlocal else arg.steps

  pp = (f'decode|resize({image})|value_range(-1, 1)|'
        'onehot(5, key="label", key_result="labels")|keep("image", "labels")')
  digits59 = dict(name="sklearn_digits", classes=(5, 6, 7, 8, 9))
  c.input = dict(data=dict(digits59, split="train"), batch_size=16 if arg.runlocal else 64,
                 pp=pp)
  c.flexi = dict(seqhw=dict(v=(arg.seqhw or default_seqhw,)))
  c.eval_flexi = dict(seqhw=dict(v=grids))
  c.loss = "softmax_xent"

  c.optax_name = "big_vision.momentum_hp"  # SGD momentum 0.9, accumulator in bf16.
  c.optax = dict()
  c.lr = arg.lr
  c.wd = 0.0
  c.grad_clip_norm = 1.0
  c.schedule = dict(decay_type="cosine", warmup_steps=c.total_steps // 10)

  c.evals = dict(test=dict(data=dict(digits59, split="test"), pp=pp,
                           batch_size=64 if arg.runlocal else 100))
  c.log_training_steps = 1 if arg.runlocal else 50
  c.log_eval_steps = 1 if arg.runlocal else 250
  c.ckpt_steps = 1000
  return c

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
from flexivit_jax.config import default_config, parse_arg


def parse_classes(spec: str) -> tuple:
  """'0-4' -> (0, 1, 2, 3, 4); '' -> all ten digits."""
  if not spec:
    return tuple(range(10))
  first, _, last = spec.partition("-")
  return tuple(range(int(first), int(last or first) + 1))


def get_config(arg=None):
  arg = parse_arg(arg, baseline=False, runlocal=False, steps=1200, classes="")
  classes = parse_classes(arg.classes)
  c = default_config()  # Every known key, so any can be overridden on the command line.
  c.seed = 0
  n = len(classes)
  if arg.runlocal:
    image, seqhws, baseline_seqhw = 16, (2, 4), 2
    c.model = dict(num_classes=n, width=16, depth=1, num_heads=2, mlp_dim=32,
                   patch_size=(8, 8), posemb_size=(2, 2), pool_type="tok")
  else:
    image, seqhws, baseline_seqhw = 48, (3, 4, 6, 8, 12), 6  # Patches 16, 12, 8, 6, 4 px.
    c.model = dict(num_classes=n, width=64, depth=4, num_heads=4, mlp_dim=128,
                   patch_size=(8, 8), posemb_size=(6, 6), pool_type="tok")
  c.total_steps = 8 if arg.runlocal else arg.steps

  pp = (f'decode|resize({image})|value_range(-1, 1)|'
        f'onehot({n}, key="label", key_result="labels")|keep("image", "labels")')
  subset = {} if arg.classes == "" else dict(classes=classes)
  c.input = dict(data=dict(name="sklearn_digits", split="train", **subset),
                 batch_size=16 if arg.runlocal else 64, pp=pp)

  c.flexi = dict(seqhw=dict(v=(baseline_seqhw,) if arg.baseline else seqhws, p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=seqhws))
  c.loss = "softmax_xent"

  c.lr = 2e-3
  c.wd = 1e-4
  c.schedule = dict(decay_type="cosine", warmup_steps=2 if arg.runlocal else 100)
  c.grad_clip_norm = 1.0

  c.evals = dict(test=dict(data=dict(name="sklearn_digits", split="test", **subset), pp=pp,
                           batch_size=64 if arg.runlocal else 100))
  c.log_training_steps = 2 if arg.runlocal else 50
  c.log_eval_steps = 4 if arg.runlocal else 400
  c.ckpt_steps = 4 if arg.runlocal else 400
  return c

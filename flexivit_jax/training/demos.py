"""The digits demo's config as a function of the package, so installed code can build it.

`configs/demo_digits.py` (the file users pass to `--config`) is this function;
the analyses (`flexivit_jax.analysis.subjects`) train their subjects from it
without a source checkout. See that file for the commands and arguments:
baseline; runlocal; steps=N; classes=A-B.
"""
import ml_collections

from flexivit_jax.training.config import default_config, parse_arg


def parse_classes(spec: str) -> tuple:
  """'0-4' -> (0, 1, 2, 3, 4); '' -> all ten digits."""
  if not spec:
    return tuple(range(10))
  first, _, last = spec.partition("-")
  return tuple(range(int(first), int(last or first) + 1))


def digits_config(arg=None) -> ml_collections.ConfigDict:
  """A small FlexiViT (or `baseline` ViT) on the bundled digits; see configs/demo_digits.py."""
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


def cluttered_config(arg=None) -> ml_collections.ConfigDict:
  """A small FlexiViT (or `baseline` ViT) on the bundled `cluttered_digits`, at 64 px.

  The README's first command (configs/demo_cluttered.py). Unlike the 8x8 digits,
  a small digit among clutter on a 64 px canvas needs fine patches, so the table
  shows accuracy bought with compute: patches 16, 12, 10, 9 and 8 px (seqhw 4..8).
  `:baseline` trains a plain ViT at patch 8 on the same schedule. Arguments:
  baseline; runlocal (a tiny model on `cluttered_digits/small` at 16 px, a few
  steps: smoke tests); steps=N.
  """
  arg = parse_arg(arg, baseline=False, runlocal=False, steps=2400)
  c = default_config()  # Every known key, so any can be overridden on the command line.
  c.seed = 0
  if arg.runlocal:
    image, seqhws, baseline_seqhw, name = 16, (2, 4), 4, "cluttered_digits/small"
    c.model = dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32,
                   patch_size=(4, 4), posemb_size=(4, 4), pool_type="tok")
  else:
    image, seqhws, baseline_seqhw, name = 64, (4, 5, 6, 7, 8), 8, "cluttered_digits"
    c.model = dict(num_classes=10, width=64, depth=4, num_heads=4, mlp_dim=128,
                   patch_size=(8, 8), posemb_size=(8, 8), pool_type="tok")
  c.total_steps = 8 if arg.runlocal else arg.steps

  pp = (f'decode|resize({image})|value_range(-1, 1)|'
        'onehot(10, key="label", key_result="labels")|keep("image", "labels")')
  c.input = dict(data=dict(name=name, split="train"),
                 batch_size=16 if arg.runlocal else 64, pp=pp)
  c.flexi = dict(seqhw=dict(v=(baseline_seqhw,) if arg.baseline else seqhws, p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=seqhws))
  c.loss = "softmax_xent"

  c.lr = 2e-3
  c.wd = 1e-4
  c.schedule = dict(decay_type="cosine", warmup_steps=2 if arg.runlocal else 100)
  c.grad_clip_norm = 1.0

  c.evals = dict(test=dict(data=dict(name=name, split="test"), pp=pp,
                           batch_size=50 if arg.runlocal else 100))
  c.log_training_steps = 2 if arg.runlocal else 100
  c.log_eval_steps = 4 if arg.runlocal else 800
  c.ckpt_steps = 4 if arg.runlocal else 800
  return c

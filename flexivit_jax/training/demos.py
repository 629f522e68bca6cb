"""The demos' configs as functions of the package, so installed code can build them.

`configs/demo_digits.py` (the file users pass to `--config`) is `digits_config`;
the analyses (`flexivit_jax.analysis.subjects`) train their subjects from it
without a source checkout. See that file for the commands and arguments:
baseline; runlocal; steps=N; classes=A-B. `configs/demo_cluttered.py` is
`cluttered_config`. Both are `_demo_config` with their data, sizes and cadence.
"""
import ml_collections

from flexivit_jax.training.config import default_config, parse_arg


def parse_classes(spec: str) -> tuple:
  """'0-4' -> (0, 1, 2, 3, 4); '' -> all ten digits."""
  if not spec:
    return tuple(range(10))
  first, _, last = spec.partition("-")
  return tuple(range(int(first), int(last or first) + 1))


def _demo_config(arg, *, num_classes: int, image: int, seqhws: tuple, baseline_seqhw: int,
                 patch_size: tuple, posemb_size: tuple, train_data: dict, test_data: dict,
                 eval_batch_size: int, log_training_steps: int, eval_steps: int
                 ) -> ml_collections.ConfigDict:
  """What every demo shares: a small FlexiViT (a tiny one under `runlocal`; a ViT at
  `baseline_seqhw` under `baseline`) drawing `seqhws` uniformly, trained with softmax
  cross-entropy and AdamW on a cosine schedule, evaluated on `test_data` at every seqhw.

  `eval_batch_size`, `log_training_steps` and `eval_steps` (evals and checkpoints) are
  the full run's; `runlocal` runs 8 steps, logging every 2, evaluating and saving every 4.
  """
  c = default_config()  # Every known key, so any can be overridden on the command line.
  c.seed = 0
  sizes = (dict(width=16, depth=1, num_heads=2, mlp_dim=32) if arg.runlocal
           else dict(width=64, depth=4, num_heads=4, mlp_dim=128))
  c.model = dict(num_classes=num_classes, **sizes, patch_size=patch_size,
                 posemb_size=posemb_size, pool_type="tok")
  c.total_steps = 8 if arg.runlocal else arg.steps

  pp = (f'decode|resize({image})|value_range(-1, 1)|'
        f'onehot({num_classes}, key="label", key_result="labels")|keep("image", "labels")')
  c.input = dict(data=train_data, batch_size=16 if arg.runlocal else 64, pp=pp)
  c.flexi = dict(seqhw=dict(v=(baseline_seqhw,) if arg.baseline else seqhws, p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=seqhws))
  c.loss = "softmax_xent"

  c.lr = 2e-3
  c.wd = 1e-4
  c.schedule = dict(decay_type="cosine", warmup_steps=2 if arg.runlocal else 100)
  c.grad_clip_norm = 1.0

  c.evals = dict(test=dict(data=test_data, pp=pp, batch_size=eval_batch_size))
  c.log_training_steps = 2 if arg.runlocal else log_training_steps
  c.log_eval_steps = 4 if arg.runlocal else eval_steps
  c.ckpt_steps = 4 if arg.runlocal else eval_steps
  return c


def digits_config(arg=None) -> ml_collections.ConfigDict:
  """A small FlexiViT (or `baseline` ViT) on the bundled digits; see configs/demo_digits.py."""
  arg = parse_arg(arg, baseline=False, runlocal=False, steps=1200, classes="")
  classes = parse_classes(arg.classes)
  subset = {} if arg.classes == "" else dict(classes=classes)
  if arg.runlocal:
    image, seqhws, baseline_seqhw, posemb = 16, (2, 4), 2, (2, 2)
  else:  # Patches 16, 12, 8, 6, 4 px.
    image, seqhws, baseline_seqhw, posemb = 48, (3, 4, 6, 8, 12), 6, (6, 6)
  return _demo_config(
      arg, num_classes=len(classes), image=image, seqhws=seqhws, baseline_seqhw=baseline_seqhw,
      patch_size=(8, 8), posemb_size=posemb,
      train_data=dict(name="sklearn_digits", split="train", **subset),
      test_data=dict(name="sklearn_digits", split="test", **subset),
      eval_batch_size=64 if arg.runlocal else 100, log_training_steps=50, eval_steps=400)


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
  if arg.runlocal:
    image, seqhws, baseline_seqhw, name = 16, (2, 4), 4, "cluttered_digits/small"
    patch_and_posemb = (4, 4)
  else:
    image, seqhws, baseline_seqhw, name = 64, (4, 5, 6, 7, 8), 8, "cluttered_digits"
    patch_and_posemb = (8, 8)
  return _demo_config(
      arg, num_classes=10, image=image, seqhws=seqhws, baseline_seqhw=baseline_seqhw,
      patch_size=patch_and_posemb, posemb_size=patch_and_posemb,
      train_data=dict(name=name, split="train"), test_data=dict(name=name, split="test"),
      eval_batch_size=50 if arg.runlocal else 100, log_training_steps=100, eval_steps=800)

"""Semantic segmentation of `cluttered_digits` (bundled, offline) at any patch size.

A Segmenter (FlexiViT backbone + linear decoder, `task="segmentation"`) labels every
pixel of the 64 px canvases: 0 background (texture and distractor fragments), 1 +
the digit's class on the target digit's ink; 11 classes. The backbone is the digits
demo's (width 64, depth 4, 4 heads, kernel 8x8, posemb 8x8); each step draws its grid
from seqhw 4, 8, 16 (patches 16, 8, 4 px) and the test split is scored (mIoU, pixel
accuracy) at every grid.

  python -m flexivit_jax.train --config configs/seg_cluttered.py --workdir workdirs/seg
  python -m flexivit_jax.evaluate --checkpoint workdirs/seg --out eval_seg

Arguments: init=WORKDIR|NPZ (a FlexiViT checkpoint for the backbone, its head
dropped; default: none, trained from scratch); seqhw=N (train at this one grid:
fine-tune coarse, deploy fine); steps=N; lr=X; runlocal (a tiny model on the small
build of the dataset at 32 px, 2 grids).
"""
from flexivit_jax.training.config import default_config, parse_arg

NUM_CLASSES = 11  # Background + 10 digits (cluttered_digits' mask values).


def get_config(arg=None):
  arg = parse_arg(arg, init="", seqhw=0, steps=1000, lr=1e-3, runlocal=False)
  c = default_config()
  c.seed = 0
  c.task = "segmentation"
  c.ignore_label = 255  # cluttered_digits labels every pixel; padding would use 255.
  if arg.runlocal:
    resize, grids, name = "dense_resize(32)|", (2, 4), "cluttered_digits/small"
    c.model = dict(num_classes=NUM_CLASSES, width=16, depth=1, num_heads=2, mlp_dim=32,
                   patch_size=(8, 8), posemb_size=(4, 4), pool_type="tok")
  else:
    resize, grids, name = "", (4, 8, 16), "cluttered_digits"
    c.model = dict(num_classes=NUM_CLASSES, width=64, depth=4, num_heads=4, mlp_dim=128,
                   patch_size=(8, 8), posemb_size=(8, 8), pool_type="tok")
  c.model_init = arg.init or None
  c.total_steps = 2 if arg.runlocal else arg.steps

  pp = f'decode|{resize}value_range(-1, 1)|seg_labels()|keep("image", "labels")'
  c.input = dict(data=dict(name=name, split="train"), batch_size=8 if arg.runlocal else 32,
                 pp=pp)
  c.flexi = dict(seqhw=dict(v=(arg.seqhw,) if arg.seqhw else grids, p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=grids))

  c.optax_name = "scale_by_adam"
  c.lr = arg.lr
  c.wd = 1e-4
  c.schedule = dict(decay_type="cosine", warmup_steps=1 if arg.runlocal else 50)
  c.grad_clip_norm = 1.0

  c.evals = dict(test=dict(type="segmentation", data=dict(name=name, split="test"), pp=pp,
                           batch_size=16 if arg.runlocal else 100))
  c.log_training_steps = 1 if arg.runlocal else 50
  c.log_eval_steps = 2 if arg.runlocal else 500
  c.ckpt_steps = 2 if arg.runlocal else 500
  return c

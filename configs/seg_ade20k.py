r"""Semantic segmentation on ADE20k (tfds `scene_parse150`) with a FlexiViT-B backbone.

The paper's dense-prediction transfer: a Segmenter linear decoder (Strudel et al.,
2021) on FlexiViT-B i1k, 150 classes, 512 px crops. Settings of Segmenter's ADE20k
recipe: random resize of the short side to 512 x [0.5, 2.0], random 512x512 crop,
horizontal flip, padding to 512 with the ignore label; SGD momentum 0.9, lr 1e-3,
no weight decay, batch 8, 160k steps, linear decay (Segmenter's poly schedule has
power 0.9; linear is power 1). Each step draws its grid from `SEQHW` (patches 32..12
px at 512 px), or trains at one grid with `seqhw=N`; the validation split is scored
at every grid. Differences to Segmenter: no photometric distortion, no drop path, and
evaluation on the central 512x512 crop after resizing the short side to 512 (not a
sliding window over the whole image), so numbers are close to, not equal to, its.

tfds `scene_parse150` stores the challenge's annotation PNGs; their first channel
is the class id (0: unlabelled, 1..150), mapped by `seg_labels(offset=1)` to
0..149 with 0 -> the ignore label 255. Its `test` split is ADE20k's 2,000
validation images. The trainer refuses a first batch with labels outside 0..149.

  python -m flexivit_jax.train --config configs/seg_ade20k.py --workdir gs://BUCKET/flexivit/seg_ade20k
  python -m flexivit_jax.train --config configs/seg_ade20k.py:seqhw=16 --workdir gs://BUCKET/flexivit/seg_ade20k_s16

Arguments: seqhw=N (train at one grid only); init=NAME|NPZ|WORKDIR (the backbone:
a FlexiViT checkpoint, its head dropped; default 'FlexiViT-B i1k'); variant=B;
steps=N; lr=X; batch=N; crop=N; runlocal (the bundled `cluttered_digits/small`
at 32 px, a tiny model, 2 steps, offline).
"""
from flexivit_jax.training.config import default_config, parse_arg

NUM_CLASSES = 150
SEQHW = (16, 20, 24, 32, 40)  # At 512 px: patches 32, 25, 21, 16, 12 px.
ANNOTATION = "annotation"


def get_config(arg=None):
  arg = parse_arg(arg, seqhw=0, init="FlexiViT-B i1k", variant="B", steps=160_000, lr=1e-3,
                  batch=8, crop=512, runlocal=False)
  c = default_config()
  c.seed = 0
  c.task = "segmentation"
  c.ignore_label = 255
  c.optax_name = "big_vision.momentum_hp"  # SGD momentum 0.9 (state in bf16).
  c.optax = dict()
  c.lr = arg.lr
  c.wd = 0.0
  c.grad_clip_norm = 1.0
  c.schedule = dict(decay_type="linear", warmup_steps=0)
  if arg.runlocal:
    return _runlocal(c)

  crop, mask = arg.crop, f'mask_key="{ANNOTATION}"'
  labels = f'|value_range(-1, 1)|seg_labels(offset=1, key="{ANNOTATION}")|keep("image", "labels")'
  c.input.data = dict(name="scene_parse150", split="train")
  c.input.batch_size = arg.batch
  # One 512 px crop per TPU v3 core: written for a v3-8 (`train --plan`, docs/scaling.md).
  c.topology = "v3-8"
  c.input.pp = (f"decode|dense_resize_small({crop}, 0.5, 2.0, {mask})|"
                f"dense_random_crop({crop}, {mask})|dense_flip_lr({mask})|"
                f"dense_pad({crop}, mask_value=255, {mask})" + labels)
  pp_eval = f"decode|dense_resize_small({crop}, {mask})|dense_central_crop({crop}, {mask})" + labels
  # FlexiViT-B's released layout: 32x32 kernel, 7x7 posemb, token pooling (head dropped).
  c.model = dict(variant=arg.variant, pool_type="tok", patch_size=(32, 32), posemb_size=(7, 7),
                 num_classes=NUM_CLASSES)
  c.model.dtype_mm = "bfloat16"  # bf16 matmuls/activations on TPU/GPU; params stay f32.
  c.model_init = arg.init
  c.total_steps = arg.steps
  c.flexi = dict(seqhw=dict(v=(arg.seqhw,) if arg.seqhw else SEQHW, p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=SEQHW))
  c.evals = dict(val=dict(type="segmentation", data=dict(name="scene_parse150", split="test"),
                          pp=pp_eval, batch_size=16, log_percent=0.25))
  c.log_training_steps = 100
  c.ckpt_steps = 2000
  return c


def _runlocal(c):
  """The same pipeline ops at toy scale, offline: cluttered_digits' masks, 32 px crops."""
  name = "cluttered_digits/small"
  labels = '|value_range(-1, 1)|seg_labels()|keep("image", "labels")'
  c.input.data = dict(name=name, split="train")
  c.input.batch_size = 8
  c.input.pp = ("decode|dense_resize_small(32, 0.5, 2.0)|dense_random_crop(32)|dense_flip_lr|"
                "dense_pad(32, mask_value=255)" + labels)
  pp_eval = "decode|dense_resize_small(32)|dense_central_crop(32)" + labels
  c.model = dict(width=16, depth=1, num_heads=2, mlp_dim=32, pool_type="tok", patch_size=(8, 8),
                 posemb_size=(4, 4), num_classes=11)
  c.total_steps = 2
  c.flexi = dict(seqhw=dict(v=(2, 4), p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=(2, 4)))
  c.evals = dict(val=dict(type="segmentation", data=dict(name=name, split="test"), pp=pp_eval,
                          batch_size=16))
  c.log_training_steps = 1
  c.log_eval_steps = 2
  c.ckpt_steps = 2
  return c

r"""Fine-tune a FlexiViT at ONE patch size on a tfds dataset; evaluate at every size.

The paper's fast transfer (SPEC 7): fine-tune cheaply at a coarse grid (e.g.
seqhw 8 = 30 px patches at 240 px), then deploy at finer grids for more
accuracy (FlexiViT-B on ImageNet-1k fine-tuned at 8x8 only: 81.8% at 8x8,
85.3% at 24x24). Settings of big_vision's ViT transfer config: a new
zero-initialised head, SGD momentum 0.9 with the momentum in bf16
(`big_vision.momentum_hp`), lr 0.01, no weight decay, clip 1.0, batch 512,
warmup then cosine; steps and minival per dataset as in the reference.

  python -m flexivit_jax.train --config configs/transfer.py:dataset=cifar10,seqhw=8 \
      --workdir gs://BUCKET/flexivit/transfer_cifar10_seq8
  python -m flexivit_jax.train --config "configs/transfer.py:dataset=oxford_iiit_pet,seqhw=8,init=ViT-B/30 i21k" \
      --workdir workdirs/pets_vit_b30

Arguments: dataset=NAME (tfds; presets below, others need classes=N and use
the cifar settings); seqhw=N (fine-tuning grid, default 8); init=NAME|NPZ|WORKDIR
(a released shortcut such as 'FlexiViT-B i1k' (default), a local npz, or a
training workdir); variant=B; steps=N, lr=X, batch=N (overrides); classes=N;
runlocal (the bundled digits, a tiny model from configs/testdata/tiny_vit.npz,
16 px, 2 steps).
"""
import os

from flexivit_jax.training.config import default_config, parse_arg
from flexivit_jax.errors import UserError

SEQHW = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)
# dataset -> (classes, train split, minival split, eval split, steps, warmup), SPEC 7.
PRESETS = {
    "cifar10": (10, "train[:98%]", "train[98%:]", "test", 10_000, 500),
    "cifar100": (100, "train[:98%]", "train[98%:]", "test", 10_000, 500),
    "oxford_iiit_pet": (37, "train[:90%]", "train[90%:]", "test", 500, 100),
    "oxford_flowers102": (102, "train[:90%]", "train[90%:]", "test", 500, 100),
    "imagenet2012": (1000, "train[:99%]", "train[99%:]", "validation", 20_000, 500),
}
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "tiny_vit.npz")


def get_config(arg=None):
  arg = parse_arg(arg, dataset="cifar10", seqhw=8, init="FlexiViT-B i1k", variant="B",
                  steps=0, lr=0.01, batch=512, classes=0, res=240, runlocal=False)
  c = default_config()
  c.seed = 0
  c.model_load = dict(dont_load=("head/.*",))  # New head, zero-initialised.
  c.loss = "softmax_xent"
  c.optax_name = "big_vision.momentum_hp"  # SGD momentum 0.9, momentum state in bf16.
  c.optax = dict()
  c.lr = arg.lr
  c.wd = 0.0
  c.grad_clip_norm = 1.0
  if arg.runlocal:
    return _runlocal(c, arg)
  if arg.dataset not in PRESETS and not arg.classes:
    raise UserError(f"dataset={arg.dataset!r} has no preset ({', '.join(PRESETS)}): "
                     "pass classes=N (its number of classes)")
  classes, train, minival, test, steps, warmup = PRESETS.get(
      arg.dataset, (arg.classes, "train[:98%]", "train[98%:]", "test", 10_000, 500))
  classes = arg.classes or classes
  res = arg.res
  c.total_steps = arg.steps or steps
  c.schedule = dict(warmup_steps=min(warmup, c.total_steps // 2), decay_type="cosine")
  label = f'|onehot({classes}, key="label", key_result="labels")|keep("image", "labels")'
  c.input.data = dict(name=arg.dataset, split=train)
  c.input.batch_size = arg.batch
  c.topology = "v3-32"  # The pod it is written for (`train --plan`; docs/scaling.md).
  c.input.pp = f"decode|inception_crop({res})|flip_lr|value_range(-1, 1)" + label
  pp_eval = (f"decode|resize_small({res // 7 * 8})|central_crop({res})|value_range(-1, 1)"
             + label)
  # Released FlexiViTs and their ViT-B/16, B/30 baselines: 32x32 kernel, 7x7 posemb.
  c.model = dict(variant=arg.variant, pool_type="tok", patch_size=(32, 32),
                 posemb_size=(7, 7), num_classes=classes)
  c.model.dtype_mm = "bfloat16"  # bf16 matmuls/activations on TPU/GPU; params stay f32.
  c.model_init = arg.init
  c.flexi = dict(seqhw=dict(v=(arg.seqhw,)))
  c.eval_flexi = dict(seqhw=dict(v=SEQHW))
  c.evals = dict(minival=dict(data=dict(name=arg.dataset, split=minival), pp=pp_eval,
                              log_percent=0.1),
                 test=dict(data=dict(name=arg.dataset, split=test), pp=pp_eval,
                           log_percent=0.5))
  c.log_training_steps = 50
  c.ckpt_steps = 1000
  return c


def _runlocal(c, arg):
  """Transfer at toy scale: the tiny checkpoint fine-tuned on the digits at one grid."""
  c.total_steps = 2
  c.schedule = dict(warmup_steps=1, decay_type="cosine")
  label = '|onehot(10, key="label", key_result="labels")|keep("image", "labels")'
  c.input.data = dict(name="sklearn_digits", split="train")
  c.input.batch_size = 8
  c.input.pp = "decode|inception_crop(16)|flip_lr|value_range(-1, 1)" + label
  c.model = dict(width=16, depth=1, num_heads=2, mlp_dim=32, pool_type="tok",
                 patch_size=(8, 8), posemb_size=(2, 2), num_classes=10)
  c.model_init = arg.init if arg.init != "FlexiViT-B i1k" else TINY
  c.flexi = dict(seqhw=dict(v=(2,)))
  c.eval_flexi = dict(seqhw=dict(v=(1, 2, 4)))
  c.evals = dict(test=dict(data=dict(name="sklearn_digits", split="test[:16]"), batch_size=8,
                           pp="decode|resize(16)|value_range(-1, 1)" + label))
  c.log_training_steps = 1
  c.log_eval_steps = 2
  return c

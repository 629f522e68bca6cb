r"""FlexiViT-S/B/L on ImageNet-1k, distilled from DeiT-III (big_vision's `i1k_deit3_distill`).

Student: FlexiViT pool `tok` at 240 px, kernel stored at 16x16, initialised
from the DeiT-III checkpoint of the same size (trained at 384 px on
ImageNet-1k: its posemb is resampled to 7x7 at load); every step draws seqhw
from 5..30 (patches 48..8 px). Teacher: that same DeiT-III at 384 px on its own
pp branch (`prof`), frozen. KL(teacher || student), t=1. Batch 1024, mixup
p=1.0, Adam (bf16 first moment), lr 1e-4, wd 1e-5, 5k warmup then cosine, clip
1.0. Evals at every seqhw on minitrain, minival, val, v2, ReaL, -A, -R.

  python -m flexivit_jax.train --config configs/i1k_deit3_distill.py:variant=S,epochs=90 \
      --workdir gs://BUCKET/flexivit/i1k_s_90ep

Arguments: variant=S|B|L (default B, as the reference), epochs=90|300|600|1200,
init=NPZ (default: big_vision's converted DeiT-III file for the variant, read
from gs://big_vision/zoo/deit3/; pass a local copy when the bucket is not
readable), res=240, runlocal (a tiny student and teacher from
configs/testdata/tiny_vit.npz on the bundled digits at 16/24 px, 2 steps).
Reference keys under other names here: docs/configs.md.
"""
import os

from flexivit_jax.training.config import default_config, parse_arg
from flexivit_jax.errors import UserError

SEQHW = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)  # Patches 48, 40, 30, 24, 20, 16, 15, 12, 10, 8.
DEIT3 = "gs://big_vision/zoo/deit3/bv_deit_3_{size}_384_1k.npz"
SIZES = {"S": "small", "B": "base", "L": "large"}
EPOCHS = (90, 300, 600, 1200)
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "tiny_vit.npz")
TINY_MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32)


def get_config(arg=None):
  arg = parse_arg(arg, variant="B", epochs=90, init="", res=240, runlocal=False)
  if arg.variant not in SIZES or arg.epochs not in EPOCHS:
    raise UserError(f"variant={arg.variant!r}, epochs={arg.epochs}: allowed variants "
                     f"{tuple(SIZES)}, epochs {EPOCHS}")
  c = default_config()
  c.seed = 0
  if arg.runlocal:
    return _runlocal(c, arg)
  res, teacher_res, classes = arg.res, 384, 1000
  init = arg.init or DEIT3.format(size=SIZES[arg.variant])
  c.total_epochs = arg.epochs
  c.loss = "softmax_xent"  # Unused by distillation; kept as in the reference.

  c.input.data = dict(name="imagenet2012", split="train[:99%]")
  c.input.batch_size = 1024
  # The pod it is written for (`train --plan`'s default; docs/scaling.md).
  c.topology = {"S": "v3-32", "B": "v4-64", "L": "v4-128"}[arg.variant]
  # The fewest microbatches that fit seqhw 30 with a 10% margin (`train --plan`,
  # docs/scaling.md): S 32 per v3 core in 2 of 16; B 32 per v4 chip in 2 of 16; L 16 per
  # v4 chip in 4 of 4.
  c.grad_accum_steps = {"S": 2, "B": 2, "L": 4}[arg.variant]
  pp_label = '|onehot(1000, key="{lbl}", key_result="labels")|keep("image", "prof", "labels")'
  c.input.pp = (
      'decode|inception_crop|flip_lr|copy("image", "prof")'
      f'|resize({res})|value_range'
      f'|resize({teacher_res}, key="prof")|value_range(key="prof")' + pp_label.format(lbl="label"))
  pp_eval = f"decode|resize({res // 7 * 8})|central_crop({res})|value_range(-1, 1)"

  c.model = dict(variant=arg.variant, pool_type="tok", patch_size=(16, 16),
                 num_classes=classes)
  c.model.dtype_mm = "bfloat16"  # bf16 matmuls/activations on TPU/GPU; params stay f32.
  c.model_init = init
  # PI-resize the stored kernel to patch_size once at load, as big_vision's loader does.
  c.model_load = dict(kernel="pi_resize")
  c.distill.teachers = dict(prof=dict(
      model=dict(variant=arg.variant, pool_type="tok", patch_size=(16, 16),
                 posemb_size=(teacher_res // 16, teacher_res // 16), num_classes=classes),
      init=init, input_key="prof"))
  c.distill.temperature = 1.0  # Reference: distance="kl", distance_kw=dict(t=1.0).
  c.mixup = dict(p=1.0, n=2)

  c.grad_clip_norm = 1.0
  c.optax_name = "scale_by_adam"
  c.optax = dict(mu_dtype="bfloat16")
  c.lr = 1e-4
  c.wd = 1e-5
  c.schedule = dict(warmup_steps=5000, decay_type="cosine")
  c.flexi = dict(seqhw=dict(v=SEQHW, p=(1,) * len(SEQHW)))

  def evaluator(dataset, split, label="label"):
    return dict(data=dict(name=dataset, split=split), log_percent=0.05,
                pp=pp_eval + pp_label.format(lbl=label))

  c.evals = dict(
      minitrain=evaluator("imagenet2012", "train[:2%]"),
      minival=evaluator("imagenet2012", "train[99%:]"),
      val=evaluator("imagenet2012", "validation"),
      v2=evaluator("imagenet_v2", "test"),
      a=evaluator("imagenet_a", "test"),
      r=evaluator("imagenet_r", "test"),
      real=evaluator("imagenet2012_real", "validation", label="real_label"))
  c.log_training_steps = 50
  c.ckpt_steps = 1000
  return c


def _runlocal(c, arg):
  """The recipe's structure at toy scale: digits, 16 px student, 24 px teacher."""
  c.total_steps = 2
  c.input.data = dict(name="sklearn_digits", split="train")
  c.input.batch_size = 8
  label = '|onehot(10, key="label", key_result="labels")'
  c.input.pp = ('decode|inception_crop|flip_lr|copy("image", "prof")|resize(16)'
                '|value_range(-1, 1)|resize(24, key="prof")|value_range(-1, 1, key="prof")'
                + label + '|keep("image", "prof", "labels")')
  c.model = dict(TINY_MODEL, pool_type="tok", patch_size=(8, 8), posemb_size=(2, 2),
                 num_classes=10)
  c.model_init = arg.init or TINY
  c.distill.teachers = dict(prof=dict(
      model=dict(TINY_MODEL, pool_type="tok", patch_size=(8, 8), posemb_size=(3, 3),
                 num_classes=10),
      init=arg.init or TINY, input_key="prof"))
  c.mixup = dict(p=1.0, n=2)
  c.optax = dict(mu_dtype="bfloat16")
  c.lr = 1e-4
  c.wd = 1e-5
  c.schedule = dict(warmup_steps=1, decay_type="cosine")
  c.flexi = dict(seqhw=dict(v=(1, 2, 4)))
  c.evals = dict(val=dict(data=dict(name="sklearn_digits", split="test[:16]"), batch_size=8,
                          pp="decode|resize(16)|value_range(-1, 1)" + label
                          + '|keep("image", "labels")'))
  c.log_training_steps = 1
  c.log_eval_steps = 2
  return c

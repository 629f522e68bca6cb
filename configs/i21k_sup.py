r"""FlexiViT-B pre-trained on ImageNet-21k, supervised (big_vision's `i21k_sup`).

Kernel stored at 8x8, posemb 7x7, pool `tok`, 240 px, seqhw drawn uniformly
from 5..30 every step; sigmoid cross-entropy with the head bias initialised to
-10; Adam (bf16 first moment), lr 1e-3, wd 1e-4, 10k warmup then cosine, clip
1.0, mixup p=0.2, RandAugment(2, 10). Batch 4096. Evals at every seqhw on
i21k's held-out test/val/minitrain slices (every 5000 steps).
The reference's flexi supervised trainer crashes on its first step (SPEC 6);
this one runs.

  python -m flexivit_jax.train --config configs/i21k_sup.py:epochs=90 \
      --workdir gs://BUCKET/flexivit/i21k_sup_90ep

Arguments: epochs=90|300|1000 (any number works); i1k_evals (add the reference's
ImageNet-1k evals through the i21k->i1k label map: needs the eval
`label_mapping` key); runlocal (a tiny model on the bundled digits, 16 px, no
RandAugment, 2 steps). Reference keys under other names here: docs/configs.md.
"""
from flexivit_jax.training.config import default_config, parse_arg

SEQHW = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)  # Patches 48, 40, 30, 24, 20, 16, 15, 12, 10, 8.
I21K = dict(name="imagenet21k", split="full[51200:]")
I21K_EVAL_SPLITS = dict(test="full[:25_600]", val="full[25_600:51_200]",
                        train="full[51_200:76_800]")
# (evaluator, dataset, split, label map) as in the reference.
I1K_EVALS = (("i1k_val", "imagenet2012", "validation", "i1k_i21k"),
             ("i1k_v2", "imagenet_v2", "test", "i1k_i21k"),
             ("i1k_a", "imagenet_a", "test", "i1ka_i21k"),
             ("i1k_r", "imagenet_r", "test", "i1kr_i21k"),
             ("i1k_real", "imagenet2012_real", "validation", "i1k_i21k"))
TINY_MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32, pool_type="tok",
                  patch_size=(8, 8), posemb_size=(2, 2))


def get_config(arg=None):
  arg = parse_arg(arg, epochs=90, res=240, i1k_evals=False, runlocal=False)
  c = default_config()
  c.seed = 0
  c.loss = "sigmoid_xent"
  c.init_head_bias = -10.0
  c.optax_name = "scale_by_adam"
  c.optax = dict(mu_dtype="bfloat16")
  c.grad_clip_norm = 1.0
  c.mixup = dict(p=0.2, fold_in=None)
  if arg.runlocal:
    return _runlocal(c)
  res, classes = arg.res, 21843
  c.total_epochs = arg.epochs
  c.input.data = dict(I21K)
  c.input.batch_size = 4096
  # Written for a TPU v3-32: 128 examples per core in 32 microbatches of 4 fit its 16 GiB
  # at seqhw 30 (`train --plan`, docs/scaling.md); 4096 / devices must divide by 32.
  c.topology = "v3-32"
  c.grad_accum_steps = 32
  c.input.prefetch = 8
  pp_common = '|value_range(-1, 1)|onehot({onehot_args})|keep("image", "labels")'
  pp_i21k = pp_common.format(onehot_args=f"{classes}")
  pp_i1k = pp_common.format(onehot_args='1000, key="{lbl}", key_result="labels"')
  c.input.pp = f"decode_jpeg_and_inception_crop({res})|flip_lr|randaug(2,10)" + pp_i21k
  pp_eval = f"decode|resize_small({res // 7 * 8})|central_crop({res})"

  c.model = dict(variant="B", pool_type="tok", posemb="learn", patch_size=(8, 8),
                 posemb_size=(7, 7), seqhw=None, num_classes=classes)
  c.model.dtype_mm = "bfloat16"  # bf16 matmuls/activations on TPU/GPU; params stay f32.
  c.flexi = dict(seqhw=dict(v=SEQHW, p=(1,) * len(SEQHW)))
  c.lr = 0.001
  c.wd = 0.0001
  c.schedule = dict(warmup_steps=10_000, decay_type="cosine")

  c.evals = {name: dict(data=dict(I21K, split=split), pp=pp_eval + pp_i21k, log_steps=5000)
             for name, split in I21K_EVAL_SPLITS.items()}
  if arg.i1k_evals:
    for name, dataset, split, lblmap in I1K_EVALS:
      label = "real_label" if name == "i1k_real" else "label"
      c.evals[name] = dict(data=dict(name=dataset, split=split), log_steps=5000,
                           pp=pp_eval + pp_i1k.format(lbl=label), label_mapping=lblmap)
  c.log_training_steps = 50
  c.ckpt_steps = 1000
  return c


def _runlocal(c):
  """The recipe at toy scale on the bundled digits (16 px)."""
  c.total_steps = 2
  c.input.data = dict(name="sklearn_digits", split="train")
  c.input.batch_size = 8
  pp_common = ('|value_range(-1, 1)|onehot(10, key="label", key_result="labels")'
               '|keep("image", "labels")')
  c.input.pp = "decode|inception_crop(16)|flip_lr" + pp_common
  c.model = dict(TINY_MODEL, num_classes=10)
  c.flexi = dict(seqhw=dict(v=(1, 2, 4)))
  c.lr = 0.001
  c.wd = 0.0001
  c.schedule = dict(warmup_steps=1, decay_type="cosine")
  c.evals = dict(test=dict(data=dict(name="sklearn_digits", split="test[:16]"), batch_size=8,
                           pp="decode|resize(18)|central_crop(16)" + pp_common))
  c.log_training_steps = 1
  c.log_eval_steps = 2
  return c

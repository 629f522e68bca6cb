r"""FlexiViT-B distilled on ImageNet-21k from ViT-B/8 (big_vision's `i21k_distill`).

Teacher: the AugReg ViT-B/8 trained on i21k (300 epochs, 224 px), frozen, on
its own pp branch (`prof`, 224 px). Student: FlexiViT-B, kernel stored at 8x8,
initialised from that same checkpoint (posemb resampled to 7x7), 240 px,
seqhw uniform over 5..30. KL(teacher || student), t=1; Adam (bf16 first
moment), lr 1e-4, wd 1e-5, 5k warmup then cosine, clip 1.0, mixup p=1.0.
Batch 4096, 90 epochs. The reference never ran this config publicly (SPEC 7).

  python -m flexivit_jax.train --config configs/i21k_distill.py:epochs=90 \
      --workdir gs://BUCKET/flexivit/i21k_distill_90ep

Arguments: epochs=N; init=NPZ (default: the AugReg B/8 file on gs://vit_models,
big_vision's `howto-i21k-B/8`); i1k_evals (ImageNet-1k evals through the
i21k->i1k label map: needs the eval `label_mapping` key); runlocal (tiny
student and teacher from configs/testdata/tiny_vit.npz on the digits, 2 steps:
the toy form of i1k_deit3_distill with this recipe's loss).
Reference keys under other names here: docs/configs.md.
"""
import os

from flexivit_jax.training.config import default_config, load_config_file, parse_arg

SEQHW = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)
HOWTO_B8 = ("gs://vit_models/augreg/"
            "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz")
I21K = dict(name="imagenet21k", split="full[51200:]")
I21K_EVAL_SPLITS = dict(student_test="full[:25_600]", student_val="full[25_600:51_200]",
                        student_minitrain="full[51_200:76_800]")
I1K_EVALS = (("student_i1k_val", "imagenet2012", "validation", "i1k_i21k"),
             ("student_i1k_v2", "imagenet_v2", "test", "i1k_i21k"),
             ("student_i1k_a", "imagenet_a", "test", "i1ka_i21k"),
             ("student_i1k_r", "imagenet_r", "test", "i1kr_i21k"),
             ("student_i1k_real", "imagenet2012_real", "validation", "i1k_i21k"))
I1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "i1k_deit3_distill.py")


def get_config(arg=None):
  arg = parse_arg(arg, epochs=90, res=240, init="", i1k_evals=False, runlocal=False)
  c = default_config()
  c.seed = 0
  c.loss = "sigmoid_xent"
  c.init_head_bias = -10.0
  c.distill.temperature = 1.0  # Reference: distance="kl", distance_kw=dict(t=1.0).
  c.optax_name = "scale_by_adam"
  c.optax = dict(mu_dtype="bfloat16")
  c.grad_clip_norm = 1.0
  c.lr = 1e-4
  c.wd = 1e-5
  c.mixup = dict(p=1.0)
  if arg.runlocal:
    return _runlocal(c, arg)
  res, classes, init = arg.res, 21843, arg.init or HOWTO_B8
  c.total_epochs = arg.epochs
  c.input.data = dict(I21K)
  c.input.batch_size = 4096
  c.topology = "v4-64"  # The pod it is written for (`train --plan`; docs/scaling.md).
  # 128 examples per v4 chip in 8 microbatches of 16 fit its 32 GiB at seqhw 30 with the
  # B/8 teacher (`train --plan`); 4096 / devices must divide by 8.
  c.grad_accum_steps = 8
  c.input.prefetch = 8
  pp_i21k = f'|onehot({classes})|keep("image", "prof", "labels")'
  pp_i1k = '|onehot(1000, key="{lbl}", key_result="labels")|keep("image", "prof", "labels")'
  c.input.pp = ('decode|inception_crop|flip_lr|copy("image", "prof")'
                f'|resize({res})|value_range(-1, 1)'
                '|resize(224, outkey="prof")|value_range(-1, 1, key="prof")' + pp_i21k)
  pp_eval = f"decode|resize({res // 7 * 8})|central_crop({res})|value_range(-1, 1)"

  c.model = dict(variant="B", pool_type="tok", patch_size=(8, 8), num_classes=classes)
  c.model.dtype_mm = "bfloat16"  # bf16 matmuls/activations on TPU/GPU; params stay f32.
  c.model_init = init
  c.model_load = dict(kernel="pi_resize")  # Resized to patch_size at load, as big_vision.
  c.distill.teachers = dict(prof=dict(
      model=dict(variant="B/8", pool_type="tok", posemb_size=(28, 28), num_classes=classes),
      init=init, input_key="prof"))
  c.flexi = dict(seqhw=dict(v=SEQHW, p=(1,) * len(SEQHW)))
  c.schedule = dict(warmup_steps=5000, decay_type="cosine")

  c.evals = {name: dict(data=dict(I21K, split=split), pp=pp_eval + pp_i21k, log_steps=5000)
             for name, split in I21K_EVAL_SPLITS.items()}
  if arg.i1k_evals:
    for name, dataset, split, lblmap in I1K_EVALS:
      label = "real_label" if name.endswith("real") else "label"
      c.evals[name] = dict(data=dict(name=dataset, split=split), log_steps=5000,
                           pp=pp_eval + pp_i1k.format(lbl=label), label_mapping=lblmap)
  c.log_training_steps = 50
  c.ckpt_steps = 1000
  return c


def _runlocal(c, arg):
  """The i1k recipe's toy form (same structure), with this recipe's loss and names."""
  local = load_config_file(I1K + ":runlocal" + (f",init={arg.init}" if arg.init else ""))
  for key in ("total_steps", "input", "model", "model_init", "flexi", "schedule",
              "log_training_steps", "log_eval_steps"):
    c[key] = local[key]
  c.distill.teachers = local.distill.teachers
  c.evals = dict(student_test=local.evals["val"])
  return c

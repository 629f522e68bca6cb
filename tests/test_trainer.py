"""The trainer in-process: an end-to-end run, distillation, config and input errors."""
import glob
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import flexivit_jax
from conftest import DEMO_CONFIG, REPO
from flexivit_jax import checkpoint, optim, trainer
from flexivit_jax import config as config_lib
from flexivit_jax.model import FlexiViT


def demo_user_config(arg="runlocal", **overrides) -> dict:
  """The demo config file's dict with dotted-key overrides (before completion)."""
  c = config_lib.load_config_file(f"{DEMO_CONFIG}:{arg}").to_dict()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return c


def demo_config(arg="runlocal", **overrides) -> ml_collections.ConfigDict:
  """The demo config with dotted-key overrides, completed and locked."""
  return config_lib.complete(demo_user_config(arg, **overrides))


class CompileCounter:
  """Counts XLA backend compilations (to show errors come before any compile)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


COMPILES = CompileCounter()


def test_end_to_end_run(digits_data_dir, tmp_path):
  config = demo_config(**{"progress_bar": False, "keep_ckpt": 1})
  out = trainer.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  for r in train_rows:
    assert {"train/loss", "seqhw", "lr", "img_per_s"} <= set(r)
    assert r["seqhw"] in (2, 4) and np.isfinite(r["train/loss"])
  evals = [r for r in rows if "eval/test/seqhw=2/prec@1" in r]
  assert [r["step"] for r in evals] == [4, 8]
  assert 0.0 <= evals[-1]["eval/test/seqhw=4/prec@1"] <= 1.0
  assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  assert (tmp_path / "eval_test.png").stat().st_size > 1000
  assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "checkpoint_*.npz"))] == [
      "checkpoint_000000008.npz"]
  # load_params on the workdir returns the newest checkpoint's params.
  loaded = flexivit_jax.load_params(str(tmp_path))
  final = jax.tree.map(np.asarray, out["state"]["params"])
  jax.tree.map(np.testing.assert_array_equal, loaded, final)


def test_lr_logged_is_the_schedule(digits_data_dir, tmp_path):
  config = demo_config(progress_bar=False, log_training_steps=1, evals={})
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  lr_fn = optim.make_lr_fn(config.lr, optim.make_optimizer(config, config.total_steps)[1])
  np.testing.assert_allclose([r["lr"] for r in rows], [float(lr_fn(r["step"] - 1)) for r in rows],
                             rtol=1e-6)
  # The patch-size sequence is the sampler's, a pure function of (seed, step).
  sampler = flexivit_jax.flexi.FlexiSampler(config.flexi, seed=config.seed)
  assert [r["seqhw"] for r in rows] == [sampler(s)["seqhw"] for s in range(8)]


def _tiny_teacher(path) -> dict:
  teacher = FlexiViT(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32,
                     patch_size=(8, 8), posemb_size=(2, 2), head_zeroinit=False)
  params = teacher.init(jax.random.key(7), jnp.zeros((1, 16, 16, 3)), seqhw=2)["params"]
  params = jax.tree.map(lambda x: np.asarray(x) * 3, params)  # Confident, non-trivial logits.
  checkpoint.save_params(path, params)
  return dict(model=dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32,
                         patch_size=(8, 8), posemb_size=(2, 2), head_zeroinit=False),
              init=str(path), input_key="image", call=dict(seqhw=2))


def test_distillation_step_keeps_teacher_frozen_and_kl_goes_down(tmp_path):
  config = demo_config(**{"distill.teachers": {"prof": _tiny_teacher(tmp_path / "t.npz")},
                          "lr": 1e-2, "schedule": dict(decay_type="constant")})
  model = trainer.build_model(config.model)
  teachers, teacher_params = trainer.build_teachers(config.distill)
  tx, _ = optim.make_optimizer(config, 100)
  mesh = trainer.make_mesh(config.mesh)
  state, _ = trainer.init_state(config, model, tx, mesh, (16, 16, 3), (("seqhw", 4),))
  before = jax.tree.map(np.array, teacher_params)
  step = jax.jit(trainer.make_train_step(model, tx, trainer.make_loss_fn(config), teachers,
                                         seed=0, mixup_p=0.0), static_argnames="flexi")
  images = jax.random.uniform(jax.random.key(0), (16, 16, 16, 3), minval=-1, maxval=1)
  batch = {"image": images, "labels": jnp.zeros((16, 10))}
  kls = []
  for i in range(15):
    state, m = step(state, teacher_params, batch, flexi=(("seqhw", 4 if i % 2 else 2),))
    kls.append(float(m["train/loss"]))
  assert kls[0] > 0.05 and kls[-1] < 0.5 * kls[0], kls
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, teacher_params), before)
  assert "prof" not in state["params"]


def test_distillation_run_checkpoints_only_the_student(digits_data_dir, tmp_path):
  teacher = _tiny_teacher(tmp_path / "teacher.npz")
  config = demo_config(**{"distill.teachers": {"prof": teacher}, "progress_bar": False,
                          "mixup": dict(p=1.0), "lr": 1e-2})
  out = trainer.train_and_evaluate(config, str(tmp_path / "wd"))
  flat = checkpoint.load_flat(str(tmp_path / "wd" / "checkpoint_000000008.npz"))
  assert any(k.startswith("params/") for k in flat) and any(k.startswith("opt/") for k in flat)
  assert not any("prof" in k for k in flat)
  assert np.isfinite(out["train/loss"])
  loaded = checkpoint.load_params(teacher["init"])
  assert set(loaded) == {"embedding", "pos_embedding", "Transformer", "head"}


@pytest.mark.parametrize("overrides,message", [
    ({"flexi": dict(seqhw=dict(v=(2, 40)))}, r"seqhw=40 is larger than the image \(16x16\)"),
    ({"eval_flexi": dict(seqhw=dict(v=(0,)))}, "seqhw must be a positive"),
    ({"model.num_classes": 5}, "model.num_classes=5 but input.pp makes labels with 10 classes"),
    ({"distill.teachers": {"prof": dict(model=dict(num_classes=10, variant="Ti"),
                                        init="TEACHER", input_key="prof_image")}},
     "teacher 'prof' reads batch key 'prof_image'"),
])
def test_bad_runs_fail_before_compiling(digits_data_dir, tmp_path, overrides, message):
  if "distill.teachers" in overrides:
    teacher = _tiny_teacher(tmp_path / "t.npz")
    overrides["distill.teachers"]["prof"]["init"] = teacher["init"]
  config = demo_config(**overrides)
  compiles = COMPILES.count
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / "wd"))
  assert COMPILES.count == compiles
  assert not glob.glob(str(tmp_path / "wd" / "checkpoint_*"))


@pytest.mark.parametrize("overrides,message", [
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"input.batch_sise": 3}, "unknown config key 'input.batch_sise'"),
    ({"model.widht": 3}, "unknown config key 'model.widht'; FlexiViT fields"),
    ({"loss": "hinge"}, "unknown config value loss='hinge'"),
    ({"flexi.seqhws": dict(v=(1,))}, "unknown flexi argument 'flexi.seqhws'"),
    ({"total_epochs": 2.0}, "set exactly one of config keys 'total_steps' and 'total_epochs'"),
    ({"ckpt_steps": 0}, "'ckpt_steps' must be a positive int"),
    ({"lr": "fast"}, "bad value for config key 'lr'"),
    ({"param_sharding": "zero3"}, "unknown param_sharding 'zero3'"),
    ({"evals.val": dict(data=dict(name="x"), pp="keep", bs=3)},
     "unknown config key 'evals.val.bs'"),
])
def test_config_errors_name_the_key(overrides, message):
  user = demo_user_config(**overrides)
  with pytest.raises(ValueError, match=message):
    config_lib.complete(user)


def test_completed_config_is_locked():
  config = demo_config()
  with pytest.raises(AttributeError):
    config.totl_steps = 3


CONFIG_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("spec", [f"{f}{arg}" for f in CONFIG_FILES
                                  for arg in ("", ":runlocal", ":baseline")])
def test_every_config_file_completes_and_builds(spec):
  config = config_lib.complete(config_lib.load_config_file(str(REPO / spec)))
  model = trainer.build_model(config.model)
  flexis = flexivit_jax.flexi.FlexiSampler(config.flexi, seed=0).all_values()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)),
                                             **flexis[0]))
  assert "embedding" in shapes["params"]


def test_mesh_and_fsdp_sharding_rules():
  mesh = trainer.make_mesh({"data": -1, "fsdp": 1})
  assert mesh.shape == {"data": jax.device_count(), "fsdp": 1}
  with pytest.raises(ValueError, match="does not fit the"):
    trainer.make_mesh({"data": 3, "fsdp": 5})
  assert trainer.state_sharding(mesh, (64, 32), "fsdp").spec == jax.sharding.PartitionSpec()


def test_total_epochs_and_init_head_bias(digits_data_dir):
  config = demo_config(total_steps=None, total_epochs=2.0, init_head_bias=-10.0)
  assert trainer.total_steps(config) == round(2 * 1497 / 16)
  model = trainer.build_model(config.model)
  tx, _ = optim.make_optimizer(config, 10)
  state, _ = trainer.init_state(config, model, tx, trainer.make_mesh(config.mesh),
                                (16, 16, 3), (("seqhw", 2),))
  np.testing.assert_array_equal(state["params"]["head"]["bias"], np.full(10, -10.0))
  # Adam's first moment is kept in bfloat16: one bf16 leaf per parameter.
  bf16 = [x for x in jax.tree.leaves(state["opt_state"]) if x.dtype == jnp.bfloat16]
  assert len(bf16) == len(jax.tree.leaves(state["params"]))


def test_model_init_from_the_reference_checkpoint(digits_data_dir, tmp_path):
  """Fine-tuning start: posemb resampled 7x7 -> 2x2, 32x32 kernel kept, new head."""
  ref = str(pathlib.Path(__file__).parent / "data" / "bv_gap_ckpt.npz")
  model_cfg = dict(num_classes=10, width=48, depth=2, num_heads=3, mlp_dim=96,
                   patch_size=(8, 8), posemb_size=(2, 2), pool_type="gap")
  config = demo_config(**{"model": model_cfg, "model_init": ref,
                          "model_load": dict(dont_load=("head/.*",)), "progress_bar": False,
                          "total_steps": 2, "evals": {}})
  model = trainer.build_model(config.model)
  tx, _ = optim.make_optimizer(config, 2)
  state, _ = trainer.init_state(config, model, tx, trainer.make_mesh(config.mesh),
                                (16, 16, 3), (("seqhw", 2),))
  stored = checkpoint.load_params(ref)
  np.testing.assert_array_equal(state["params"]["embedding"]["kernel"],
                                stored["embedding"]["kernel"])
  np.testing.assert_allclose(state["params"]["pos_embedding"],
                             flexivit_jax.resample_posemb(stored["pos_embedding"], 2,
                                                          rule="load"), atol=1e-6)
  np.testing.assert_array_equal(state["params"]["head"]["kernel"], np.zeros((48, 10)))
  out = trainer.train_and_evaluate(config, str(tmp_path))  # And it trains from there.
  assert out["state"]["params"]["embedding"]["kernel"].shape == (32, 32, 3, 48)

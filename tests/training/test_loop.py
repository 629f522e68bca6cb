"""The training loop in-process: an end-to-end run, distillation, input errors, model_init."""
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flexivit_jax
from conftest import REF_CKPT, REF_MODEL, load_config
from flexivit_jax.checkpoints import npz, sources
from flexivit_jax.training import optim
from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.checkpoints import manager
from flexivit_jax.training import compiled_steps
from flexivit_jax.training import initial_state
from flexivit_jax.training import loop
from flexivit_jax.training import run
from flexivit_jax.training import sharding
from flexivit_jax.models import vit
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import runlog


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


@pytest.mark.slow
def test_end_to_end_run(digits_data_dir, tmp_path, capsys):
  config = load_config(**{"progress_bar": False, "keep_ckpt": 1})
  out = loop.train_and_evaluate(config, str(tmp_path))
  # The final table: prec@1 and forward GFLOPs per image, the finer size costing more.
  table = capsys.readouterr().out.split("Accuracy per patch size")[1].splitlines()
  assert table[1].split() == ["seqhw", "patch", "test", "prec@1", "GFLOPs/img"]
  (_, _, _, coarse), (_, _, _, fine) = [line.split() for line in table[3:5]]
  assert 0 < float(coarse) < float(fine)
  rows = runlog.read_metrics(str(tmp_path))
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
  assert step_dirs.complete_steps(str(tmp_path)) == [8]
  # load_params on the workdir returns the newest checkpoint's params.
  loaded = flexivit_jax.load_params(str(tmp_path))
  final = jax.tree.map(np.asarray, out["state"]["params"])
  jax.tree.map(np.testing.assert_array_equal, loaded, final)


@pytest.mark.slow
def test_lr_logged_is_the_schedule(digits_data_dir, tmp_path):
  config = load_config(progress_bar=False, log_training_steps=1, evals={})
  loop.train_and_evaluate(config, str(tmp_path))
  rows = runlog.read_metrics(str(tmp_path))
  lr_fn = optim.make_lr_fn(config.lr, optim.make_optimizer(config, config.total_steps)[1])
  np.testing.assert_allclose([r["lr"] for r in rows], [float(lr_fn(r["step"] - 1)) for r in rows],
                             rtol=1e-6)
  # The patch-size sequence is the sampler's, a pure function of (seed, step).
  sampler = flexivit_jax.training.flexi.FlexiSampler(config.flexi, seed=config.seed)
  assert [r["seqhw"] for r in rows] == [sampler(s)["seqhw"] for s in range(8)]


def _tiny_teacher(path) -> dict:
  teacher = FlexiViT(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32,
                     patch_size=(8, 8), posemb_size=(2, 2), head_zeroinit=False)
  params = teacher.init(jax.random.key(7), jnp.zeros((1, 16, 16, 3)), seqhw=2)["params"]
  params = jax.tree.map(lambda x: np.asarray(x) * 3, params)  # Confident, non-trivial logits.
  npz.save_params(path, params)
  return dict(model=dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32,
                         patch_size=(8, 8), posemb_size=(2, 2), head_zeroinit=False),
              init=str(path), input_key="image", call=dict(seqhw=2))


def test_distillation_step_keeps_teacher_frozen_and_kl_goes_down(tmp_path):
  config = load_config(**{"distill.teachers": {"prof": _tiny_teacher(tmp_path / "t.npz")},
                          "lr": 1e-2, "schedule": dict(decay_type="constant")})
  model = vit.from_config(config.model)
  teachers, teacher_params = initial_state.build_teachers(config.distill)
  tx, _ = optim.make_optimizer(config, 100)
  mesh = sharding.make_mesh(config.mesh)
  state, _ = initial_state.init_state(config, model, tx, mesh, (16, 16, 3), (("seqhw", 4),))
  before = jax.tree.map(np.array, teacher_params)
  step = jax.jit(compiled_steps.make_train_step(model, tx, compiled_steps.make_loss_fn(config), teachers,
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


@pytest.mark.slow
def test_distillation_run_checkpoints_only_the_student(digits_data_dir, tmp_path):
  teacher = _tiny_teacher(tmp_path / "teacher.npz")
  config = load_config(**{"distill.teachers": {"prof": teacher}, "progress_bar": False,
                          "mixup": dict(p=1.0), "lr": 1e-2})
  out = loop.train_and_evaluate(config, str(tmp_path / "wd"))
  flat = manager.leaf_names(sources.read_state(str(tmp_path / "wd"), 8))
  assert any(k.startswith("params/") for k in flat)
  assert any(k.startswith("opt_state/") for k in flat)
  assert not any("prof" in k for k in flat)
  assert np.isfinite(out["train/loss"])
  loaded = sources.load_params(teacher["init"])
  assert set(loaded) == {"embedding", "pos_embedding", "Transformer", "head"}


@pytest.mark.parametrize("overrides,message", [
    ({"flexi": dict(seqhw=dict(v=(2, 40)))}, r"seqhw=40 is larger than the image \(16x16\)"),
    ({"eval_flexi": dict(seqhw=dict(v=(0,)))}, "seqhw must be a positive"),
    ({"model.num_classes": 5}, "model.num_classes=5 but input.pp makes labels with 10 classes"),
    ({"model": {"variant": "Ti/16"}},  # A whole-dict override drops num_classes.
     r"model.num_classes is not set.*labels with 10 classes"),
    ({"distill.teachers": {"prof": dict(model="TEACHER", init="TEACHER",
                                        input_key="prof_image")}},
     "teacher 'prof' reads batch key 'prof_image'"),
])
def test_bad_runs_fail_before_compiling(digits_data_dir, tmp_path, overrides, message):
  if "distill.teachers" in overrides:
    teacher = _tiny_teacher(tmp_path / "t.npz")
    overrides["distill.teachers"]["prof"].update(model=teacher["model"], init=teacher["init"])
  config = load_config(**overrides)
  compiles = COMPILES.count
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / "wd"))
  assert COMPILES.count == compiles
  assert not (tmp_path / "wd" / step_dirs.CHECKPOINT_SUBDIR).exists()
  # Positive control: the counter does see a compile (a fresh function, never cached).
  jax.jit(lambda x: x * 3 + compiles).lower(jnp.float32(1)).compile()
  assert COMPILES.count > compiles


def test_total_epochs_and_init_head_bias(digits_data_dir):
  config = load_config(total_steps=None, total_epochs=2.0, init_head_bias=-10.0)
  assert run.total_steps(config) == round(2 * 1497 / 16)
  model = vit.from_config(config.model)
  tx, _ = optim.make_optimizer(config, 10)
  state, _ = initial_state.init_state(config, model, tx, sharding.make_mesh(config.mesh),
                                (16, 16, 3), (("seqhw", 2),))
  np.testing.assert_array_equal(state["params"]["head"]["bias"], np.full(10, -10.0))
  # Adam's first moment is kept in bfloat16: one bf16 leaf per parameter.
  bf16 = [x for x in jax.tree.leaves(state["opt_state"]) if x.dtype == jnp.bfloat16]
  assert len(bf16) == len(jax.tree.leaves(state["params"]))


@pytest.mark.slow
def test_model_init_from_the_reference_checkpoint(digits_data_dir, tmp_path):
  """Fine-tuning start: posemb resampled 7x7 -> 2x2, 32x32 kernel kept, new head."""
  ref = str(REF_CKPT)
  model_cfg = dict(REF_MODEL, patch_size=(8, 8), posemb_size=(2, 2))
  config = load_config(**{"model": model_cfg, "model_init": ref,
                          "model_load": dict(dont_load=("head/.*",)), "progress_bar": False,
                          "total_steps": 2, "evals": {}})
  model = vit.from_config(config.model)
  tx, _ = optim.make_optimizer(config, 2)
  state, _ = initial_state.init_state(config, model, tx, sharding.make_mesh(config.mesh),
                                (16, 16, 3), (("seqhw", 2),))
  stored = sources.load_params(ref)
  np.testing.assert_array_equal(state["params"]["embedding"]["kernel"],
                                stored["embedding"]["kernel"])
  np.testing.assert_allclose(state["params"]["pos_embedding"],
                             flexivit_jax.resample_posemb(stored["pos_embedding"], 2,
                                                          rule="load"), atol=1e-6)
  np.testing.assert_array_equal(state["params"]["head"]["kernel"], np.zeros((48, 10)))
  out = loop.train_and_evaluate(config, str(tmp_path))  # And it trains from there.
  assert out["state"]["params"]["embedding"]["kernel"].shape == (32, 32, 3, 48)

"""The pre-flight plan: topologies, shapes read from pp strings, per-device memory composed
from small compiles (checked against a direct compile), recommendations, and `train --plan`
on every config (offline, writing nothing)."""
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO, load_config
from flexivit_jax import train
from flexivit_jax.errors import UserError
from flexivit_jax.training import plan
from flexivit_jax.training.topologies import GIB, parse_topology

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("name,devices,hbm,hosts", [
    ("v3-32", 32, 16, 4), ("v4-64", 32, 32, 8), ("v5e-256", 256, 16, 64),
    ("v5p-128", 64, 95, 16), ("8xH100", 8, 80, 1), ("16xA100-40", 16, 40, 2)])
def test_topologies_count_devices_as_jax_does(name, devices, hbm, hosts):
  topo = parse_topology(name)
  assert (topo.devices, topo.chip.hbm_bytes, topo.hosts) == (devices, hbm * GIB, hosts)


@pytest.mark.parametrize("name", ["v3", "v4-63", "v9-8", "8xB200", "0xH100", 32])
def test_unknown_topologies_say_what_is_allowed(name):
  with pytest.raises(UserError, match=r"unknown topology .*allowed: TPU .* e\.g\. v3-8"):
    parse_topology(name)


def test_image_sizes_follow_keys_and_copies():
  pp = ('decode|inception_crop|flip_lr|copy("image", "prof")|resize(240)|value_range'
        '|resize(384, key="prof")|value_range(key="prof")|keep("image", "prof")')
  assert plan.image_sizes(pp) == {"image": (240, 240), "prof": (384, 384)}
  assert plan.image_sizes("decode_jpeg_and_inception_crop(224)|flip_lr") == {"image": (224, 224)}


def test_the_costliest_step_has_the_most_tokens():
  config = load_config(**{"flexi": dict(seqhw=dict(v=(2, 4, 1)))})
  assert plan.costliest_flexi(config) == (("seqhw", 4),)
  config = load_config(**{"flexi": dict(patch_size=dict(v=((8, 8), (4, 4), (16, 16))))})
  assert plan.costliest_flexi(config) == (("patch_size", (4, 4)),)


def _direct_bytes(config, batch: int) -> int:
  """Arguments + temporaries of the real step compiled at full depth (what the plan composes)."""
  flexi = plan.costliest_flexi(config)
  jitted, state, tparams, shapes = plan._abstract_step(config, None, batch, flexi)  # pylint: disable=protected-access
  analysis = jitted.lower(state, tparams, shapes, flexi=flexi).compile().memory_analysis()
  return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes


def test_composed_memory_matches_a_direct_compile():
  """Compiled at depths 1 and 2 (batches 4 and 8), extrapolated to depth 4: within 10%."""
  config = load_config(**{"model": dict(num_classes=10, width=64, depth=4, num_heads=2,
                                        mlp_dim=128, patch_size=(4, 4), posemb_size=(4, 4)),
                          "input.batch_size": 64, "flexi": dict(seqhw=dict(v=(2, 4)))})
  p = plan.make_plan(config, "v3-8")
  assert p.per_device_batch == 8 and p.flexi == (("seqhw", 4),)
  direct = _direct_bytes(config, 8)
  assert abs(p.total - direct) <= 0.1 * direct, (p.memory, direct)
  # Compiled at the microbatch only (half the compiles): the same plan at that microbatch.
  one_point = plan.make_plan(config, "v3-8", points=1)
  assert one_point.memory == pytest.approx(p.memory, abs=2)
  assert one_point.flops_per_step == pytest.approx(p.flops_per_step, rel=1e-6)
  # Accumulation: the same per-device batch in 4 microbatches holds less.
  accumulated = plan.make_plan(load_config(**{**dict(config.items()), "grad_accum_steps": 4}),
                               "v3-8")
  assert accumulated.memory["activations"] < 0.5 * p.memory["activations"]
  assert accumulated.memory["accumulator"] == p.memory["gradients"] > 0
  # Measured at other batch sizes (2 and 4, not 4 and 8): the same FLOPs to a few %.
  assert accumulated.flops_per_step == pytest.approx(p.flops_per_step, rel=0.05)


def test_fsdp_divides_the_state():
  config = load_config(**{"mesh": dict(data=-1, fsdp=8), "param_sharding": "fsdp"})
  replicated, sharded = plan.make_plan(load_config(), "v3-8"), plan.make_plan(config, "v3-8")
  assert sharded.mesh == {"data": 1, "fsdp": 8}
  assert sharded.memory["optimizer"] < replicated.memory["optimizer"] / 4
  assert sharded.memory["gathered params"] == replicated.memory["gradients"]


@pytest.mark.parametrize("name", CONFIGS)
def test_plan_runs_on_every_config_offline(name, capsys):
  """Every config at its runlocal size on a small pod: it fits, and the text says so."""
  train.main(["--config", str(REPO / "configs" / name) + ":runlocal", "--plan",
              "--topology", "v3-8"])
  out = capsys.readouterr().out
  assert "on v3-8: 8 x TPU v3 core, 16 GiB each" in out
  assert "fits (at most 90% used)" in out and "FLOPs per step" in out


def _impossible_args(tmp_path):
  """Each example alone has 65,536 tokens (1024 px in patches of 4): no setting fits 8 GiB."""
  pp = ('decode|resize(1024)|value_range(-1, 1)|onehot(10, key="label", key_result="labels")'
        '|keep("image", "labels")')
  return ["--config", str(REPO / "configs" / "demo_digits.py") + ":runlocal", "--plan",
          "--topology", "v2-8", f"--config.input.pp={pp}",
          "--config.flexi={'seqhw': {'v': (256,)}}",
          f"--config.input.data_dir={tmp_path / 'no_data_here'}",
          f"--config.compile_cache_dir={tmp_path / 'cache'}"]


def test_plan_exits_2_with_one_line_when_nothing_fits(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(_impossible_args(tmp_path))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  assert "cannot fit v2-8 (8 GiB per device)" in err[0]


def test_plan_writes_nothing_and_reads_no_data(tmp_path, monkeypatch, capsys):
  """No workdir, no compile cache, no file anywhere under the current directory; the
  dataset named (absent here) is never opened."""
  monkeypatch.chdir(tmp_path)
  train.main(["--config", str(REPO / "configs" / "i21k_sup.py") + ":runlocal", "--plan",
              "--topology", "8xH100", f"--config.compile_cache_dir={tmp_path / 'cache'}",
              "--config.input.data={'name': 'imagenet21k', 'split': 'full'}",
              f"--config.input.data_dir={tmp_path / 'no_data_here'}"])
  assert "fits" in capsys.readouterr().out
  assert list(tmp_path.iterdir()) == []


def test_plan_needs_a_topology(capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(["--config", str(REPO / "configs" / "demo_digits.py") + ":runlocal", "--plan"])
  assert exit_info.value.code == 2
  assert "--plan needs a topology" in capsys.readouterr().err


def test_train_still_needs_a_workdir(capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(["--config", str(REPO / "configs" / "demo_digits.py") + ":runlocal"])
  assert exit_info.value.code == 2
  assert "--workdir" in capsys.readouterr().err


def test_baseline_turns_off_bf16_and_remat_for_student_and_teachers():
  """The table's "before": float32 student and teachers, no remat, one microbatch; the
  plan prints the teachers' dtype beside the student's settings."""
  config = load_config("i1k_deit3_distill.py:variant=S")
  assert plan.model_settings(config) == {"dtype_mm": "bfloat16", "remat_policy": "none",
                                         "scan": False}
  assert plan.teacher_settings(config) == {"prof": {"dtype_mm": "bfloat16"}}
  before = plan.with_overrides(config, plan.baseline_overrides(config))
  assert plan.model_settings(before)["dtype_mm"] == "float32"
  assert plan.teacher_settings(before) == {"prof": {"dtype_mm": "float32"}}
  assert before.grad_accum_steps == 1 and config.grad_accum_steps > 1


def test_candidates_skip_the_settings_the_config_already_has():
  topo = parse_topology("v3-8")
  bf16 = load_config(**{"model.dtype_mm": "bfloat16"})
  steps = {tuple(sorted((k, v) for k, v in c.items() if k.startswith("model.")))
           for c in plan.candidates(bf16, topo)}
  assert steps == {(), (("model.remat_policy", "nothing_saveable"),)}
  assert len({tuple(sorted(c.items())) for c in plan.candidates(load_config(), topo)}) == len(
      plan.candidates(load_config(), topo))


def test_a_setting_spelled_out_at_its_default_is_the_same_measurement():
  config = load_config()
  spelled = plan.with_overrides(config, {"model.dtype_mm": "float32",
                                         "model.remat_policy": "none"})
  assert plan._cost_key(config) == plan._cost_key(spelled)  # pylint: disable=protected-access
  remat = plan.with_overrides(config, {"model.remat_policy": "nothing_saveable"})
  assert plan._cost_key(config) != plan._cost_key(remat)  # pylint: disable=protected-access


def test_a_segmentation_plan_compiles_the_segmenter_with_pixel_labels():
  config = load_config("seg_ade20k.py:runlocal")
  flexi = plan.costliest_flexi(config)
  _, state, _, shapes = plan._abstract_step(config, 1, 2, flexi)  # pylint: disable=protected-access
  assert "decoder" in state["params"] and "backbone" in state["params"]
  assert shapes["labels"].shape == (2, 32, 32) and shapes["labels"].dtype == jnp.int32


def test_residuals_follow_bf16_and_remat():
  """JAX's residuals per example (traced, not compiled): bf16 about halves them, remat
  keeps only each block's input; the plan carries them beside XLA:CPU's activations."""
  config = load_config(**{"model": dict(num_classes=10, width=64, depth=4, num_heads=2,
                                        mlp_dim=128, patch_size=(4, 4), posemb_size=(4, 4)),
                          "flexi": dict(seqhw=dict(v=(4,)))})
  flexi = (("seqhw", 4),)
  f32 = plan.residual_bytes_per_example(config, flexi)
  bf16 = plan.residual_bytes_per_example(
      plan.with_overrides(config, {"model.dtype_mm": "bfloat16"}), flexi)
  remat = plan.residual_bytes_per_example(
      plan.with_overrides(config, {"model.remat_policy": "nothing_saveable"}), flexi)
  assert 0.4 * f32 < bf16 < 0.7 * f32
  assert remat < 0.25 * f32
  block_inputs = 4 * (4 * 4 + 1) * 64 * 4  # depth x tokens (+cls) x width x f32 bytes.
  assert remat >= block_inputs

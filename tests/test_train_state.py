"""Orbax train-state checkpoints in-process: round trip, retention, corrupt ones set aside,
an interrupted asynchronous save, the npz export of params."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import REPO
from flexivit_jax import checkpoint, state_files, train_state
from flexivit_jax.errors import UserError


def make_state(seed=0, width=8):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(width, 4)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16)},
            "scale": jnp.asarray(rng.normal(size=(width,)), jnp.float32)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3, mu_dtype=jnp.bfloat16))
  opt_state = tx.init(params)
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.int32 else x + 3, opt_state)
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed, jnp.int32)}


def replicated(tree):
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(workdir, steps, keep=10, keep_every=None):
  ckpts = train_state.StateCheckpoints(str(workdir), keep=keep, keep_every=keep_every)
  for step in steps:
    ckpts.save(step, make_state(step))
  ckpts.wait()
  return ckpts


def restore(workdir, seed=0):
  ckpts = train_state.StateCheckpoints(str(workdir), keep=10)
  abstract = jax.eval_shape(lambda: make_state(seed))
  try:
    return ckpts.restore(abstract, replicated(abstract))
  finally:
    ckpts.close()


def test_round_trip_is_bit_identical_and_layout_is_one_owner(tmp_path):
  save_steps(tmp_path, [3, 5]).close()
  state, step = restore(tmp_path)
  assert step == 5
  assert_trees_equal(state, make_state(5))
  assert sorted(os.listdir(tmp_path / state_files.CHECKPOINT_SUBDIR)) == [
      state_files.step_dir_name(3), state_files.step_dir_name(5)]
  assert [state_files.step_of(n) for n in ("step_000000005", "step_000000005.corrupt-1",
                                           "step_000000005.orbax-checkpoint-tmp-9")] == [
      5, None, None]
  assert_trees_equal(state_files.read_params(str(tmp_path), 3), make_state(3)["params"])
  assert restore(tmp_path / "empty") is None


def test_keep_last_n_and_every_k(tmp_path):
  save_steps(tmp_path, range(1, 11), keep=2, keep_every=4).close()
  assert state_files.complete_steps(str(tmp_path)) == [4, 8, 9, 10]


def _truncate_data_files(step_dir: pathlib.Path):
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 64
           and "d" in p.relative_to(step_dir).parts]
  assert files, list(step_dir.rglob("*"))
  for p in files:
    with open(p, "r+b") as f:
      f.truncate(p.stat().st_size // 3)


def test_corrupt_latest_is_set_aside_and_previous_used(tmp_path, caplog):
  save_steps(tmp_path, [2, 4]).close()
  root = tmp_path / state_files.CHECKPOINT_SUBDIR
  _truncate_data_files(root / state_files.step_dir_name(4))
  before = {p.name: p.stat().st_size for p in (root / "step_000000004").rglob("*") if p.is_file()}
  state, step = restore(tmp_path)
  assert step == 2
  assert_trees_equal(state, make_state(2))
  aside = [n for n in os.listdir(root) if n.startswith("step_000000004" + state_files.CORRUPT_MARK)]
  assert len(aside) == 1, os.listdir(root)  # Renamed, not deleted: same files, same sizes.
  after = {p.name: p.stat().st_size for p in (root / aside[0]).rglob("*") if p.is_file()}
  assert after == before
  assert "set it aside" in caplog.text and "step_000000004" in caplog.text


def test_no_usable_checkpoint_is_one_user_error(tmp_path):
  save_steps(tmp_path, [2]).close()
  _truncate_data_files(tmp_path / state_files.CHECKPOINT_SUBDIR / "step_000000002")
  with pytest.raises(UserError, match="no usable checkpoint.*set aside"):
    restore(tmp_path)


def test_other_config_is_a_user_error_that_renames_nothing(tmp_path):
  save_steps(tmp_path, [2]).close()
  ckpts = train_state.StateCheckpoints(str(tmp_path), keep=10)
  abstract = jax.eval_shape(lambda: make_state(0, width=16))
  with pytest.raises(UserError, match="does not match this config"):
    ckpts.restore(abstract, replicated(abstract))
  ckpts.close()
  assert os.listdir(tmp_path / state_files.CHECKPOINT_SUBDIR) == ["step_000000002"]


_SLOW_SAVE = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from orbax.checkpoint._src.path import atomicity
    from test_train_state import make_state, save_steps
    from flexivit_jax import train_state
    save_steps(sys.argv[1], [1]).close()
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def slow_finalize(self, *a, **k):  # The commit of step 2 never comes in time.
      await asyncio.sleep(600)
      return await finalize(self, *a, **k)
    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
    ckpts = train_state.StateCheckpoints(sys.argv[1], keep=10)
    ckpts.save(2, make_state(2))
    print("save returned", flush=True)  # Asynchronous: training would go on here.
    ckpts.wait()
""")


@pytest.mark.slow
def test_killed_async_save_leaves_the_previous_checkpoint_usable(tmp_path):
  code = _SLOW_SAVE.format(tests=str(REPO / "tests"))
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "save returned", proc.communicate()[1][-3000:]
  root = tmp_path / state_files.CHECKPOINT_SUBDIR
  for _ in range(600):  # Wait until step 2's files are being written, then kill.
    if any("tmp" in n for n in os.listdir(root)):
      break
    import time
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert any(n.startswith("step_000000002") and "tmp" in n for n in os.listdir(root))
  assert state_files.complete_steps(str(tmp_path)) == [1]
  state, step = restore(tmp_path)
  assert step == 1
  assert_trees_equal(state, make_state(1))
  assert not any("tmp" in n for n in os.listdir(root))  # Cleaned when reopened.


@pytest.mark.slow
def test_export_cli_round_trip(tmp_path):
  save_steps(tmp_path / "wd", [3, 6]).close()
  out = tmp_path / "p.npz"
  cmd = [sys.executable, "-m", "flexivit_jax.export", str(tmp_path / "wd"), str(out),
         "--step", "3"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_trees_equal(checkpoint.load_params(str(out)), make_state(3)["params"])
  assert_trees_equal(checkpoint.load_params(str(tmp_path / "wd")), make_state(6)["params"])
  bad = subprocess.run(cmd[:-1] + ["7"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "step 7" in bad.stderr
  assert "Traceback" not in bad.stderr

"""Whole training runs as subprocesses: kill/resume determinism, SIGTERM, 1/N devices, N hosts.

Uses the demo config's tiny `runlocal` model; every run logs its loss at every step.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import DEMO_CONFIG, REPO
from flexivit_jax.checkpoints import __main__ as checkpoints_cli
from flexivit_jax.checkpoints import sources, step_dirs, step_health
from flexivit_jax.checkpoints import manager
from flexivit_jax.outputs import runlog

pytestmark = pytest.mark.slow  # Every test here trains in subprocesses.
STEPS = 14
COMMON = [f"--config.total_steps={STEPS}", "--config.ckpt_steps=3", "--config.log_training_steps=1",
          "--config.log_eval_steps=1000", "--config.progress_bar=False", "--config.keep_ckpt=2",
          "--config.mixup.p=0.5"]


def train_cmd(workdir, *extra):
  return [sys.executable, "-m", "flexivit_jax.train", "--config", f"{DEMO_CONFIG}:runlocal",
          "--workdir", str(workdir), *COMMON, *extra]


def run(workdir, *extra, check=True):
  proc = subprocess.run(train_cmd(workdir, *extra), cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def train_rows(workdir):
  return [r for r in runlog.read_metrics(str(workdir)) if "train/loss" in r]


def final_state(workdir, step=STEPS):
  """The saved train state of `step` as '/'-named numpy arrays."""
  return manager.leaf_names(sources.read_state(str(workdir), step))


def assert_same_state(a, b):
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def start_and_signal(workdir, sig, at_step, *extra):
  """Starts a run and sends `sig` once metrics show step >= at_step."""
  proc = subprocess.Popen(train_cmd(workdir, *extra), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 900  # Start-up and compiles take minutes on a loaded 2-core VM.
  while time.time() < deadline and proc.poll() is None:
    if any(r["step"] >= at_step for r in train_rows(workdir)):
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out + err


@pytest.fixture(scope="module")
def uninterrupted(digits_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  run(workdir)
  return workdir


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(uninterrupted, tmp_path):
  # Two different random steps; FLEXIVIT_TEST_SEED=<seed> replays a failure.
  seed = int(os.environ.get("FLEXIVIT_TEST_SEED", random.randrange(2**31)))
  kill_steps = random.Random(seed).sample(range(2, STEPS - 2), 2)
  print(f"SIGKILL steps {kill_steps} from FLEXIVIT_TEST_SEED={seed}")
  # The four runs share traced steps and executables, as restarts of one job would; the
  # reference run used none, so this also checks that the cached steps are bit-identical.
  cache = f"--config.compile_cache_dir={tmp_path / 'cache'}"
  for kill_at in kill_steps:
    workdir = tmp_path / f"killed_at_{kill_at}"
    code, err = start_and_signal(workdir, signal.SIGKILL, kill_at, cache)
    assert code == -signal.SIGKILL, (seed, kill_at, code, err[-2000:])
    assert STEPS not in step_dirs.complete_steps(str(workdir))
    run(workdir, cache)  # Resumes from its newest checkpoint.
    assert_same_state(final_state(workdir), final_state(uninterrupted))
    # metrics.jsonl reads as one run: each step once, the same losses.
    rows, ref = train_rows(workdir), train_rows(uninterrupted)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), (seed, kill_at)
    np.testing.assert_array_equal([r["train/loss"] for r in rows], [r["train/loss"] for r in ref])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exit(uninterrupted, tmp_path):
  workdir = tmp_path / "preempted"
  code, err = start_and_signal(workdir, signal.SIGTERM, 4)
  assert code == 143, err[-2000:]
  last_logged = max(r["step"] for r in train_rows(workdir))
  assert step_dirs.complete_steps(str(workdir))[-1] == last_logged
  assert err.strip().splitlines()[-1] == f"preempted: saved checkpoint at step {last_logged}"
  assert "Traceback" not in err
  assert not (workdir / "run.lock").exists()  # The workdir lock goes on preemption too.
  run(workdir)
  assert_same_state(final_state(workdir), final_state(uninterrupted))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(workdir, devices, *extra):
  """Process 0 configured by flags, process 1 by the environment (as launch scripts do)."""
  port = _free_port()
  by_flags = [f"--num_cpu_devices={devices}", "--num_processes=2", "--process_id=0",
              f"--coordinator_address=127.0.0.1:{port}"]
  by_env = {**os.environ, "FLEXIVIT_NUM_CPU_DEVICES": str(devices),
            "FLEXIVIT_NUM_PROCESSES": "2", "FLEXIVIT_PROCESS_ID": "1",
            "FLEXIVIT_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}
  procs = [subprocess.Popen(train_cmd(workdir, *by_flags, *extra), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
           subprocess.Popen(train_cmd(workdir, *extra), cwd=REPO, env=by_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]


def run_local_sh(workdir, processes, devices):
  cmd = ["bash", str(REPO / "launch" / "local.sh"), str(processes), "--devices", str(devices),
         "--", *train_cmd(workdir)[3:]]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "PYTHON": sys.executable})
  assert proc.returncode == 0, proc.stderr[-3000:]


def assert_losses_match(workdir, ref, name, first=1):
  rows = train_rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), name
  assert [r["seqhw"] for r in rows] == [r["seqhw"] for r in ref], name
  np.testing.assert_allclose([r["train/loss"] for r in rows[first - 1:]],
                             [r["train/loss"] for r in ref[first - 1:]],
                             rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_same_losses_on_1_device_and_8_devices_fsdp_and_resume_on_other_meshes(
    uninterrupted, tmp_path):
  """8 devices (data 4 x fsdp 2) equal 1 device; its checkpoint resumes on 2 processes x 2.

  The resume on 2 processes x 2 devices (4 devices, replicated) also covers a
  resume on 4 devices of one process, which it used to run as well. Two processes
  from the start are compared with one in
  test_sigterm_to_local_sh_stops_both_processes_at_one_step (launch/local.sh).
  """
  ref = train_rows(uninterrupted)
  fsdp = tmp_path / "fsdp"
  run(fsdp, "--num_cpu_devices=8", "--config.mesh.fsdp=2", "--config.param_sharding=fsdp",
      "--config.keep_ckpt_every=6")
  assert_losses_match(fsdp, ref, "8 devices fsdp")
  final, ref_final = final_state(fsdp), final_state(uninterrupted)
  for key in final:
    if key.startswith("params/"):
      np.testing.assert_allclose(final[key], ref_final[key], atol=1e-4,
                                 err_msg=f"8 devices fsdp: {key}")
  assert step_dirs.complete_steps(str(fsdp)) == [6, 12, 14]  # keep 2 + every 6th.
  # Step 6 of the fsdp=2 run on 8 devices resumes replicated on 2 processes x 2 devices.
  workdir = tmp_path / "r2x2"
  os.makedirs(workdir / step_dirs.CHECKPOINT_SUBDIR)
  shutil.copytree(step_dirs.step_path(str(fsdp), 6), step_dirs.step_path(str(workdir), 6))
  shutil.copy(fsdp / "metrics.jsonl", workdir / "metrics.jsonl")
  start_two_processes(workdir, 2)
  assert_losses_match(workdir, ref, "2 processes x 2 devices", first=7)


@pytest.mark.slow
def test_aot_compile_and_persistent_caches_give_the_same_run(uninterrupted, tmp_path):
  """Cold, then warm from the traced-step and XLA caches: the same run as without them."""
  cache = tmp_path / "xla_cache"
  run(tmp_path / "cold", "--config.aot_compile=True", f"--config.compile_cache_dir={cache}")
  steps = {f: os.stat(cache / "steps" / f).st_mtime_ns for f in os.listdir(cache / "steps")}
  assert len([f for f in steps if f.startswith("train-")]) == 2  # One per seqhw value.
  assert len(os.listdir(cache)) >= 3  # XLA's executables beside the traced steps.
  run(tmp_path / "warm", "--config.aot_compile=True", f"--config.compile_cache_dir={cache}")
  # Every traced step was read back, none traced again or rewritten.
  assert {f: os.stat(cache / "steps" / f).st_mtime_ns
          for f in os.listdir(cache / "steps")} == steps
  for workdir in ("cold", "warm"):
    assert_same_state(final_state(tmp_path / workdir), final_state(uninterrupted))


@pytest.mark.slow
def test_unknown_command_line_key_fails_naming_it(tmp_path):
  proc = run(tmp_path, "--config.totl_steps=3", check=False)
  assert proc.returncode != 0
  assert "totl_steps" in proc.stderr
  assert not os.path.exists(tmp_path / "metrics.jsonl")


@pytest.mark.slow
def test_sigterm_to_local_sh_stops_both_processes_at_one_step(uninterrupted, tmp_path):
  """2 processes: the stop step is agreed without a per-step collective, then resumed."""
  workdir = tmp_path / "p2"
  cmd = ["bash", str(REPO / "launch" / "local.sh"), "2", "--", *train_cmd(workdir)[3:]]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
  deadline = time.time() + 900
  while time.time() < deadline and proc.poll() is None:
    if any(r["step"] >= 4 for r in train_rows(workdir)):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  saved = step_dirs.complete_steps(str(workdir))[-1]
  assert 4 <= saved < STEPS and saved == max(r["step"] for r in train_rows(workdir))
  run_local_sh(workdir, 2, 1)
  assert_losses_match(workdir, train_rows(uninterrupted), "resumed after SIGTERM")
  final, ref = final_state(workdir), final_state(uninterrupted)
  for key in final:
    if key.startswith("params/"):
      np.testing.assert_allclose(final[key], ref[key], atol=1e-4, err_msg=key)


# ----------------------------------------------------------------------------
# Checkpoints that fail to read: set aside only when their files prove damage.

_DENY_READS = textwrap.dedent("""
    # As `chmod 000 <step dir>` for a user that chmod binds (tests may run as root).
    import sys
    from flexivit_jax import train
    from flexivit_jax.checkpoints import step_health
    from flexivit_jax.checkpoints import manager
    denied = sys.argv.pop(1)
    def refuse(*args, **kwargs):
      raise PermissionError(13, "Permission denied", denied)
    manager.StateCheckpoints._read = refuse
    step_health.Storage.read_bytes = refuse
    sys.argv[0] = "flexivit_jax.train"
    train.main()
""")


def entries(workdir):
  return sorted(os.listdir(os.path.join(workdir, step_dirs.CHECKPOINT_SUBDIR)))


def copy_of(uninterrupted, tmp_path):
  workdir = tmp_path / "wd" / "demo"
  shutil.copytree(uninterrupted, workdir)
  return workdir


def cli(tmp_path, module, *args):
  """`python -m flexivit_jax.<module> ARGS`, from tmp_path as the user's current directory."""
  return subprocess.run([sys.executable, "-m", f"flexivit_jax.{module}", *args], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_unreadable_checkpoint_is_one_error_renaming_nothing_then_relative_restart_resumes(
    uninterrupted, tmp_path):
  workdir = copy_of(uninterrupted, tmp_path)
  before = entries(workdir)
  newest = workdir / step_dirs.CHECKPOINT_SUBDIR / step_dirs.step_dir_name(STEPS)
  if os.geteuid() != 0:
    os.chmod(newest, 0)
    try:
      proc = run(workdir, check=False)
    finally:
      os.chmod(newest, 0o755)
  else:  # root reads through chmod 000: refuse the reads in the trainer's process instead.
    cmd = [sys.executable, "-c", _DENY_READS, str(newest), *train_cmd(workdir)[3:]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "permission" in errors[0].lower() and "nothing was set aside" in errors[0], errors
  assert entries(workdir) == before
  # Readable again, restarted with a relative path from another directory: it resumes.
  proc = subprocess.run(train_cmd("wd/demo"), cwd=tmp_path, capture_output=True, text=True,
                        timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from {workdir / step_dirs.CHECKPOINT_SUBDIR} at step {STEPS}" in proc.stderr
  assert [r["step"] for r in train_rows(workdir)] == list(range(1, STEPS + 1))  # None again.
  assert entries(workdir) == before


@pytest.mark.slow
def test_damaged_step_set_aside_partial_ignored_listed_and_put_back(uninterrupted, tmp_path,
                                                                    capsys):
  workdir = copy_of(uninterrupted, tmp_path)
  root = workdir / step_dirs.CHECKPOINT_SUBDIR
  damaged = root / step_dirs.step_dir_name(STEPS)
  for data in (damaged / "state" / "ocdbt.process_0" / "d").iterdir():  # The array files.
    with open(data, "r+b") as f:
      f.truncate(data.stat().st_size // 3)
  sizes = {str(p.relative_to(damaged)): p.stat().st_size for p in damaged.rglob("*") if p.is_file()}
  partial = root / (step_dirs.step_dir_name(STEPS + 1) + ".orbax-checkpoint-tmp-1796514295")
  shutil.copytree(damaged, partial)  # A save killed before orbax committed it.
  (partial / "_CHECKPOINT_METADATA").unlink()
  listed = cli(tmp_path, "checkpoints", "wd/demo")
  assert listed.returncode == 0, listed.stderr[-3000:]
  states = {l.split()[0]: l for l in listed.stdout.splitlines()[1:]}
  assert states["12"].split()[1] == "complete", listed.stdout
  assert states["14"].split()[1] == "damaged" and "truncated" in states["14"], listed.stdout
  assert states["15"].split()[1] == "partial" and partial.name in states["15"], listed.stdout

  run(workdir)  # Steps 13 and 14 again, from step 12.
  aside = [n for n in entries(workdir) if n.startswith(damaged.name + step_health.CORRUPT_MARK)]
  assert len(aside) == 1 and not [n for n in entries(workdir) if n.startswith(partial.name[:14])
                                  and step_health.CORRUPT_MARK in n], entries(workdir)
  assert "truncated" in (root / aside[0] / step_health.REASON_FILE).read_text()
  assert_same_state(final_state(workdir), final_state(uninterrupted))

  listed = cli(tmp_path, "export", "wd/demo", "--list")
  assert listed.returncode == 0, listed.stderr[-3000:]
  rows = [l for l in listed.stdout.splitlines() if aside[0] in l]
  assert len(rows) == 1 and " set aside " in rows[0] and "truncated" in rows[0], listed.stdout
  capsys.readouterr()  # Only what the put-back prints (orbax may have logged warnings above).
  with pytest.raises(SystemExit) as refused:  # Never over the step written since.
    checkpoints_cli.main([str(workdir), "--restore", aside[0]])
  err = capsys.readouterr().err
  assert refused.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
  assert f"{damaged.name} exists" in err
  os.rename(damaged, tmp_path / "retrained")  # Moved away, the old step can come back.
  put = cli(tmp_path, "checkpoints", "wd/demo", "--restore", aside[0])
  assert put.returncode == 0 and put.stdout.strip() == f"put back {damaged.name}", put.stderr
  assert {str(p.relative_to(damaged)): p.stat().st_size
          for p in damaged.rglob("*") if p.is_file()} == sizes
  assert step_health.inspect_step(str(workdir), STEPS).state == step_health.DAMAGED
@pytest.mark.slow
def test_second_run_in_a_live_workdir_refuses_and_the_first_is_undisturbed(uninterrupted,
                                                                           tmp_path):
  """One workdir, one run: exit 2 with the lock line; the first run's files and losses stay."""
  from flexivit_jax.checkpoints import workdir_lock
  workdir = tmp_path / "wd"
  first = subprocess.Popen(train_cmd(workdir), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  lock = workdir / workdir_lock.LOCK_NAME
  deadline = time.time() + 600
  while not (lock.exists() and (workdir / "config.json").exists()) and first.poll() is None:
    assert time.time() < deadline, "the first run never took the lock"
    time.sleep(0.05)
  assert first.poll() is None, first.communicate()[1][-3000:]
  first.send_signal(signal.SIGSTOP)  # Holds the first run live (and its lock) however fast it is.
  try:
    second = run(workdir, "--config.lr=0.5", check=False)
  finally:
    first.send_signal(signal.SIGCONT)
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  assert second.returncode == 2, second.stderr[-3000:]
  line = second.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: workdir {workdir} is in use by pid {first.pid} on host "), line
  assert json.loads((workdir / "config.json").read_text())["lr"] != 0.5
  assert [r["train/loss"] for r in train_rows(workdir)] == \
      [r["train/loss"] for r in train_rows(uninterrupted)]
  assert not lock.exists()  # Released on a normal exit.

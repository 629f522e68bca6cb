"""The commands as a user types them: an installed package, run from an unrelated folder.

The package is installed non-editable (`pip install --target`, from a copy of
setup.py and flexivit_jax/ only: no configs/, no tests/) into a temporary
folder, and every step runs its console script (or `python -m`) with that
folder alone on PYTHONPATH, from a temporary current directory, with relative
paths: train -> evaluate (through a symlink) -> export (`.`) -> compare ->
an analysis that trains its own subject -> `launch/local.sh 2` into `--workdir .`.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import demos

DEMO = f"{REPO}/configs/demo_digits.py:runlocal"
QUIET = ["--config.progress_bar=False"]


def test_config_path_values_are_absolute_wherever_the_run_starts(tmp_path, monkeypatch):
  (tmp_path / "maps").mkdir()
  (tmp_path / "maps" / "digits.json").write_text(json.dumps(list(range(10))))
  tmp_path = tmp_path / "run"
  tmp_path.mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  c = demos.digits_config("runlocal")
  c.input.data_dir = "tfds"
  c.compile_cache_dir = "~/xla"
  c.evals.test.label_mapping = "../maps/digits.json"
  overrides = [("model_init", "wd/base.npz:params"), ("evals.test.data.data_dir", "./more/")]
  full = config_lib.complete(c, overrides)
  assert full.input.data_dir == f"{tmp_path}/tfds"
  assert full.compile_cache_dir == f"{tmp_path}/home/xla"
  assert full.evals.test.label_mapping == f"{tmp_path.parent}/maps/digits.json"
  assert full.model_init == f"{tmp_path}/wd/base.npz:params"
  assert full.evals.test.data.data_dir == f"{tmp_path}/more"
  shortcut = config_lib.complete(demos.digits_config("runlocal"),
                                 [("model_init", "FlexiViT-B i1k"), ("input.data_dir", "gs://b/d")])
  assert shortcut.model_init.startswith("gs://") and shortcut.input.data_dir == "gs://b/d"


def test_analysis_command_names_the_analyses(capsys):
  from flexivit_jax.analysis import __main__ as analysis_cli
  with pytest.raises(SystemExit) as e:
    analysis_cli.main(["flexivit-analysis", "ckaa", "--out", "x"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == (
      "error: unknown analysis 'ckaa'; choose one of cka, resize_methods, zero_shot")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The package installed non-editable into a temporary folder (not the venv)."""
  root = tmp_path_factory.mktemp("install")
  src = root / "src"
  src.mkdir()
  shutil.copy(REPO / "setup.py", src)
  shutil.copytree(REPO / "flexivit_jax", src / "flexivit_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(root / "site"), str(src)],
                 check=True, capture_output=True, text=True, timeout=300)
  return root / "site"


@pytest.fixture(scope="module")
def user(site, digits_data_dir, tmp_path_factory):
  """Runs a command as a user would: cwd an unrelated folder, only the install importable."""
  cwd = tmp_path_factory.mktemp("home")
  env = {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable,
         "HOME": str(cwd)}  # `~/x` typed where no shell expands it (argv, `--out=~/x`).

  def run(*argv, cwd=cwd, script=True):
    argv = [str(site / "bin" / argv[0]), *argv[1:]] if script else [sys.executable, *argv]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout
  run.cwd, run.env = cwd, env
  return run


@pytest.fixture(scope="module")
def trained(user):
  """One tiny training run in the relative workdir `wd/demo`, shared by the steps below."""
  user("flexivit-train", "--config", DEMO, "--workdir", "wd/demo", *QUIET)
  return user.cwd / "wd" / "demo"


@pytest.mark.slow
def test_the_installed_package_is_what_runs(user, site):
  where = user("-c", "import flexivit_jax; print(flexivit_jax.__file__)", script=False)
  assert where.strip() == str(site / "flexivit_jax" / "__init__.py")


@pytest.mark.slow
def test_train_evaluate_export_compare_with_relative_paths(user, trained):
  assert (trained / "config.json").exists() and not (trained / "run.lock").exists()
  os.symlink("wd/demo", user.cwd / "link")
  user("flexivit-evaluate", "--checkpoint", "link", "--out", "ev/demo")
  assert json.loads((user.cwd / "ev" / "demo" / "eval.json").read_text())
  user("flexivit-export", ".", "../demo.npz", cwd=trained)
  assert (user.cwd / "wd" / "demo.npz").stat().st_size > 0
  user("flexivit-export", "~/wd/demo", "~/home.npz", cwd=trained)
  with np.load(user.cwd / "home.npz") as a, np.load(user.cwd / "wd" / "demo.npz") as b:
    assert sorted(a.files) == sorted(b.files) and all((a[k] == b[k]).all() for k in a.files)
  out = user("-m", "flexivit_jax.compare", "wd/demo", "link", "--out", "cmp/demo",
             script=False)
  assert "demo" in out and "link" in out  # One column per run, named as typed.
  assert (user.cwd / "cmp" / "demo" / "compare.png").stat().st_size > 0
  assert "link" in (user.cwd / "cmp" / "demo" / "compare.txt").read_text()


@pytest.mark.slow
def test_an_analysis_trains_its_subject_without_a_source_checkout(user):
  """subjects used to read the repo's configs/ folder, which an install does not have."""
  user("flexivit-analysis", "resize_methods", "--runlocal", "--factors", "1,2", "--out", "an/rm")
  results = json.loads((user.cwd / "an" / "rm" / "results.json").read_text())
  assert "pi" in results and set(results["pi"]) == {"1.0", "2.0"}


@pytest.mark.slow
def test_local_sh_two_processes_into_workdir_dot(user):
  """N processes of one run share the workdir (and its lock); `--workdir .` is the cwd."""
  workdir = user.cwd / "wd" / "p2"
  workdir.mkdir(parents=True)
  proc = subprocess.run([str(REPO / "launch" / "local.sh"), "2", "--", "--config", DEMO,
                         "--workdir", ".", "--config.total_steps=2", *QUIET],
                        cwd=workdir, env=user.env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "config.json").exists() and (workdir / "checkpoints").is_dir()
  assert not (workdir / "run.lock").exists()

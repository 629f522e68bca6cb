"""Shared fixtures: the reference files from big_vision (copied from ../shared/reference)."""
import os
import pathlib
import tempfile

# The suite compiles the same small programs many times, in-process and in the CLI runs it
# starts: one XLA persistent compilation cache for the whole session (every xdist worker
# and every subprocess inherits it) skips the repeats. Executables are identical either
# way; a run's own config.compile_cache_dir still takes precedence.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"flexivit-tests-xla-{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest
from flax import traverse_util

DATA = pathlib.Path(__file__).parent / "testdata"
REF_SEQHWS = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)
REF_MODEL = dict(num_classes=10, width=48, depth=2, num_heads=3, mlp_dim=96,
                 patch_size=(32, 32), posemb_size=(7, 7))


@pytest.fixture(scope="session")
def ref_outputs():
  """Reference inputs/outputs of big_vision on the bundled checkpoint."""
  with np.load(DATA / "bv_gap.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def ref_params():
  """The reference checkpoint as a nested dict, read with plain numpy."""
  with np.load(DATA / "bv_gap_ckpt.npz") as f:
    return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")


REPO = pathlib.Path(__file__).parent.parent
DEMO_CONFIG = str(REPO / "configs" / "demo_digits.py")


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
  """A data dir holding the bundled digits dataset, built once for the session.

  Exported as FLEXIVIT_DATA_DIR so trainer runs (and their subprocesses) use it.
  """
  import os
  from flexivit_jax import data
  path = str(tmp_path_factory.mktemp("tfds"))
  data.ensure_built("sklearn_digits", path)
  os.environ["FLEXIVIT_DATA_DIR"] = path
  return path


@pytest.fixture()
def image_folder(tmp_path):
  """A tiny ImageFolder of PNGs: root/{train: 5, test: 3}/{cat, dog}/<i>.png, (10 + i) x 12."""
  import tensorflow as tf
  root = tmp_path / "imgs"
  rng = np.random.default_rng(0)
  for split, n in (("train", 5), ("test", 3)):
    for label in ("cat", "dog"):
      d = root / split / label
      d.mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 256, (10 + i, 12, 3), np.uint8)
        (d / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
  return str(root)

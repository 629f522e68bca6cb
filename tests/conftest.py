"""Shared fixtures and helpers: the big_vision reference model and its files, configs with
overrides, the bundled digits data."""
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
# The reference: a small GAP ViT that big_vision ran (copied from ../shared/reference).
REF_CKPT = DATA / "bv_gap_ckpt.npz"  # Its checkpoint, in big_vision's npz format.
REF_IO = DATA / "bv_gap.npz"  # Its inputs and outputs: images, logits, pre_logits, pi_resize.
REF_SEQHWS = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)  # The grids REF_IO holds logits of.
REF_MODEL = dict(num_classes=10, width=48, depth=2, num_heads=3, mlp_dim=96,
                 patch_size=(32, 32), posemb_size=(7, 7), pool_type="gap")


def reference_model(**fields):
  """The reference FlexiViT, with `fields` changed (variants of it load its params)."""
  from flexivit_jax.models.vit import FlexiViT
  return FlexiViT(**{**REF_MODEL, **fields})


@pytest.fixture(scope="session")
def ref_outputs():
  """Reference inputs/outputs of big_vision on the bundled checkpoint."""
  with np.load(REF_IO) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def ref_params():
  """The reference checkpoint as a nested dict, read with plain numpy."""
  with np.load(REF_CKPT) as f:
    return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")


REPO = pathlib.Path(__file__).parent.parent
DEMO_CONFIG = str(REPO / "configs" / "demo_digits.py")


def user_config(spec: str = "demo_digits.py:runlocal", **overrides) -> dict:
  """A config file's dict before completion, with overrides by dotted key.

  `spec`: `NAME.py[:arg]` under configs/, or a path. `user_config(**{"schedule.warmup_steps":
  1})` sets one nested key (parents are made as needed); a plain key replaces the whole value.
  """
  from flexivit_jax.training import config as config_lib
  path = spec if os.sep in spec else str(REPO / "configs" / spec)
  c = config_lib.load_config_file(path).to_dict()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return c


def load_config(spec: str = "demo_digits.py:runlocal", **overrides):
  """`user_config(spec, **overrides)` completed and locked (a ConfigDict): what a run uses."""
  from flexivit_jax.training import config as config_lib
  return config_lib.complete(user_config(spec, **overrides))


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
  """A data dir holding the bundled digits dataset, built once for the session.

  Exported as FLEXIVIT_DATA_DIR so trainer runs (and their subprocesses) use it.
  """
  from flexivit_jax import data
  path = str(tmp_path_factory.mktemp("tfds"))
  data.ensure_built("sklearn_digits", path)
  os.environ["FLEXIVIT_DATA_DIR"] = path
  return path


CLUTTERED_SMALL = "cluttered_digits/small"  # The bundled cluttered digits at 16 px.


@pytest.fixture(scope="session")
def cluttered_small_dir(tmp_path_factory):
  """A data dir holding the bundled `cluttered_digits/small`, built once for the session."""
  from flexivit_jax.data import sources
  return sources.ensure_built(CLUTTERED_SMALL, str(tmp_path_factory.mktemp("cluttered")))


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

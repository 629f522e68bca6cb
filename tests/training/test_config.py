"""The config schema: command-line overrides of free-form dicts, and validation that never
fails with anything but a one-line UserError naming the key."""
import pytest

from conftest import DEMO_CONFIG
from flexivit_jax.errors import UserError
from flexivit_jax.training import config as config_lib

BASE = config_lib.load_config_file(f"{DEMO_CONFIG}:runlocal").to_dict()
EVAL = "{'data': {'name': 'sklearn_digits', 'split': 'test'}, 'pp': 'keep', 'log_steps': 2}"


def test_a_literal_dict_override_is_parsed():
  config = config_lib.complete(BASE, [("evals.extra", EVAL), ("input", "{'batch_size': 8}")])
  assert config.evals.extra.data.split == "test" and config.evals.extra.log_steps == 2
  assert config.input.batch_size == 8 and config.input.pp == BASE["input"]["pp"]  # Merged.


@pytest.mark.parametrize("key,text,message", [
    ("evals.extra", "{'data': dict(name='x'), 'pp': 'keep'}", "'evals.extra'.*not a Python literal"),
    ("evals.extra", "extra", "'evals.extra' must be a dict, got 'extra'"),
    ("evals.extra", "[1,", "'evals.extra'.*not a Python literal"),
    ("distill.teachers.t", "x", "'distill.teachers.t' must be a dict"),
    ("model", "None", "'model' must be a dict"),
    ("input", "{'data': 3}", "'input.data' must be a dict"),
    ("flexi", "(1,", "'flexi'.*not a Python literal"),
])
def test_a_malformed_override_is_a_one_line_error_naming_the_key(key, text, message):
  with pytest.raises(UserError, match=message) as info:
    config_lib.complete(BASE, [(key, text)])
  assert "\n" not in str(info.value)


WRONG_VALUES = ["x", "", 0, -1, 2.5, float("nan"), None, True, (1,), [1, "a"], {"a": 1}, {}]
# Keys a config may hold without the defaults knowing them, to fuzz one level down too.
FREE_LEAVES = ["model.width", "model.num_heads", "flexi.seqhw", "flexi.seqhw.v", "flexi.seqhw.p",
               "evals.new", "evals.test.data", "distill.teachers.t",
               "model_load.kernel", "model_load.dont_load", "schedule.steps", "schedule.min_lr",
               "mixup.p", "mixup.n", "mesh.data", "optax.b1"]


def _with(name, value):
  config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
  *parents, leaf = name.split(".")
  node = config
  for part in parents:
    node[part] = dict(node.get(part) or {})
    node = node[part]
  node[leaf] = value
  return config


@pytest.mark.parametrize("name", sorted(config_lib.default_config().keys()) + FREE_LEAVES)
def test_validation_raises_only_user_errors(name):
  """Wrong types at every top-level key (and some below): a UserError or a valid config."""
  for value in WRONG_VALUES:
    for complete in (lambda: config_lib.complete(_with(name, value)),
                     lambda: config_lib.complete(BASE, [(name, repr(value))])):
      try:
        complete()
      except UserError as e:
        assert "\n" not in str(e), (name, value, e)

"""The config schema: every config file completes, errors name the key, overrides of free-form
dicts parse, and validation never fails with anything but a one-line UserError."""
import jax
import jax.numpy as jnp
import pytest

import flexivit_jax
from conftest import DEMO_CONFIG, REPO, load_config, user_config
from flexivit_jax.errors import UserError
from flexivit_jax.models import vit
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


@pytest.mark.parametrize("overrides,message", [
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"input.batch_sise": 3}, "unknown config key 'input.batch_sise'"),
    ({"model.widht": 3}, r"unknown config key 'model.widht' \(did you mean 'width'\?\)"),
    ({"model.width": "wide"}, "bad value for config key 'model.width': 'wide' is not an int"),
    ({"model.variant": "Q"}, "unknown ViT variant 'Q'"),
    ({"model_load": dict(dontload=1)}, "unknown config key 'model_load.dontload'.*dont_load"),
    ({"input.data": dict(name="x", splt="test")}, "unknown config key 'input.data.splt'"),
    ({"mesh": dict(tensor=2)}, "unknown config key 'mesh.tensor'"),
    ({"distill.teachers": {"t": dict(model={}, init="x", modle=1)}},
     "unknown config key 'distill.teachers.t.modle'"),
    ({"lr": float("nan")}, "'lr' must be a finite number >= 0, got nan"),
    ({"lr": -1.0}, "'lr' must be a finite number >= 0"),
    ({"wd": float("inf")}, "'wd' must be a finite number >= 0, got inf"),
    ({"progress_bar": "maybe"}, "'progress_bar' is 'maybe'"),
    ({"progress": "quiet"}, "'progress' is 'quiet'; allowed: auto, bar, lines, none"),
    ({"progress": "lines", "progress_bar": False}, "'progress'='lines' and 'progress_bar'=False"),
    ({"evals.test.log_steps": 0}, "'log_steps' must be a positive int"),
    ({"loss": "hinge"}, "unknown config value loss='hinge'"),
    ({"flexi.seqhws": dict(v=(1,))}, r"unknown config key 'flexi.seqhws' \(did you mean 'seqhw'"),
    ({"total_epochs": 2.0}, "set exactly one of config keys 'total_steps' and 'total_epochs'"),
    ({"ckpt_steps": 0}, "'ckpt_steps' must be a positive int"),
    ({"lr": "fast"}, "bad value for config key 'lr'"),
    ({"param_sharding": "zero3"}, "unknown param_sharding 'zero3'"),
    ({"evals.val": dict(data=dict(name="x"), pp="keep", bs=3)},
     "unknown config key 'evals.val.bs'"),
    ({"evals.val": dict(data=dict(name="x"), pp="keep", log_percent=2.0)},
     r"evals.val.log_percent=2.0 must be a fraction"),
    ({"mixup": dict(p=0.5, n=3)}, "mixup n=3, fold_in=None: this trainer mixes n=2"),
])
def test_config_errors_name_the_key(overrides, message):
  user = user_config(**overrides)
  with pytest.raises(ValueError, match=message):
    config_lib.complete(user)


@pytest.mark.parametrize("key,text,message", [
    ("total_steps", "abc", "config key 'total_steps': 'abc' is not an int"),
    ("lr", "fast", "config key 'lr': 'fast' is not a float"),
    ("aot_compile", "maybe", "config key 'aot_compile': 'maybe' is not a bool"),
    ("totl_steps", "3", r"unknown config key 'totl_steps' \(did you mean 'total_steps'"),
    ("model.widht", "3", r"unknown config key 'model.widht' \(did you mean 'width'"),
    ("input.data.nmae", "x", r"unknown config key 'input.data.nmae' \(did you mean 'name'"),
    ("evals.test.bs", "3", "unknown config key 'evals.test.bs'"),
    ("seed.x", "3", "config key 'seed' is 0, not a dict"),
])
def test_command_line_override_errors_name_the_key(key, text, message):
  with pytest.raises(ValueError, match=message):
    config_lib.complete(user_config(), [(key, text)])


def test_any_model_field_can_be_set_from_the_command_line():
  config = config_lib.complete(user_config(), [
      ("model.variant", "S"), ("model.posemb", "sincos2d"), ("model.patch_size", "(4, 4)"),
      ("lr", "1"), ("progress_bar", "False"), ("evals.test.log_steps", "2"),
      ("flexi.seqhw.v", "(2, 4)"), ("input.data.split", "train[:50%]")])
  assert config.model.variant == "S" and config.model.patch_size == (4, 4)
  assert config.lr == 1.0 and isinstance(config.lr, float) and config.progress_bar is False
  assert config.progress == "none"  # The older key still works: False is no progress shown.
  assert config.evals.test.log_steps == 2 and config.input.data.split == "train[:50%]"
  assert vit.from_config(config.model).hparams()["width"] == 16  # Explicit beats variant.
  with pytest.raises(AttributeError):  # Still locked afterwards.
    config.model.widht = 3


def test_config_argument_errors():
  with pytest.raises(ValueError, match=r"unknown config argument 'runlcal' \(did you mean "
                     "'runlocal'"):
    config_lib.parse_arg("runlcal", runlocal=False)
  with pytest.raises(ValueError, match="config argument 'steps': 'ten' is not an int"):
    config_lib.parse_arg("steps=ten", steps=3)
  assert config_lib.parse_arg("steps=10,runlocal", steps=3, runlocal=False).to_dict() == dict(
      steps=10, runlocal=True)


def test_completed_config_is_locked():
  config = load_config()
  with pytest.raises(AttributeError):
    config.totl_steps = 3


CONFIG_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.py"))


def _has_baseline(path) -> bool:
  return "baseline=" in (REPO / path).read_text()


@pytest.mark.parametrize("spec", [f"{f}{arg}" for f in CONFIG_FILES
                                  for arg in ("", ":runlocal", ":baseline")
                                  if arg != ":baseline" or _has_baseline(f)])
def test_every_config_file_completes_and_builds(spec):
  config = load_config(str(REPO / spec))
  model = vit.from_config(config.model)
  flexis = flexivit_jax.training.flexi.FlexiSampler(config.flexi, seed=0, total_steps=100).all_values()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)),
                                             **flexis[0]))
  assert "embedding" in shapes["params"]


def test_teachers_run_in_the_students_dtype_mm_unless_set():
  teacher = lambda **kw: {"model": dict(width=16, depth=1, num_heads=2, mlp_dim=32,  # noqa: E731
                                        num_classes=10, **kw), "init": "/x.npz"}
  c = load_config(**{"model.dtype_mm": "bfloat16",
                     "distill.teachers": {"a": teacher(), "b": teacher(dtype_mm="float32")}})
  assert c.distill.teachers.a.model.dtype_mm == "bfloat16"
  assert c.distill.teachers.b.model.dtype_mm == "float32"
  assert "dtype_mm" not in load_config(**{"distill.teachers": {"a": teacher()}}).distill.teachers.a.model

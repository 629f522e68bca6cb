"""big_vision's general pp ops against hand-built expectations, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from flexivit_jax.data import preprocess
from flexivit_jax.errors import UserError
from tests.data.test_ops import run_both, run_eager, run_tfdata, seed

DTYPES = (np.uint8, np.int32, np.float32)


def test_registered_with_the_rest():
  for name in ("drop", "squeeze_last_dim", "concat", "pad_to_shape", "flatten", "reshape",
               "setdefault", "choice", "lookup"):
    assert name in preprocess.known_ops()


def test_drop_removes_only_the_named_keys():
  ex = {"image": np.zeros((2, 2, 3), np.uint8), "labels": np.int32(3), "id": np.int32(7)}
  out = run_both('drop("id", "absent")', ex)
  assert sorted(out) == ["image", "labels"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 1), (3, 5, 1), (1,)])
def test_squeeze_last_dim(dtype, shape):
  x = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
  out = run_both('squeeze_last_dim(key="x")', {"x": x})["x"]
  np.testing.assert_array_equal(out, x[..., 0])
  assert out.dtype == dtype


@pytest.mark.parametrize("axis", [0, -1])
def test_concat(axis):
  a, b = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
  out = run_both(f'concat(["a", "b"], outkey="c", axis={axis})', {"a": a, "b": b})
  np.testing.assert_array_equal(out["c"], np.concatenate([a, b], axis))
  out = run_both('concat(["a", "b"])', {"a": a, "b": b})
  assert out["a"].shape == (2, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,target", [((2, 3), (4, 5)), ((5, 7, 3), (6, None, 3)),
                                          ((3,), (3,))])
@pytest.mark.parametrize("where", ["after", "before"])
def test_pad_to_shape(dtype, shape, target, where):
  x = (np.arange(np.prod(shape)).reshape(shape) + 1).astype(dtype)
  full = tuple(s if t is None else t for s, t in zip(shape, target))
  want = np.full(full, 9, dtype)
  window = tuple(slice(0, s) if where == "after" else slice(f - s, f)
                 for s, f in zip(shape, full))
  want[window] = x
  out = run_both(f'pad_to_shape({list(target)!r}, pad_value=9, where="{where}", key="x")',
                 {"x": x})["x"]
  np.testing.assert_array_equal(out, want)
  assert out.dtype == dtype


def test_pad_to_shape_rejects_too_large_and_bad_where():
  with pytest.raises(tf.errors.InvalidArgumentError):
    run_eager('pad_to_shape([2, 2], key="x")', {"x": np.zeros((3, 2), np.float32)})
  with pytest.raises(UserError, match="where"):
    preprocess.get_pp_fn('pad_to_shape([2], where="middle")')


def test_flatten_nested_dicts():
  ex = {"a": {"b": tf.constant(1), "c": {"d": tf.constant([2, 3])}}, "e": tf.constant(4.0)}
  out = preprocess.get_pp_fn("flatten")(ex)
  assert sorted(out) == ["a/b", "a/c/d", "e"]
  np.testing.assert_array_equal(out["a/c/d"].numpy(), [2, 3])
  ds = tf.data.Dataset.from_tensors(ex).map(preprocess.get_pp_fn('flatten(separator=".")'))
  assert sorted(next(iter(ds.as_numpy_iterator()))) == ["a.b", "a.c.d", "e"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,new", [((4, 6), [3, 8]), ((2, 3, 4), [-1]), ((6,), [2, -1, 1])])
def test_reshape(dtype, shape, new):
  x = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
  out = run_both(f'reshape({new!r}, key="x")', {"x": x})["x"]
  np.testing.assert_array_equal(out, x.reshape(new))


def test_setdefault_only_where_missing():
  out = run_both('setdefault("labels", 5)', {"image": np.zeros((1, 1, 3), np.uint8)})
  assert out["labels"] == 5
  out = run_both('setdefault("labels", 5)', {"labels": np.int64(2)})
  assert out["labels"] == 2
  out = run_both('setdefault("text", "none")', {"labels": np.int64(2)})
  assert out["text"] == b"none"


def test_choice_single_and_n_without_replacement():
  x = np.arange(10, 20, dtype=np.int32)
  picks = {int(run_both('choice(key="x")', {"x": x, "_seed": seed(s)})["x"]) for s in range(40)}
  assert picks <= set(x.tolist()) and len(picks) > 5
  for s in range(5):
    out = run_both('choice(n=4, key="x")', {"x": x, "_seed": seed(s)})["x"]
    assert out.shape == (4,) and len(set(out.tolist())) == 4 and set(out.tolist()) <= set(x)


def test_choice_same_indices_across_keys_and_fewer_ok():
  x = np.arange(6, dtype=np.int32)
  y = np.stack([x * 10, x * 10 + 1], axis=1).astype(np.float32)
  out = run_both('choice(n=3, key=["x", "y"])', {"x": x, "y": y, "_seed": seed(3)})
  np.testing.assert_array_equal(out["y"][:, 0], out["x"] * 10)
  out = run_both('choice(n=9, key="x", fewer_ok=True)', {"x": x, "_seed": seed(1)})["x"]
  assert sorted(out.tolist()) == list(range(6))
  with pytest.raises(tf.errors.InvalidArgumentError):
    run_eager('choice(n=9, key="x")', {"x": x, "_seed": seed(1)})
  with pytest.raises(UserError, match="key"):
    preprocess.get_pp_fn("choice(n=2)")


def test_lookup_dict_and_file(tmp_path):
  ex = {"labels": np.array([b"cat", b"dog", b"emu"])}
  out = run_both('lookup({"cat": 3, "dog": 5}, default=-1)', ex)["labels"]
  np.testing.assert_array_equal(out, [3, 5, -1])
  classes = tmp_path / "classes.txt"
  classes.write_text("dog\ncat\nemu\n")
  out = run_both(f'lookup("{classes}", outkey="y")', ex)["y"]
  np.testing.assert_array_equal(out, [1, 0, 2])
  pairs = tmp_path / "pairs.csv"
  pairs.write_text("cat,7\ndog,8\n")
  out = run_tfdata(f'lookup("{pairs}", sep=",")', ex)["labels"]
  np.testing.assert_array_equal(out, [7, 8, -1])
  with pytest.raises(UserError, match="does not exist"):
    preprocess.get_pp_fn(f'lookup("{tmp_path}/none.txt")')

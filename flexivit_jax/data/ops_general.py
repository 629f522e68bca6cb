"""big_vision's general pp ops (keys, shapes, choices, lookups), registered by name.

They act on any entry of an example, not only on images: the vocabulary that transfer
and multi-modal configs use to drop, pad, reshape and pick entries. Each factory checks
its arguments when the pp string is parsed; the returned function acts on one example.
"""
from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from flexivit_jax.data.ops import _on_image as on_key
from flexivit_jax.data.preprocess import register
from flexivit_jax.errors import UserError

SINGLE = "single"  # choice(n="single") picks one element and drops the leading axis.
PAD_WHERE = ("before", "after")


def _key_names(keys, op: str) -> tuple:
  if isinstance(keys, str):
    keys = (keys,)
  if not keys or not all(isinstance(k, str) for k in keys):
    raise UserError(f"{op}() takes key names (str), got {keys!r}")
  return tuple(keys)


def _shape(shape, op: str) -> tuple:
  if not isinstance(shape, (list, tuple)) or not all(
      s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= -1) for s in shape):
    raise UserError(f"{op}: the shape must be a list of ints (or None), got {shape!r}")
  return tuple(shape)


@register("drop")
def drop(*keys):
  """Removes the given keys (absent keys are ignored), the converse of `keep`."""
  keys = _key_names(keys, "drop")

  def fn(data):
    return {k: v for k, v in data.items() if k not in keys}

  return fn


@register("squeeze_last_dim")
def squeeze_last_dim(key="image", inkey=None, outkey=None):
  """Drops a trailing axis of size 1 (e.g. (N, 1) labels or (H, W, 1) masks)."""
  return on_key(key, inkey, outkey, lambda x: tf.squeeze(x, axis=-1))


@register("concat")
def concat(inkeys, outkey=None, axis=-1):
  """Concatenates the entries `inkeys` along `axis` into `outkey` (default: inkeys[0])."""
  inkeys = _key_names(inkeys, "concat")
  if not isinstance(axis, int) or isinstance(axis, bool):
    raise UserError(f"concat: axis must be an int, got {axis!r}")

  def fn(data):
    data = dict(data)
    data[outkey or inkeys[0]] = tf.concat([data[k] for k in inkeys], axis=axis)
    return data

  return fn


@register("pad_to_shape")
def pad_to_shape(shape, pad_value=0, where="after", key="image", inkey=None, outkey=None):
  """Pads with `pad_value` up to `shape` (None: that axis is kept) before or after the
  values; an entry larger than `shape` is an error, not a crop."""
  shape = _shape(shape, "pad_to_shape")
  if where not in PAD_WHERE:
    raise UserError(f"pad_to_shape: where={where!r}; allowed: {', '.join(PAD_WHERE)}")

  def fn(x):
    if x.shape.rank is not None and x.shape.rank != len(shape):
      raise ValueError(f"pad_to_shape{shape}: the entry has rank {x.shape.rank}")
    current = tf.shape(x)
    target = tf.stack([current[i] if s is None else s for i, s in enumerate(shape)])
    missing = target - current
    tf.debugging.assert_non_negative(missing, message=f"pad_to_shape{shape}: entry too large")
    zeros = tf.zeros_like(missing)
    pads = tf.stack([missing, zeros] if where == "before" else [zeros, missing], axis=1)
    out = tf.pad(x, pads, constant_values=tf.cast(pad_value, x.dtype))
    return tf.ensure_shape(out, shape)

  return on_key(key, inkey, outkey, fn)


@register("flatten")
def flatten(separator="/"):
  """Nested dicts become flat keys joined by `separator` ({"a": {"b": x}} -> {"a/b": x})."""

  def walk(data, prefix, out):
    for k, v in data.items():
      name = f"{prefix}{separator}{k}" if prefix else k
      if isinstance(v, dict):
        walk(v, name, out)
      else:
        out[name] = v
    return out

  return lambda data: walk(data, "", {})


@register("reshape")
def reshape(new_shape, key="image", inkey=None, outkey=None):
  """tf.reshape to `new_shape` (one entry may be -1)."""
  new_shape = _shape(new_shape, "reshape")
  if None in new_shape:
    raise UserError(f"reshape: use -1, not None, for the free axis in {new_shape!r}")
  return on_key(key, inkey, outkey, lambda x: tf.reshape(x, new_shape))


@register("setdefault")
def setdefault(key, value):
  """Sets `key` to the constant `value` where the example has no such entry."""
  if not isinstance(key, str):
    raise UserError(f"setdefault: key must be a str, got {key!r}")

  def fn(data):
    data = dict(data)
    if key not in data:
      data[key] = tf.constant(value)
    return data

  return fn


def _choose(x, indices, single: bool):
  return x[indices[0]] if single else tf.gather(x, indices)


@register("choice", random=True)
def choice(n=SINGLE, key=None, fewer_ok=False, inkey=None, outkey=None):
  """Picks random elements of an entry's leading axis, without replacement.

  `n="single"` picks one and drops the axis; an int `n` picks n (in random order),
  or all there are when fewer and `fewer_ok`. `key` may name several entries, which
  are picked at the same indices (e.g. captions and their ids).
  """
  if not (n == SINGLE or (isinstance(n, int) and not isinstance(n, bool) and n > 0)):
    raise UserError(f"choice: n must be 'single' or a positive int, got {n!r}")
  if key is None and inkey is None:
    raise UserError("choice: give the key (or inkey) of the entry to pick from")
  inkeys = _key_names(inkey or key, "choice")
  outkeys = _key_names(outkey or inkey or key, "choice")
  if len(outkeys) != len(inkeys):
    raise UserError(f"choice: {len(inkeys)} inkeys but {len(outkeys)} outkeys")
  single = n == SINGLE

  def fn(data, seed):
    data = dict(data)
    size = tf.shape(data[inkeys[0]])[0]
    take = 1 if single else n
    if not fewer_ok:
      tf.debugging.assert_greater_equal(size, take, message=f"choice(n={n}): too few elements")
    order = tf.random.experimental.stateless_shuffle(tf.range(size), seed)
    indices = order[:take]
    picked = {k: _choose(data[k], indices, single) for k in inkeys}
    for k_in, k_out in zip(inkeys, outkeys):
      data[k_out] = picked[k_in]
    return data

  return fn


def _read_mapping(path: str, sep) -> dict:
  with tf.io.gfile.GFile(path) as f:
    rows = [line.rstrip("\n") for line in f if line.strip()]
  if sep is None:  # One key per line, mapped to its line number (a class list).
    return {row: i for i, row in enumerate(rows)}
  pairs = [row.split(sep, 1) for row in rows]
  if any(len(p) != 2 for p in pairs):
    raise UserError(f"lookup: every line of {path!r} must be KEY{sep}VALUE")
  return {k: int(v) for k, v in pairs}


@register("lookup")
def lookup(mapping, key="labels", default=-1, sep=None, inkey=None, outkey=None):
  """Maps string entries to ints through `mapping`: a dict literal, or a file with one key
  per line (-> its line number) or `KEY<sep>VALUE` lines; unknown keys give `default`."""
  if isinstance(mapping, str):
    if not tf.io.gfile.exists(mapping):
      raise UserError(f"lookup: mapping file {mapping!r} does not exist")
    table: Any = _read_mapping(os.fspath(mapping), sep)
  elif isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, int)
                                         for k, v in mapping.items()):
    table = mapping
  else:
    raise UserError(f"lookup: mapping must be a {{str: int}} dict or a file path, got {mapping!r}")
  if not table:
    raise UserError("lookup: the mapping is empty")
  static = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(list(table), list(table.values()),
                                          tf.string, tf.int64), default_value=default)
  return on_key(key, inkey, outkey, static.lookup)

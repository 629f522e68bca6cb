"""pp strings ("op1|op2(args)|..."): the registry of ops by name, the parser, and the composed function.

Random ops receive a stateless seed (int64 [2]): the composed pp function derives it from
the example's ``_seed`` entry by folding in the op's position in the pp string, so every
example is preprocessed deterministically and every random op has its own sub-seed. The
ops register themselves when their modules (`OP_MODULES`) are imported, which the
first look-up in the registry does.
"""
from __future__ import annotations

import ast
import importlib
import dataclasses
import inspect
from typing import Callable

import tensorflow as tf

from flexivit_jax.errors import UserError

SEED_KEY = "_seed"


@dataclasses.dataclass(frozen=True)
class _OpSpec:
  name: str
  factory: Callable[..., Callable]
  random: bool


_REGISTRY: dict[str, _OpSpec] = {}
# The modules whose import registers the bundled ops: the flexi configs' ops, the rest of
# big_vision's image and general vocabulary, then the dense (image + per-pixel mask) ops.
OP_MODULES = ("flexivit_jax.data.ops", "flexivit_jax.data.ops_image",
              "flexivit_jax.data.ops_general", "flexivit_jax.data.ops_dense")


def _registry() -> dict[str, _OpSpec]:
  """The ops by name, the bundled ones included (they register when OP_MODULES load)."""
  for module in OP_MODULES:
    importlib.import_module(module)
  return _REGISTRY


def register(name: str, *, random: bool = False):
  """Registers an op factory under `name` (random ops get a seed argument)."""

  def wrap(factory):
    if name in _REGISTRY:
      raise RuntimeError(f"pp op {name!r} is already registered")
    _REGISTRY[name] = _OpSpec(name, factory, random)
    return factory

  return wrap


def known_ops() -> list[str]:
  return sorted(_registry())


def _allowed_args(factory) -> str:
  return str(inspect.signature(factory))


# ---------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------


def _split_ops(pp: str) -> list[str]:
  """Splits on '|' outside of brackets and quotes."""
  parts, depth, quote, cur = [], 0, None, []
  for ch in pp:
    if quote:
      if ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return [p.strip() for p in parts if p.strip()]


def _parse_op(spec: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(spec if "(" in spec else spec + "()", mode="eval").body
  except SyntaxError as e:
    raise UserError(f"Cannot parse pp op {spec!r}: {e}") from None
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise UserError(f"Cannot parse pp op {spec!r}: expected name(args...)")
  name = node.func.id
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (ValueError, TypeError, SyntaxError) as e:
    raise UserError(
        f"pp op {name!r}: arguments must be python literals, got {spec!r} "
        f"({e})") from None
  if any(k is None for k in kwargs):
    raise UserError(f"pp op {name!r}: **kwargs are not supported in {spec!r}")
  return name, args, kwargs


def parse(pp: str) -> list[tuple[_OpSpec, Callable]]:
  """Parses and instantiates every op; all errors surface here (ValueError)."""
  ops = []
  for spec in _split_ops(pp):
    name, args, kwargs = _parse_op(spec)
    if name not in _registry():
      raise UserError(
          f"Unknown pp op {name!r} in {spec!r}. Known ops: {known_ops()}")
    op = _REGISTRY[name]
    try:
      inspect.signature(op.factory).bind(*args, **kwargs)
    except TypeError as e:
      raise UserError(
          f"pp op {name!r} got invalid arguments {spec!r} ({e}). Allowed "
          f"arguments: {name}{_allowed_args(op.factory)}") from None
    try:
      fn = op.factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
      raise UserError(
          f"pp op {name!r} rejected its arguments in {spec!r}: {e}. Allowed "
          f"arguments: {name}{_allowed_args(op.factory)}") from None
    ops.append((op, fn))
  return ops


def get_pp_fn(pp: str) -> Callable[[dict], dict]:
  """Returns the composed preprocessing function of a pp string.

  The returned function maps an example dict of tf tensors to a new dict. Random
  ops read the int64[2] seed at key `_seed`; if it is missing a random seed is
  drawn (non-deterministic). Parsing errors raise ValueError immediately.
  """
  ops = parse(pp)

  def pp_fn(data: dict) -> dict:
    data = dict(data)
    base_seed = data.get(SEED_KEY)
    if base_seed is None and any(op.random for op, _ in ops):
      base_seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    for pos, (op, fn) in enumerate(ops):
      if op.random:
        seed = tf.random.experimental.stateless_fold_in(
            tf.cast(base_seed, tf.int64), pos)
        data = fn(data, seed)
      else:
        data = fn(data)
    return data

  return pp_fn


def op_docs() -> dict[str, str]:
  """name -> signature, for documentation / error messages."""
  return {n: f"{n}{_allowed_args(s.factory)}" for n, s in sorted(
      _registry().items())}

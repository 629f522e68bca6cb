"""Checks of the config keys that several evaluators read, so each says the same thing."""
from __future__ import annotations

from typing import Any, Mapping

from flexivit_jax.errors import UserError


def check_data_and_pp(name: str, cfg: Mapping[str, Any], data_is: str = "") -> None:
  """`evals.<name>` must give `data` (described by `data_is`, e.g. " (the queries)") and `pp`."""
  if "data" not in cfg or "pp" not in cfg:
    raise UserError(f"{name} needs 'data'{data_is} and 'pp'")


def check_positive_int(value: Any, where: str) -> None:
  """`value` (the config key `where`) is an int above 0 (and not a bool)."""
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UserError(f"{where} must be a positive int, got {value!r}")


def check_positive_batch_size(name: str, batch_size: Any) -> None:
  """`evals.<name>.batch_size`, when given, is an int above 0 (and not a bool)."""
  check_positive_int(batch_size, f"{name}.batch_size")


def check_positive_ints(values: Any, where: str) -> None:
  """`values` is a non-empty list (or tuple) of ints above 0 (and not bools)."""
  if not isinstance(values, (list, tuple)) or not values or not all(
      isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
    raise UserError(f"{where} must be a non-empty list of positive ints, got {values!r}")

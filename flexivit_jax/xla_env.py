"""XLA settings for runs on CPU, which the entry points apply before JAX starts.

XLA:CPU (jax 0.10) hands dots to YNNPACK fusions by default. For the ViT
forward and train step that is slower than XLA's own dot emitter: in
benchmarks/inference.py the FlexiViT-S forward ran 1.1-1.9x faster with the
YNNPACK fusions off (the batched attention einsums inside the query-block loop
suffer most), although a lone 2048x2048 matmul runs ~20% faster with them. The
flags only concern the CPU backend; TPU and GPU runs ignore them.

Flags the user already put in XLA_FLAGS win, and FLEXIVIT_KEEP_XLA_FLAGS=1
turns this off. XLA reads XLA_FLAGS once, when JAX starts its first backend, so
this must run before any JAX computation or device query.
"""
from __future__ import annotations

import logging
import os
from typing import List, MutableMapping, Optional, Tuple

log = logging.getLogger("flexivit_jax")

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)  # Empty list: no YNNPACK fusions.
KEEP_ENV = "FLEXIVIT_KEEP_XLA_FLAGS"


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def _jax_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # Another JAX version: assume it has not.
    return False


def merged_flags(xla_flags: str) -> Tuple[str, List[str]]:
  """(XLA_FLAGS with the CPU_FLAGS it lacks appended, the flags added); the user's win."""
  current = xla_flags.split()
  present = {_flag_name(f) for f in current}
  added = [f for f in CPU_FLAGS if _flag_name(f) not in present]
  return " ".join(current + added), added


def apply_cpu_defaults(environ: Optional[MutableMapping[str, str]] = None) -> List[str]:
  """Adds the CPU_FLAGS the user has not set to XLA_FLAGS; returns the flags added."""
  environ = os.environ if environ is None else environ
  if environ.get(KEEP_ENV):
    return []
  if _jax_started():  # In-process calls (tests, notebooks): too late, and harmless.
    log.debug("JAX has already started; XLA flags %s not applied", " ".join(CPU_FLAGS))
    return []
  flags, added = merged_flags(environ.get("XLA_FLAGS", ""))
  if added:
    environ["XLA_FLAGS"] = flags
  return added

"""What the analysis CLIs share: subject flags, progress, results.json."""
from __future__ import annotations

import argparse
import json
import os
from typing import Mapping

from flexivit_jax import paths
from flexivit_jax.analysis.subjects import DIGITS_PP


def add_subject_args(p: argparse.ArgumentParser, default_steps: int) -> None:
  p.add_argument("--out", required=True, type=paths.normalize, help="directory for the table, plot and results.json")
  p.add_argument("--model", default=None, help="variant or JSON, for a checkpoint without config")
  p.add_argument("--data", default="sklearn_digits:test", help="NAME:SPLIT to evaluate on")
  p.add_argument("--pp", default=DIGITS_PP, help="eval pp template with '{size}'")
  p.add_argument("--steps", type=int, default=default_steps, help="steps of a trained subject")
  p.add_argument("--runlocal", action="store_true", help="tiny subject, a few steps (tests)")
  p.add_argument("--batch_size", type=int, default=100)
  from flexivit_jax import cli
  cli.add_progress_argument(p)


def progress(args, total: int, unit: str):
  """The analysis' progress (`--progress`): its subject's training and its own loop."""
  from flexivit_jax.outputs import console
  return console.Progress(total, mode=args.progress, unit=unit)


def float_list(spec: str, flag: str) -> list[float]:
  from flexivit_jax.errors import UserError
  try:
    return [float(x) for x in spec.split(",") if x.strip()]
  except ValueError:
    raise UserError(f"{flag} must be comma-separated numbers, got {spec!r}") from None


def data_cfg(spec: str) -> dict:
  from flexivit_jax.errors import UserError
  name, sep, split = spec.partition(":")
  if not sep or not name or not split:
    raise UserError(f"--data must be NAME:SPLIT, got {spec!r}")
  return {"name": name, "split": split}


def setting(args, runlocal: Mapping, full: Mapping) -> tuple[Mapping, int]:
  """The analysis defaults for --runlocal or a full run, and the image side."""
  d = runlocal if args.runlocal else full
  return d, args.image_size or d["image_size"]


def write_results(out: str, results: Mapping) -> str:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "results.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  return path

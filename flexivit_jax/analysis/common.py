"""What the analysis CLIs share: subject flags, per-dataset defaults, progress, results.json."""
from __future__ import annotations

import argparse
import json
import os
from typing import Mapping

from flexivit_jax import paths
from flexivit_jax.analysis import subjects
from flexivit_jax.analysis.subjects import DIGITS_PP
from flexivit_jax.errors import UserError


def add_subject_args(p: argparse.ArgumentParser, default_steps: int) -> None:
  """`default_steps`: a trained sklearn_digits subject's steps; cluttered_digits subjects
  train the README demo's 2,400 (its loss stays at chance for the first ~800)."""
  p.add_argument("--out", required=True, type=paths.normalize, help="directory for the table, plot and results.json")
  p.add_argument("--model", default=None, help="variant or JSON, for a checkpoint without config")
  p.add_argument("--dataset", default="sklearn_digits",
                 help=f"bundled data of the subject and its defaults: "
                      f"{' or '.join(subjects.DEMO_CONFIGS)} (default sklearn_digits)")
  p.add_argument("--data", default=None,
                 help="NAME:SPLIT to evaluate on (default: --dataset's test split)")
  p.add_argument("--pp", default=DIGITS_PP, help="eval pp template with '{size}'")
  p.add_argument("--steps", type=int, default=None,
                 help=f"steps of a trained subject (default {default_steps} on sklearn_digits, "
                      f"{CLUTTERED_STEPS} on cluttered_digits)")
  p.set_defaults(digits_steps=default_steps)
  p.add_argument("--runlocal", action="store_true", help="tiny subject, a few steps (tests)")
  p.add_argument("--batch_size", type=int, default=100)
  from flexivit_jax import cli
  cli.add_progress_argument(p)


CLUTTERED_STEPS = 2400  # The README demo's.


def steps(args) -> int:
  """The steps a subject trains: --steps, else the dataset's default."""
  n = args.steps
  if n is None:
    n = CLUTTERED_STEPS if args.dataset == "cluttered_digits" else args.digits_steps
  if n < 1:
    raise UserError(f"--steps must be a positive number of steps, got {n}")
  return n


def eval_data(args) -> dict:
  """--data, else the test split of the dataset the subject trains on."""
  return data_cfg(args.data) if args.data else subjects.test_data(args.dataset, args.runlocal)


def progress(args, total: int, unit: str):
  """The analysis' progress (`--progress`): its subject's training and its own loop."""
  from flexivit_jax.outputs import console
  return console.Progress(total, mode=args.progress, unit=unit)


def float_list(spec: str, flag: str) -> list[float]:
  try:
    return [float(x) for x in spec.split(",") if x.strip()]
  except ValueError:
    raise UserError(f"{flag} must be comma-separated numbers, got {spec!r}") from None


def int_list(spec: str, flag: str) -> list[int]:
  """'8,4' -> [8, 4]: positive integers (grids, patch sizes)."""
  values = float_list(spec, flag)
  bad = [v for v in values if v != int(v) or v < 1]
  if bad or not values:
    raise UserError(f"{flag} must be comma-separated positive integers, got {spec!r}")
  return [int(v) for v in values]


def data_cfg(spec: str) -> dict:
  name, sep, split = spec.partition(":")
  if not sep or not name or not split:
    raise UserError(f"--data must be NAME:SPLIT, got {spec!r}")
  return {"name": name, "split": split}


def setting(args, runlocal: Mapping[str, Mapping], full: Mapping[str, Mapping]
            ) -> tuple[Mapping, int]:
  """The analysis defaults ({dataset: defaults}) of --dataset for --runlocal or a full
  run, and the image side (--image_size, else the defaults')."""
  d = (runlocal if args.runlocal else full)[subjects.check_dataset(args.dataset)]
  image_size = d["image_size"] if args.image_size is None else args.image_size
  if image_size < 1:
    raise UserError(f"--image_size must be a positive number of pixels, got {image_size}")
  return d, image_size


def write_results(out: str, results: Mapping) -> str:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "results.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  return path

"""The pre-flight plan of every recipe on its pod and on 8x H100: docs/scaling.md's table.

For each (config, topology) row, from the plan library (`flexivit_jax.training.plan`,
what `train --plan` prints), per device at the recipe's costliest flexi value:

- before: the step without the memory options (`plan.baseline_overrides`: float32
  student and teachers, no rematerialisation, one microbatch);
- defaults: the config as written (its `dtype_mm`, `remat_policy`, `grad_accum_steps`);
- fewest: the cheapest settings that fit when starting from one microbatch
  (`plan.recommend`: the config's model settings with the fewest microbatches first,
  then fsdp, then bf16, then rematerialisation), i.e. whether the defaults could use
  fewer microbatches; screened by extrapolating from the defaults' compiles;
- after: the defaults when they fit, else `fewest`.

Each gives the memory per device against the device's (fits = at most 90% of it), FLOPs
per step, the step time at `--mfu`, and the wall time of the compiles behind it. Rows run
in this process, so rows whose per-device shapes coincide (a v3-32 and a v4-64 both have
32 devices) share their compiles; `--cache FILE` keeps the measurements between runs
(keyed by everything a measurement depends on, so a changed config is measured again).

  python benchmarks/plan_table.py --out docs/plans.json --cache workdirs/plan_cache.json
  python benchmarks/plan_table.py --render docs/plans.json
  python benchmarks/plan_table.py --rows i1k_deit3_distill.py:variant=S@8xH100
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

from flexivit_jax import xla_env

# The XLA:CPU flags `train --plan` runs with (before JAX starts), so the table is its numbers.
xla_env.apply_cpu_defaults()

from flexivit_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from flexivit_jax.training import plan  # pylint: disable=g-import-not-at-top,wrong-import-position
from flexivit_jax.training.config import complete, load_config_file  # pylint: disable=g-import-not-at-top,wrong-import-position
from flexivit_jax.training.topologies import GIB, parse_topology  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
RECIPES = ("i21k_sup.py", "i21k_curriculum.py", "i21k_distill.py",
           "i1k_deit3_distill.py:variant=S", "i1k_deit3_distill.py:variant=B",
           "i1k_deit3_distill.py:variant=L", "transfer.py", "seg_ade20k.py")
GPU = "8xH100"
# FlexiViT-B and -L (ImageNet-1k distillation, batch 1024) on both paper pods.
EXTRA = (("i1k_deit3_distill.py:variant=B", "v3-32"), ("i1k_deit3_distill.py:variant=B", "v4-64"),
         ("i1k_deit3_distill.py:variant=L", "v3-32"), ("i1k_deit3_distill.py:variant=L", "v4-64"))
# (config file[:args] under configs/ or a path, topology (None: the config's), mode):
# mode "confirm": every plan compiled at its own microbatch, the recommendation too;
# "exact": before and defaults so, the recommendation screened by extrapolation only;
# "extrapolate": from earlier rows' compiles of the same steps where there are some.
Row = Tuple[str, Optional[str], str]
MODES = {"!": "confirm", "": "exact", "~": "extrapolate"}


def default_rows() -> List[Row]:
  """B/L on v3-32 and v4-64 first (confirmed), then every recipe on its own pod (exact),
  then on 8x H100 (extrapolated in batch from those compiles). L's own v4-128 has the same
  per-device microbatch as a v3-32 or v4-64 (16 of 32 examples per device) when it does
  not split: it is extrapolated from their compiles."""
  rows: List[Row] = [(c, t, "confirm") for c, t in EXTRA]
  rows += [(r, None, "extrapolate" if r.endswith("variant=L") else "exact") for r in RECIPES]
  rows += [(r, GPU, "extrapolate") for r in RECIPES]
  out: List[Row] = []
  seen = set()
  for config, topo, mode in rows:  # A row naming the config's own pod is kept once.
    key = (config, topo or _load(config).get("topology"))
    if key not in seen:
      seen.add(key)
      out.append((config, topo, mode))
  return out


def parse_row(text: str) -> Row:
  """'CONFIG[@TOPOLOGY][!|~]': '!' confirms the recommendation by a compile, '~'
  extrapolates from earlier rows' compiles (see Row)."""
  suffix = text[-1] if text[-1] in "!~" else ""
  config, _, topo = text[:len(text) - len(suffix)].partition("@")
  return config, topo or None, MODES[suffix]


_CONFIGS: Dict[str, Any] = {}


def _load(spec: str):
  if spec not in _CONFIGS:
    path = spec if os.sep in spec.split(":")[0] else str(CONFIGS / spec)
    _CONFIGS[spec] = complete(load_config_file(path))  # As `train` completes it.
  return _CONFIGS[spec]


REMAT = {"model.dtype_mm": "bfloat16", "model.remat_policy": "nothing_saveable"}
POINTS = 1  # Compile each plan at its own microbatch only (plan.batches_for): half the time.


def plan_dict(config, p: plan.Plan, measured_at: Optional[Tuple[int, int]] = None
              ) -> Dict[str, Any]:
  """One plan as JSON: settings, memory per device (GiB), fits, FLOPs, time, and the batch
  pair its compiles were made at (`measured_at`; None: at its own microbatch, exact)."""
  micro = p.per_device_batch // p.accum_steps
  pair = measured_at or plan.batches_for(micro, POINTS)
  return {
      "settings": p.settings(), "per_device_batch": p.per_device_batch, "microbatch": micro,
      "memory_gib": {k: v / GIB for k, v in p.memory.items()},
      "residuals_gib": p.residuals / GIB,  # JAX's, per microbatch (plan.residual_bytes...).
      "total_gib": p.total / GIB, "fits": p.fits,
      "tflop_per_step": p.flops_per_step / 1e12, "step_s": p.step_seconds,
      "measured_at": list(pair), "exact": pair[1] == micro,
      "compile_s": plan.measure(config, p.flexi, pair).compile_seconds,
  }


def _pair(config, flexi, topo, exact: bool) -> Optional[Tuple[int, int]]:
  """Where to measure: None (the plan's own microbatch) for an exact row; else a batch pair
  this step was already measured at: the one at this row's microbatch if there is one
  (then the row is exact after all), else the largest (None if it never was measured)."""
  if exact:
    return None
  pairs = plan.measured_batches(config, flexi)
  micro = config.input.batch_size // topo.devices // config.grad_accum_steps
  same = [b for b in pairs if b[1] == micro]
  return (same or sorted(pairs, key=lambda b: b[1]))[-1] if pairs else None


def plan_row(config_spec: str, topology: Optional[str], mfu: float = plan.MFU,
             mode: str = "confirm") -> Dict[str, Any]:
  """The row of one (config, topology): before, defaults, fewest, after (see the module);
  `mode` says what is compiled (see Row); each plan says whether it was extrapolated."""
  exact = mode != "extrapolate"
  config = _load(config_spec)
  topo = parse_topology(topology or config.get("topology") or "")
  start = time.perf_counter()
  flexi = plan.costliest_flexi(config)
  before_cfg = plan.with_overrides(config, plan.baseline_overrides(config))
  before_at = _pair(before_cfg, flexi, topo, exact)
  before = plan.make_plan(before_cfg, topo, mfu, measure_at=before_at, points=POINTS)
  defaults_at = _pair(config, flexi, topo, exact)
  defaults = plan.make_plan(config, topo, mfu, measure_at=defaults_at, points=POINTS)
  one = plan.with_overrides(config, {"grad_accum_steps": 1})
  screen = defaults_at or plan.batches_for(defaults.per_device_batch // defaults.accum_steps,
                                           POINTS)
  confirm = mode == "confirm"
  overrides, fewest = plan.recommend(one, topo, mfu, extrapolate_from=screen, exact=confirm,
                                     points=POINTS)
  fewest_cfg = plan.with_overrides(one, overrides) if overrides is not None else None
  fewest_at = None if confirm else screen  # Where recommend() measured it.
  remat = None
  if confirm:  # What rematerialisation alone buys: bf16 + remat, one microbatch.
    remat_cfg = plan.with_overrides(one, REMAT)
    remat = plan_dict(remat_cfg, plan.make_plan(remat_cfg, topo, mfu, points=POINTS))
  if defaults.fits:
    after, after_cfg, after_at = defaults, config, defaults_at
  else:
    after, after_cfg, after_at = fewest, fewest_cfg, fewest_at
  return {
      "config": config_spec, "topology": topo.name, "mode": mode, "devices": topo.devices,
      "device": topo.chip.name, "hbm_gib": topo.chip.hbm_bytes / GIB,
      "batch_size": config.input.batch_size, "flexi": dict(flexi),
      "before": plan_dict(before_cfg, before, before_at),
      "defaults": plan_dict(config, defaults, defaults_at),
      "fewest": plan_dict(fewest_cfg, fewest, fewest_at) if fewest is not None else None,
      "fewest_overrides": overrides,
      "after": plan_dict(after_cfg, after, after_at) if after is not None else None,
      "after_is": "defaults" if defaults.fits else ("fewest" if fewest else None),
      "remat": remat,
      "row_wall_s": time.perf_counter() - start,
  }


def table(rows: Sequence[Row], mfu: float = plan.MFU, cache: Optional[str] = None,
          log=print) -> List[Dict[str, Any]]:
  """Every row; with `cache`, measurements are read from and written back to that file
  (only those made under this process's XLA_FLAGS, which change XLA:CPU's buffers)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if cache and os.path.exists(cache):
    with open(cache) as f:
      kept = json.load(f)
    if kept.get("xla_flags") == flags:
      log(f"reusing {plan.load_measurements(kept['measurements'])} measurements from {cache}")
    else:
      log(f"not reusing {cache}: made under XLA_FLAGS={kept.get('xla_flags')!r}")
  out = []
  for config, topology, mode in rows:
    try:
      row = plan_row(config, topology, mfu, mode)
    except UserError as e:  # A row that cannot be planned is a result too.
      row = {"config": config, "topology": topology, "error": str(e)}
    except Exception as e:  # pylint: disable=broad-except  # Keep the other rows' compiles.
      log(traceback.format_exc())
      row = {"config": config, "topology": topology, "error": f"{type(e).__name__}: {e}"}
    out.append(row)
    log(markdown([row], header=not out[:-1]).rstrip())
    if cache:
      os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
      with open(cache, "w") as f:
        json.dump({"xla_flags": flags, "measurements": plan.measurements()}, f)
  return out


# ----------------------------------------------------------------------------
# Markdown.


def _short(settings: Dict[str, Any]) -> str:
  """The settings that differ from a plain run, as config keys."""
  out = []
  for key, value in settings.items():
    name = key.replace("distill.teachers.", "teacher ").replace("model.", "")
    if (key.endswith("dtype_mm") and value == "float32") or (
        key.endswith("remat_policy") and value == "none") or (
        key == "model.scan" and not value) or (key == "mesh.fsdp" and value == 1) or (
        key == "param_sharding" and settings.get("mesh.fsdp", 1) == 1):
      continue
    if key == "grad_accum_steps":
      continue
    out.append(f"{name}={value}")
  accum = settings["grad_accum_steps"]
  return ", ".join(out + [f"{accum} microbatch{'es' * (accum != 1)}"])


def _mem(p: Optional[Dict[str, Any]]) -> str:
  if p is None:
    return "nothing fits"
  approx = "" if p["exact"] else "~"
  return (f"{approx}{p['total_gib']:.2f} (act. {p['memory_gib']['activations']:.2f}, "
          f"res. {p['residuals_gib']:.2f}): "
          f"{'fits' if p['fits'] else '**does not fit**'}")


def _name(row: Dict[str, Any]) -> str:
  return row["config"].replace(".py", "").replace(":variant=", " ")


def markdown(rows: Sequence[Dict[str, Any]], header: bool = True) -> str:
  lines = []
  if header:
    lines += ["| recipe | topology | before: f32, no remat, 1 microbatch (GiB/device) | "
              "defaults (GiB/device) | after: settings | after (GiB/device) | fewer "
              "microbatches? | TFLOP/step | step (s) at MFU | compile (s): before / after |",
              "|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    if "error" in row:
      lines.append(f"| {_name(row)} | {row['topology']} | error: {row['error']} |")
      continue
    before, defaults, after, fewest = row["before"], row["defaults"], row["after"], row["fewest"]
    fewer = "-"
    if fewest is not None and defaults["fits"] and (
        fewest["settings"]["grad_accum_steps"] < defaults["settings"]["grad_accum_steps"]):
      fewer = (f"{_short(fewest['settings'])}: {'' if fewest['exact'] else '~'}"
               f"{fewest['total_gib']:.2f}")
    after_text = "-" if after is None else _short(after["settings"]) + (
        "" if row["after_is"] == "defaults" else " (recommended)")
    lines.append(
        f"| {_name(row)} | {row['topology']} ({row['hbm_gib']:.0f} GiB) | {_mem(before)} | "
        f"{_mem(defaults)} | {after_text} | {_mem(after)} | {fewer} | "
        f"{(after or defaults)['tflop_per_step']:.1f} | {(after or defaults)['step_s']:.3f} | "
        f"{before['compile_s']:.0f} / {(after or defaults)['compile_s']:.0f} |")
  return "\n".join(lines) + "\n"


def markdown_remat(rows: Sequence[Dict[str, Any]]) -> str:
  """The confirmed rows (B and L on v3-32 and v4-64): before, after, and bf16 + remat."""
  lines = ["| recipe | topology | before (GiB/device) | after: settings | after (GiB/device) | "
           "bf16 + remat (nothing_saveable), 1 microbatch (GiB/device) |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    if row.get("remat") is None:
      continue
    after = row["after"]
    lines.append(f"| {_name(row)} | {row['topology']} ({row['hbm_gib']:.0f} GiB) | "
                 f"{_mem(row['before'])} | {'-' if after is None else _short(after['settings'])} "
                 f"| {_mem(after)} | {_mem(row['remat'])} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", nargs="*", default=None,
                 help="CONFIG[@TOPOLOGY][!|~] under configs/ ('!': confirm the recommendation "
                      "by a compile, '~': extrapolate from earlier rows' compiles; default: "
                      "the docs' table)")
  p.add_argument("--mfu", type=float, default=plan.MFU)
  p.add_argument("--out", default="", help="write the rows as JSON here")
  p.add_argument("--cache", default="", help="measurements kept between runs (JSON)")
  p.add_argument("--render", default="", help="print the markdown of a JSON written by --out")
  args = p.parse_args(argv)
  if args.render:
    with open(args.render) as f:
      rows = json.load(f)["rows"]
    print(markdown(rows) + "\n" + markdown_remat(rows), end="")
    return
  rows = [parse_row(r) for r in args.rows] if args.rows else default_rows()
  start = time.perf_counter()
  result = table(rows, args.mfu, args.cache or None, log=lambda s: print(s, flush=True))
  wall = time.perf_counter() - start
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/plan_table.py " + " ".join(argv or sys.argv[1:]),
                 "mfu": args.mfu, "margin": plan.MARGIN, "wall_s": wall,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared",
                 "rows": result}, f, indent=1)
  print(f"\n{len(result)} rows in {wall:.0f} s")
  print(markdown(result) + "\n" + markdown_remat(result), end="")


if __name__ == "__main__":
  main()

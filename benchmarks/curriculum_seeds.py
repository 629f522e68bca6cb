"""A patch-size curriculum vs a plain ViT at the target patch, at equal compute, over
seeds, on `cluttered_digits` (the paper's Fig. 10).

Two arms, each trained with seeds 0, 1, 2 (`--seeds`) from the README demo's config
(64 px, width 64, depth 4, Adam 2e-3 cosine with 100 warmup steps, batch 64), into
`--root`:
  vit8        a plain ViT trained only at the target patch, 8 px (seqhw 8):
              `demo_cluttered.py:baseline` for `--steps` steps;
  curriculum  the same model (kernel and position embedding stored at 8x8, resized to
              the drawn size each step) trained coarse to fine: STAGES below, the
              last quarter at the target patch, for as many steps as cost what the
              baseline's steps cost (`equal_compute_steps`, from token counts).
The seed sets the initialisation, the data order and the curriculum's draws. Both arms
are evaluated at the target patch every `--eval_every` steps, each evaluation logged
with the cumulative training GFLOPs (XLA's count of the compiled steps), so accuracy
is compared at equal compute. Prints a table of the final accuracy per seed, the mean
and the spread, the verdict (does the difference of the means exceed the seeds'
spread?); `--out` writes OUT.json (every curve) and OUT.png (accuracy against
cumulative GFLOPs, one thin line per seed, the mean and the min-max band per arm).

  python benchmarks/curriculum_seeds.py --root workdirs/curriculum --out docs/figures/curriculum_seeds
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Mapping, Sequence

import cluttered_runs as common  # benchmarks/cluttered_runs.py; puts the repo on sys.path.
from flexivit_jax.outputs import plots, tables
from flexivit_jax.training.curriculum import equal_compute_steps

TARGET = 8  # seqhw: 8 px patches on the 64 px canvas, the finest size the demo trains.
# Patches 16/12 px, then 12/10, then 10/9, then the target 8 px for the last quarter.
STAGES = (dict(until=0.25, v=(4, 5)), dict(until=0.5, v=(5, 6)),
          dict(until=0.75, v=(6, 7)), dict(until=1.0, v=(TARGET,)))
SEEDS = (0, 1, 2)
ARMS = ("curriculum", "vit8")
LABELS = {"curriculum": "curriculum 16/12 -> 8 px", "vit8": "ViT at 8 px only"}


def _evaluated_at_target(c, seed: int, eval_every: int):
  """Evaluates at the target patch only, every `eval_every` steps; one checkpoint."""
  c.seed = seed
  c.eval_flexi = dict(seqhw=dict(v=(TARGET,)))
  c = common.quiet(c, evals_at_end_only=False)
  c.log_eval_steps = eval_every
  return c


def baseline_config(steps: int, seed: int, eval_every: int = 50):
  return _evaluated_at_target(common.demo_config(f"baseline,steps={steps}"), seed, eval_every)


def curriculum_steps(baseline_steps: int) -> int:
  """The curriculum's steps that cost what `baseline_steps` at the target patch cost."""
  m = common.demo_config().model
  return equal_compute_steps(STAGES, TARGET, baseline_steps, width=m.width, depth=m.depth,
                             mlp_dim=m.mlp_dim)


def curriculum_config(baseline_steps: int, seed: int, eval_every: int = 50):
  c = common.demo_config(f"steps={curriculum_steps(baseline_steps)}")
  c.flexi = dict(seqhw=[dict(stage, p="uniform") for stage in STAGES])
  return _evaluated_at_target(c, seed, eval_every)


def configs(steps: int, seeds: Sequence[int], eval_every: int) -> Dict[str, Dict[int, object]]:
  """{arm: {seed: config}}."""
  return {"curriculum": {s: curriculum_config(steps, s, eval_every) for s in seeds},
          "vit8": {s: baseline_config(steps, s, eval_every) for s in seeds}}


def curve(result: Mapping) -> List[dict]:
  """A run's evaluations at the target: [{step, gflops, acc (%)}], in step order."""
  label = f"seqhw={TARGET}"
  return [dict(step=e["step"], gflops=e["compute/gflops"], acc=round(100.0 * e[label], 2))
          for e in sorted(result["evals"], key=lambda e: e["step"]) if label in e]


def acc_at(points: Sequence[Mapping], gflops: float) -> float:
  """Accuracy (%) at a compute level, linear between the evaluations around it (the
  first or last evaluation outside their range)."""
  if gflops <= points[0]["gflops"]:
    return points[0]["acc"]
  for a, b in zip(points, points[1:]):
    if gflops <= b["gflops"]:
      t = (gflops - a["gflops"]) / (b["gflops"] - a["gflops"])
      return a["acc"] + t * (b["acc"] - a["acc"])
  return points[-1]["acc"]


def summarize(curves: Mapping[str, Mapping[int, Sequence[Mapping]]]) -> dict:
  """Final accuracy per arm and seed, mean, min, max; the accuracy at half the
  baseline's compute; the compute ratio; and the verdict against the seeds' spread."""
  arms = {}
  half = 0.5 * min(pts[-1]["gflops"] for pts in curves["vit8"].values())
  for arm, by_seed in curves.items():
    final = {seed: pts[-1]["acc"] for seed, pts in by_seed.items()}
    mid = {seed: acc_at(pts, half) for seed, pts in by_seed.items()}
    arms[arm] = dict(final=final, mean=_mean(final.values()), min=min(final.values()),
                     max=max(final.values()), at_half_compute=mid,
                     at_half_compute_mean=_mean(mid.values()),
                     gflops=_mean(pts[-1]["gflops"] for pts in by_seed.values()))
  cur, base = arms["curriculum"], arms["vit8"]
  diff = cur["mean"] - base["mean"]
  spread = max(cur["max"] - cur["min"], base["max"] - base["min"])
  separated = cur["min"] > base["max"] or base["min"] > cur["max"]
  return dict(arms=arms, diff_of_means=diff, largest_seed_spread=spread,
              ranges_separate=separated, exceeds_seed_spread=separated and abs(diff) > spread,
              half_baseline_gflops=half, gflops_ratio=cur["gflops"] / base["gflops"])


def _mean(values) -> float:
  values = list(values)
  return sum(values) / len(values)


def verdict(summary: Mapping) -> str:
  s = summary
  better = "curriculum" if s["diff_of_means"] > 0 else "ViT at 8 px"
  head = (f"mean final accuracy: curriculum - ViT-8 = {s['diff_of_means']:+.1f} points; "
          f"largest seed spread (max - min) of an arm {s['largest_seed_spread']:.1f} points; ")
  if s["exceeds_seed_spread"]:
    return head + f"the difference exceeds the seed spread ({better} better on every seed)."
  if s["ranges_separate"]:
    return head + (f"the seed ranges do not overlap ({better} better on every seed) "
                   "but the difference is smaller than the spread.")
  return head + "the seed ranges overlap: the difference does not exceed the seed spread."


def table(summary: Mapping, seeds: Sequence[int]) -> str:
  arms = summary["arms"]
  pct = lambda v: f"{v:.1f}%"
  rows = [[f"seed {s}"] + [pct(arms[a]["final"][s]) for a in ARMS]
          + [f"{arms['curriculum']['final'][s] - arms['vit8']['final'][s]:+.1f}"]
          for s in seeds]
  rows.append(["mean"] + [pct(arms[a]["mean"]) for a in ARMS]
              + [f"{summary['diff_of_means']:+.1f}"])
  rows.append(["min - max"] + [f"{arms[a]['min']:.1f} - {arms[a]['max']:.1f}" for a in ARMS]
              + [""])
  half = [arms[a]["at_half_compute_mean"] for a in ARMS]
  rows.append(["at 1/2 compute, mean"] + [pct(v) for v in half] + [f"{half[0] - half[1]:+.1f}"])
  rows.append(["training GFLOPs, mean"] + [f"{arms[a]['gflops']:.0f}" for a in ARMS]
              + [f"x{summary['gflops_ratio']:.3f}"])
  return tables.format_rows(["", LABELS["curriculum"], LABELS["vit8"], "difference"], rows)


def plot(curves: Mapping[str, Mapping[int, Sequence[Mapping]]], path: str, title: str) -> str:
  """Accuracy at the target patch against cumulative training GFLOPs: per arm a thin
  line per seed, the mean over seeds (at each evaluation step) and the min-max band."""
  fig, ax = plots.new_figure((7, 4.5))
  for color, arm in zip(("tab:blue", "tab:orange"), ARMS):
    by_seed = list(curves[arm].values())
    for pts in by_seed:
      ax.plot([p["gflops"] for p in pts], [p["acc"] for p in pts], color=color, alpha=0.35,
              linewidth=0.8)
    n = min(len(pts) for pts in by_seed)  # Every seed of an arm evaluates at the same steps.
    xs = [_mean(pts[i]["gflops"] for pts in by_seed) for i in range(n)]
    accs = [[pts[i]["acc"] for pts in by_seed] for i in range(n)]
    ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=color,
                    alpha=0.2)
    ax.plot(xs, [_mean(a) for a in accs], color=color, marker="o", markersize=3,
            label=f"{LABELS[arm]} (mean, min-max of {len(by_seed)} seeds)")
  plots.label_axes(ax, xlabel="cumulative training GFLOPs (XLA cost analysis)",
                   ylabel=f"test prec@1 at patch {common.IMAGE // TARGET} px (%)", title=title)
  return plots.save_figure(fig, path)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/curriculum")
  p.add_argument("--steps", type=int, default=300, help="the baseline's steps")
  p.add_argument("--eval_every", type=int, default=50)
  p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
  p.add_argument("--out", default=None, help="writes OUT.json and OUT.png")
  args = p.parse_args()
  if len(set(args.seeds)) < 2:
    p.error(f"--seeds needs at least two different seeds to show a spread, not {args.seeds}")
  curves, wall = {arm: {} for arm in ARMS}, {}
  runs = configs(args.steps, args.seeds, args.eval_every)
  for seed in args.seeds:  # Seed by seed: an interrupted experiment has whole pairs.
    for arm in ARMS:
      result = common.train(runs[arm][seed], os.path.join(args.root, f"{arm}_seed{seed}"))
      curves[arm][seed] = curve(result)
      wall[f"{arm}_seed{seed}"] = result["wall_s"]
  summary = summarize(curves)
  print(table(summary, args.seeds))
  print(verdict(summary))
  print("wall s: " + "  ".join(f"{k} {v}" for k, v in wall.items())
        + f"  (total {sum(wall.values()):.0f})")
  if args.out:
    steps = {"curriculum": curriculum_steps(args.steps), "vit8": args.steps}
    common.write_json(args.out + ".json", dict(
        steps=steps, stages=STAGES, target_seqhw=TARGET, seeds=args.seeds,
        curves={a: {str(s): c for s, c in by.items()} for a, by in curves.items()},
        summary=summary, verdict=verdict(summary), wall_s=wall))
    print("plot:", plot(curves, args.out + ".png",
                        title=f"cluttered_digits 64 px: curriculum vs ViT-8, equal compute "
                              f"({args.steps} ViT steps)"))


if __name__ == "__main__":
  main()

"""Few-shot linear probes and retrieval at every patch size: FlexiViT vs a fixed ViT/8.

Trains (or reuses, when its workdir holds the final checkpoint) the digits demo's
FlexiViT (`configs/demo_digits.py`) and its fixed-patch baseline (`:baseline`, a plain
ViT at 8 px), then, on each model's pre-logits at every eval grid (patches 16..4 px):
  * few-shot: big_vision's closed-form ridge probes (shots 1/5/10/25 per class on the
    train split, seeds 0, 1, 2, l2_reg 2^10), scored on the test split;
  * retrieval: cosine nearest neighbours of the test images (queries) among the train
    images (gallery), recall@1/5, for every (query patch, gallery patch) pair.
Writes fewshot_retrieval.json, one retrieval heatmap per model and a markdown summary
into --out, and prints the markdown.

  python benchmarks/fewshot_retrieval.py [--steps 1200] [--workdir workdirs/fsr]
      [--out docs/figures] [--dataset sklearn_digits]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexivit_jax import xla_env  # noqa: E402
xla_env.apply_cpu_defaults()  # The train CLI's XLA:CPU flags: runs here train as `train` does.
from flexivit_jax.checkpoints import step_dirs  # noqa: E402
from flexivit_jax.evaluators import loading, sweep  # noqa: E402
from flexivit_jax.outputs import eval_files, plots, tables  # noqa: E402
from flexivit_jax.training import config as config_lib  # noqa: E402
from flexivit_jax.training import demos, loop  # noqa: E402

MODELS = {"FlexiViT": "", "ViT/8": "baseline"}  # name -> digits demo argument.
SHOTS = (1, 5, 10, 25)
L2_REG = 2.0 ** 10
IMAGE = 48
PP = f"decode|resize({IMAGE})|value_range(-1, 1)|keep('image', 'label')"


def eval_configs(dataset: str) -> dict:
  few = dict(type="fewshot", datasets={"digits": (dataset, "train", "test")}, shots=SHOTS,
             l2_reg=L2_REG, num_seeds=3, pp_train=PP, pp_eval=PP)
  ret = dict(type="retrieval", data=dict(name=dataset, split="test"),
             gallery_data=dict(name=dataset, split="train"), pp=PP, ks=(1, 5))
  return {"fewshot": few, "retrieval": ret}


def trained(workdir: str, arg: str, steps: int) -> float:
  """Trains the demo model unless `workdir` holds its final step; the seconds it took."""
  config = config_lib.complete(demos.digits_config(",".join(filter(None, [arg, f"steps={steps}"]))),
                               [("progress", "lines"),
                                ("schedule.warmup_steps", str(min(100, steps // 2)))])
  if steps in step_dirs.complete_steps(workdir):
    return 0.0
  start = time.perf_counter()
  loop.train_and_evaluate(config, workdir)
  return time.perf_counter() - start


def evaluate_model(workdir: str, dataset: str) -> dict:
  model, params, config = loading.load_model(workdir)
  seqhws = config.eval_seqhws()
  cfgs = eval_configs(dataset)
  start = time.perf_counter()
  few = sweep.evaluate_features(model, params, "fewshot", cfgs["fewshot"], seqhws, batch_size=100)
  ret = sweep.evaluate_features(model, params, "retrieval", cfgs["retrieval"], seqhws,
                                batch_size=100)
  return {"fewshot": eval_files.fewshot_rows(few, IMAGE),
          "retrieval": eval_files.retrieval_report(ret, IMAGE, (1, 5)),
          "eval_s": time.perf_counter() - start}


def markdown(results: dict) -> str:
  lines = []
  for name, r in results.items():
    lines += [f"**{name}** (trained {r['train_s'] / 60:.1f} min, evals {r['eval_s']:.0f} s): "
              "few-shot accuracy (%), mean of seeds 0, 1, 2", "",
              "| patch | " + " | ".join(f"{s}-shot" for s in SHOTS) + " |",
              "|---:|" + "---:|" * len(SHOTS)]
    for row in r["fewshot"]:
      lines.append(f"| {row['patch']} | " + " | ".join(
          f"{row[f'digits_{s}shot'] * 100:.1f}" for s in SHOTS) + " |")
    report = r["retrieval"]
    lines += ["", f"**{name}** retrieval recall@1 (%), rows: query patch, columns: gallery patch",
              "", "| query \\ gallery | " + " | ".join(f"/{p}" for p in report["patches"]) + " |",
              "|---:|" + "---:|" * len(report["patches"])]
    for p, row in zip(report["patches"], report["recall"]["1"]):
      lines.append(f"| /{p} | " + " | ".join(f"{v * 100:.1f}" for v in row) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=1200)
  p.add_argument("--workdir", default="workdirs/fsr", help="one subdirectory per model")
  p.add_argument("--out", default="docs/figures")
  p.add_argument("--dataset", default="sklearn_digits")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  results = {}
  for name, arg in MODELS.items():
    workdir = os.path.abspath(os.path.join(args.workdir, name.replace("/", "")))
    train_s = trained(workdir, arg, args.steps)
    results[name] = {"workdir": workdir, "train_s": train_s, **evaluate_model(workdir, args.dataset)}
    report = results[name]["retrieval"]
    plots.plot_matrix(report["recall"]["1"], [str(q) for q in report["patches"]],
                      os.path.join(args.out, f"retrieval_{name.replace('/', '')}.png"),
                      xlabel="gallery patch size", ylabel="query patch size",
                      title=f"{name}: recall@1 (%), {args.dataset}")
    print(tables.format_fewshot_table(results[name]["fewshot"]), flush=True)
    with open(os.path.join(args.out, "fewshot_retrieval.json"), "w") as f:
      json.dump({"steps": args.steps, "dataset": args.dataset, "l2_reg": L2_REG,
                 "seeds": [0, 1, 2], "results": results}, f, indent=1)
  text = markdown(results)
  with open(os.path.join(args.out, "fewshot_retrieval.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()

"""Fine-tune coarse, deploy fine, for semantic segmentation: FlexiViT vs ViT backbones.

On the bundled `cluttered_digits` (64 px, 11 pixel classes), in one command:
  1. pretrain two classifiers on the bundled digits demo (configs/demo_digits.py,
     48 px, 10 classes; a short run): a FlexiViT (each step's grid drawn from seqhw
     3, 4, 6, 8, 12) and its `baseline`, a plain ViT at one grid (seqhw 6, patch
     8 px); same model (width 64, depth 4, 4 heads, kernel 8x8; posemb 8x8 here,
     the segmentation model's), steps, batch and optimiser;
  2. fine-tune each as the backbone of a Segmenter (configs/seg_cluttered.py, the
     classification head dropped, a new linear decoder) at ONE coarse grid only;
  3. score the test split's segmentation (mIoU, pixel accuracy) at every grid.

  python benchmarks/seg_patch_transfer.py --out docs/seg_patch_transfer.json \
      --plot docs/figures/seg_patch_transfer.png

Prints a markdown table (mIoU per grid, both backbones) and writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexivit_jax import xla_env  # noqa: E402
xla_env.apply_cpu_defaults()  # The train CLI's XLA:CPU flags: runs here train as `train` does.
from flexivit_jax.outputs import plots  # noqa: E402
from flexivit_jax.training import config as config_lib  # noqa: E402
from flexivit_jax.training import demos, loop  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GRIDS = (4, 8, 16)  # seqhw at 64 px: patches 16, 8, 4.
VIT_GRID = 6  # The demo baseline's grid at 48 px: patch 8.


def pretrain_config(flexi: bool, steps: int, batch: int):
  """The digits demo (FlexiViT, or its `baseline` ViT), short, posemb stored at 8x8."""
  c = demos.digits_config(f"steps={steps}" + ("" if flexi else ",baseline"))
  c.model.update(posemb_size=(8, 8))
  c.input.batch_size = batch
  c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 5)
  c.log_eval_steps = c.ckpt_steps = steps
  c.progress = "lines"
  return config_lib.complete(c)


def finetune_config(init: str, seqhw: int, steps: int, batch: int):
  c = config_lib.load_config_file(
      os.path.join(REPO, "configs", f"seg_cluttered.py:init={init},seqhw={seqhw},steps={steps}"))
  c.input.batch_size = batch
  c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 5)
  c.log_eval_steps = c.ckpt_steps = steps
  c.progress = "lines"
  return config_lib.complete(c)


def finals(last: dict, metric: str) -> dict:
  return {int(k.split("seqhw=")[1].split("/")[0]): float(v) for k, v in last.items()
          if k.startswith("eval/") and k.endswith("/" + metric)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--pretrain_steps", type=int, default=500)
  p.add_argument("--finetune_steps", type=int, default=300)
  p.add_argument("--finetune_seqhw", type=int, default=4, help="the one coarse grid")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--workdir", default=None, help="runs go under here (default: a temp dir)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--plot", default=None, help="write mIoU per patch size as a PNG here")
  args = p.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="seg_transfer_")
  results = []
  for name, flexi in (("FlexiViT", True), (f"ViT (pretrained at seqhw {VIT_GRID})", False)):
    tag = "flexi" if flexi else "vit"
    start = time.time()
    pre = loop.train_and_evaluate(pretrain_config(flexi, args.pretrain_steps, args.batch),
                                  os.path.join(root, f"pretrain_{tag}"))
    pre_s = time.time() - start
    seg = loop.train_and_evaluate(
        finetune_config(os.path.join(root, f"pretrain_{tag}"), args.finetune_seqhw,
                        args.finetune_steps, args.batch), os.path.join(root, f"seg_{tag}"))
    results.append(dict(backbone=name, pretrain_top1=finals(pre, "prec@1"),
                        miou=finals(seg, "miou"), pixel_acc=finals(seg, "pixel_acc"),
                        pretrain_s=round(pre_s, 1), total_s=round(time.time() - start, 1)))
    print(json.dumps(results[-1]), flush=True)
  settings = dict(vars(args), seed=0, grids=GRIDS, image=64)
  header = "| seqhw | patch | " + " | ".join(f"{r['backbone']} mIoU" for r in results) + " |"
  lines = [header, "|" + "---:|" * (2 + len(results))]
  for s in GRIDS:
    lines.append(f"| {s} | {64 // s} | " + " | ".join(
        f"{r['miou'][s] * 100:.2f}%" for r in results) + " |")
  print("\n".join(lines))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(settings=settings, results=results), f, indent=1)
  if args.plot:
    curves = {r["backbone"]: {(("seqhw", s),): v for s, v in r["miou"].items()} for r in results}
    plots.plot_accuracy(curves, args.plot, image_size=64, metric="mIoU",
                        title=f"Segmenter fine-tuned at seqhw {args.finetune_seqhw} only")


if __name__ == "__main__":
  main()

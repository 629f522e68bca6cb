"""One FlexiViT vs a ViT per patch size on `cluttered_digits` (the paper's Fig. 1/7).

Runs, all from the README demo's config (64 px, width 64, depth 4, Adam 2e-3,
cosine, batch 64, `--steps` steps each, seed 0), into `--root`:
  teacher        a plain ViT at the finest patch (8 px, seqhw 8): `demo_cluttered.py:baseline`;
                 evaluated at every size, so it also shows a ViT off its grid;
  vit<P>         a plain ViT per coarser patch P (16, 12, 10 px; 8 px is the teacher),
                 kernel and position embedding stored at its own size, same steps;
  flexi_scratch  FlexiViT, a random patch per step, trained from scratch with labels:
                 `demo_cluttered.py` (the README demo);
  flexi_distill  the paper's recipe: FlexiViT initialised from the teacher (the same
                 8x8 kernel and 8x8 position embedding; at each step the kernel is
                 PI-resized and the position embedding resampled to the drawn size),
                 trained by distillation only (KL to the frozen teacher's logits at
                 patch 8, temperature 1), a random patch per step, same steps.
Prints and writes (`--out`, JSON and PNG) test prec@1 at patches 16, 12, 10, 9, 8.

  python benchmarks/one_vs_many.py --root workdirs/one_vs_many --out docs/figures/one_vs_many \
      [--adopt teacher=workdirs/base --adopt flexi_scratch=workdirs/demo]
"""
from __future__ import annotations

import argparse
import os

import cluttered_runs as common  # benchmarks/cluttered_runs.py; puts the repo on sys.path.
from flexivit_jax.outputs import plots, tables

SEQHWS = (4, 5, 6, 7, 8)  # Patches 16, 12, 10, 9, 8 px at 64 px.
SEPARATE = (16, 12, 10)  # + the teacher at 8 px.


def distill_config(steps: int, teacher_workdir: str):
  c = common.demo_config(f"steps={steps}")
  c.model_init = teacher_workdir
  c.distill.teachers = dict(prof=dict(model=dict(c.model), init=teacher_workdir,
                                      input_key="image", call=dict(seqhw=8)))
  return c


def run_all(root: str, steps: int, adopt: dict) -> dict:
  q = common.quiet
  for name, source in adopt.items():  # The README demo's runs: the same training configs.
    config = common.demo_config(f"baseline,steps={steps}" if name == "teacher" else
                                f"steps={steps}")
    common.adopt_copy(source, os.path.join(root, name), config)
  runs = {"teacher": common.train(q(common.demo_config(f"baseline,steps={steps}")),
                                  os.path.join(root, "teacher"))}
  for patch in SEPARATE:
    runs[f"vit{patch}"] = common.train(q(common.vit_config(patch, steps)),
                                       os.path.join(root, f"vit{patch}"))
  runs["flexi_scratch"] = common.train(q(common.demo_config(f"steps={steps}")),
                                       os.path.join(root, "flexi_scratch"))
  teacher_wd = os.path.abspath(os.path.join(root, "teacher"))
  runs["flexi_distill"] = common.train(q(distill_config(steps, teacher_wd)),
                                       os.path.join(root, "flexi_distill"))
  return runs


def table(runs: dict) -> list:
  """Rows: seqhw, patch, FlexiViT distilled, FlexiViT scratch, separate ViT, teacher."""
  separate = {common.IMAGE // p: runs[f"vit{p}"] for p in SEPARATE}
  separate[8] = runs["teacher"]
  rows = []
  for s in SEQHWS:
    sep = common.test_acc(separate[s], s) if s in separate else None
    rows.append(dict(seqhw=s, patch=common.IMAGE // s,
                     flexi_distill=common.test_acc(runs["flexi_distill"], s),
                     flexi_scratch=common.test_acc(runs["flexi_scratch"], s),
                     separate_vit=sep, vit8_off_grid=common.test_acc(runs["teacher"], s)))
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/one_vs_many")
  p.add_argument("--steps", type=int, default=2400)
  p.add_argument("--out", default=None, help="writes OUT.json and OUT.png")
  p.add_argument("--adopt", action="append", default=[], metavar="NAME=WORKDIR",
                 help="teacher=DIR (demo_cluttered.py:baseline) or flexi_scratch=DIR "
                      "(demo_cluttered.py): use that finished run (checked to be the same "
                      "training config) instead of training it again")
  args = p.parse_args()
  adopt = dict(a.split("=", 1) for a in args.adopt)
  unknown = set(adopt) - {"teacher", "flexi_scratch"}
  if unknown:
    p.error(f"--adopt names teacher or flexi_scratch, not {sorted(unknown)}")
  runs = run_all(args.root, args.steps, adopt)
  rows = table(runs)
  pct = lambda v: "-" if v is None else f"{v:.1f}%"
  print(tables.format_rows(
      ["seqhw", "patch", "FlexiViT distilled", "FlexiViT scratch", "ViT per patch",
       "ViT-8 off grid"],
      [[r["seqhw"], r["patch"], pct(r["flexi_distill"]), pct(r["flexi_scratch"]),
        pct(r["separate_vit"]), pct(r["vit8_off_grid"])] for r in rows]))
  print("wall s: " + "  ".join(f"{k} {v['wall_s']}" for k, v in runs.items()))
  if args.out:
    common.write_json(args.out + ".json", dict(rows=rows, steps=args.steps, seed=0,
                                               wall_s={k: v["wall_s"] for k, v in runs.items()}))
    lines = {}
    for key, label in (("flexi_distill", "FlexiViT, distilled"),
                       ("flexi_scratch", "FlexiViT, from scratch"),
                       ("separate_vit", "ViT per patch size"),
                       ("vit8_off_grid", "ViT trained at 8 px")):
      pts = [(r["patch"], r[key]) for r in rows if r[key] is not None]
      lines[label] = ([x for x, _ in pts], [y for _, y in pts])
    print("plot:", plots.plot_lines(lines, args.out + ".png", xlabel="patch size (px)",
                                    ylabel="test prec@1 (%)", invert_x=True,
                                    title=f"cluttered_digits 64 px, {args.steps} steps each"))


if __name__ == "__main__":
  main()

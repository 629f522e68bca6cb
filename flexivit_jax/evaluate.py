"""Evaluates one checkpoint at every patch size: accuracy, loss, GFLOPs, images/s.

  python -m flexivit_jax.evaluate --checkpoint workdirs/demo --out eval_demo
  python -m flexivit_jax.evaluate --checkpoint ckpt.npz --model S/16 \
      --data imagenet2012:validation --pp "decode|resize(240)|value_range(-1,1)|onehot(1000, key='label', key_result='labels')" \
      --seqhw 5,8,10,15,30 --out eval_s
  python -m flexivit_jax.evaluate --checkpoint workdirs/demo --max_gflops 0.01
  python -m flexivit_jax.evaluate --checkpoint i21k.npz --model B/16 \
      --data imagenet2012:validation --pp "..." --label_mapping i21k_to_i1k.txt
  python -m flexivit_jax.evaluate --checkpoint workdirs/demo --eval fewshot --out eval_demo
  python -m flexivit_jax.evaluate --checkpoint workdirs/demo --out eval_demo \
      --eval_config "{'type': 'retrieval', 'data': {'name': 'sklearn_digits', 'split': 'test'}, ..."

Prints one row per seqhw and writes eval.json, eval.csv and eval.png (top-1 vs
GFLOPs) into --out. With a workdir, the model, data, pp and grids default to its
config.json. `--max_gflops`/`--max_ms` evaluate only the finest grid within budget.
`--label_mapping` scores a model on a dataset with other classes (as a config's
`evals.<name>.label_mapping`: a list of model class ids, one per dataset class,
-1 for none, or a file of them).
A segmentation checkpoint (`--task segmentation`, or a workdir whose config says
so) is scored by mean IoU and pixel accuracy at every grid, GFLOPs per image beside
them, into eval_segmentation.json/.csv/.png:

  python -m flexivit_jax.evaluate --checkpoint workdirs/seg --out eval_seg
  python -m flexivit_jax.evaluate --checkpoint seg.npz --task segmentation \
      --model '{"width": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128, "patch_size": [8, 8]}' \
      --data cluttered_digits:test --pp 'decode|value_range(-1, 1)|seg_labels()|keep("image", "labels")' --seqhw 4,8,16
`--eval NAME` runs the workdir's `evals.NAME` instead (any type), `--eval_config` a
config of one evaluator (a dict literal or a JSON file): a `fewshot` evaluator prints and
writes fewshot.json (accuracy per grid size and dataset/shots), a `retrieval` evaluator
retrieval.json and retrieval.png (recall for every query size x gallery size).
Compare several runs with `python -m flexivit_jax.compare DIR1 DIR2 --out DIR`.
`--progress=lines` (the default when stdout is not a terminal) prints a start line,
a batch count every 30 s and one line per grid; `--progress=none` (or `--no_progress`)
only the table.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Optional, Sequence

from flexivit_jax import cli, paths
from flexivit_jax.outputs import eval_files, plots, run_config, tables
from flexivit_jax.errors import UserError

# The paper's range of patch sizes (8..48 px at 240 px), used for `--seqhw all`.
MIN_PATCH, MAX_PATCH = 8, 48
PROGRESS_EVERY_S = 30.0  # With --progress=lines, a batch count line at most this often.


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(__doc__, "flexivit_jax.evaluate")
  p.add_argument("--checkpoint", required=True, help="npz file, training workdir or shortcut")
  p.add_argument("--data", default=None, help="NAME:SPLIT (default: the workdir's first eval)")
  p.add_argument("--data_dir", default=None, type=paths.normalize, help="TFDS data dir (default: $FLEXIVIT_DATA_DIR)")
  p.add_argument("--pp", default=None, help="eval preprocessing; must produce 'labels'")
  p.add_argument("--seqhw", default="all", help="'all' or comma-separated tokens per side")
  p.add_argument("--model", default=None, help="variant ('S/16') or JSON of FlexiViT fields")
  p.add_argument("--task", default=None, choices=("classification", "segmentation"),
                 help="the checkpoint's task (default: the workdir's config, else "
                      "classification); segmentation reports mIoU and pixel accuracy")
  p.add_argument("--ignore_label", type=int, default=None,
                 help="segmentation: the label of unscored pixels (default: the workdir "
                      "config's, else 255)")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--max_gflops", type=float, default=None)
  p.add_argument("--max_ms", type=float, default=None, help="latency budget per batch")
  p.add_argument("--label_mapping", default=None,
                 help="model class per dataset class (-1: none): a list such as '[3, 7, -1]' "
                      "or a file (JSON list, or one int per line); default: the workdir "
                      "eval's when --data is not given")
  p.add_argument("--eval", default=None, dest="eval_name",
                 help="run the workdir's evals.NAME (classification, fewshot, retrieval or "
                      "segmentation)")
  p.add_argument("--eval_config", default=None,
                 help="one evaluator's config: a dict literal, or a JSON file holding one")
  p.add_argument("--out", default=None, type=paths.normalize,
                 help="directory for eval.json/eval.csv/eval.png (fewshot.json, retrieval.*)")
  cli.add_progress_argument(p)
  p.add_argument("--no_progress", dest="progress", action="store_const", const="none",
                 help="the same as --progress=none")
  return p


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  return build_parser().parse_args(argv)


def data_cfg_of(args, config: Optional[run_config.RunConfig]) -> dict:
  """{name, split[, data_dir]} from --data or the workdir's first evaluator."""
  evaluator = config and config.evaluator()
  if args.data:
    name, sep, split = args.data.partition(":")
    if not sep or not name or not split:
      raise UserError(f"--data must be NAME:SPLIT (e.g. sklearn_digits:test), got {args.data!r}")
    cfg = {"name": name, "split": split}
  elif evaluator:
    cfg = dict(evaluator["data"])
  else:
    raise UserError("pass --data NAME:SPLIT (the checkpoint is not a workdir with evals)")
  data_dir = args.data_dir or (config and config.data_dir)
  if data_dir:
    cfg.setdefault("data_dir", data_dir)
  return cfg


def pp_of(args, config: Optional[run_config.RunConfig]) -> str:
  if args.pp:
    return args.pp
  evaluator = config and config.evaluator()
  if evaluator:
    return evaluator["pp"]
  raise UserError("pass --pp (an eval preprocessing string producing 'image' and 'labels')")


def label_mapping_of(args, config: Optional[run_config.RunConfig]):
  """--label_mapping (a list literal or a file path), else the workdir's first eval's
  when the data is that eval's too; None for none. The form is checked when it is read."""
  spec = args.label_mapping
  if spec is None:
    first = config.evaluator() if config is not None and not args.data else None
    return first.get("label_mapping") if first else None
  if spec.lstrip().startswith("["):
    try:
      return ast.literal_eval(spec)
    except (ValueError, SyntaxError):
      raise UserError(f"--label_mapping must be a list of ints such as '[3, 7, -1]' or a "
                      f"file, got {spec!r}") from None
  return paths.normalize(spec)


def seqhws_of(spec: str, config: Optional[run_config.RunConfig], image_size: int
              ) -> list[int]:
  """'all' -> the workdir's eval grids, else grids whose patch is 8..48 px and tiles the image."""
  if spec != "all":
    try:
      values = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
      raise UserError(f"--seqhw must be 'all' or comma-separated ints, got {spec!r}") from None
    if not values or values[0] <= 0 or values[-1] > image_size:
      raise UserError(f"--seqhw values must be in 1..{image_size} (image side), got {spec!r}")
    return values
  values = config and config.eval_seqhws()
  if values:
    return values
  grids = [s for s in range(1, image_size + 1)
           if image_size % s == 0 and MIN_PATCH <= image_size // s <= MAX_PATCH]
  return grids or [1]


def choose(args, model, params, image_size: int, channels: int, seqhws) -> list[int]:
  from flexivit_jax.evaluators.predict import choose_seqhw
  best = choose_seqhw(model, params, image_size, max_gflops=args.max_gflops,
                      max_ms=args.max_ms, batch_size=args.batch_size, seqhws=seqhws,
                      channels=channels)
  budget = (f"{args.max_gflops} GFLOPs/img" if args.max_gflops is not None
            else f"{args.max_ms} ms/batch of {args.batch_size}")
  print(f"finest grid within {budget}: seqhw={best} (patch {image_size // best})")
  return [best]


def named_eval_config(args, config: Optional[run_config.RunConfig]) -> Optional[tuple]:
  """(name, cfg) of --eval or --eval_config; None when neither is given."""
  if args.eval_name and args.eval_config:
    raise UserError("give --eval or --eval_config, not both")
  if args.eval_config:
    text = args.eval_config
    if not text.lstrip().startswith("{"):
      path = paths.normalize(text)
      if not os.path.isfile(path):
        raise UserError(f"--eval_config must be a dict literal or a JSON file, got {text!r}")
      with open(path) as f:
        text = f.read()
    try:
      cfg = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise UserError(f"--eval_config is not a dict literal: {text[:80]!r}") from None
    if not isinstance(cfg, dict):
      raise UserError(f"--eval_config must be a dict, got {type(cfg).__name__}")
    return "--eval_config", cfg
  if args.eval_name:
    names = config.evaluator_names if config else []
    if args.eval_name not in names:
      raise UserError(f"--eval {args.eval_name!r}: the checkpoint's config has evals "
                      f"{', '.join(names) or '(none: not a training workdir)'}")
    return args.eval_name, dict(config.evaluator(args.eval_name))
  return None


def run(args) -> list[dict]:
  if args.batch_size <= 0:
    raise UserError(f"--batch_size must be positive, got {args.batch_size}")
  if args.max_gflops is not None and args.max_ms is not None:
    raise UserError("give at most one of --max_gflops and --max_ms")
  if args.data:
    data_cfg_of(args, None)  # Flag syntax is checked before anything loads.
  if args.seqhw != "all":
    seqhws_of(args.seqhw, None, sys.maxsize)
  if args.label_mapping is not None:
    label_mapping_of(args, None)
  from flexivit_jax.evaluators import loading, sweep
  model, params, config = loading.load_model(args.checkpoint, args.model, args.task)
  data_cfg, pp = data_cfg_of(args, config), pp_of(args, config)
  if (args.task or (config.task if config else None)) == "segmentation":
    return run_segmentation(args, model, params, config, data_cfg, pp)
  evaluator, predictor = sweep.size_evaluator(
      model, params, data=data_cfg, pp=pp, batch_size=args.batch_size,
      label_mapping=label_mapping_of(args, config), name="evaluate")
  shapes = evaluator.batch_shapes()
  evaluator.check_batch_shapes(shapes)
  _, h, w, c = shapes["image"]
  if h != w:
    raise UserError(f"evaluation needs square images; --pp makes {h}x{w}")
  seqhws = seqhws_of(args.seqhw, config, h)
  if args.max_gflops is not None or args.max_ms is not None:
    seqhws = choose(args, model, params, h, c, seqhws)
  rows, progress = _sweep_with_progress(
      args, data_cfg, seqhws,
      lambda per_grid: (f"evaluating {args.checkpoint} on {data_cfg['name']}:"
                        f"{data_cfg['split']} at seqhw {','.join(map(str, seqhws))}: "
                        f"{per_grid} batches of {args.batch_size} per grid"),
      lambda on_batch: sweep.evaluate_sizes(evaluator, predictor.params, seqhws,
                                            on_batch=on_batch))
  for row in rows:
    progress.line(tables.format_eval_row(row))
  return rows


def run_segmentation(args, model, params, config, data_cfg, pp) -> list[dict]:
  """mIoU, pixel accuracy, loss, GFLOPs/image and img/s of a Segmenter at every grid."""
  from flexivit_jax.evaluators import sweep
  ignore = args.ignore_label
  if ignore is None:
    ignore = (config.values.get("ignore_label") if config else None)
  evaluator = sweep.segmentation_evaluator(
      model, params, data=data_cfg, pp=pp, batch_size=args.batch_size,
      ignore_label=255 if ignore is None else ignore, name="evaluate")
  shapes = evaluator.batch_shapes()
  evaluator.check_batch_shapes(shapes)
  if args.max_gflops is not None or args.max_ms is not None:
    raise UserError("--max_gflops/--max_ms choose a grid for classification only; pass "
                    "--seqhw for segmentation")
  seqhws = seqhws_of(args.seqhw, config, min(shapes["image"][1:3]))
  rows, _ = _sweep_with_progress(
      args, data_cfg, seqhws,
      lambda _: (f"evaluating segmentation of {args.checkpoint} on {data_cfg['name']}:"
                 f"{data_cfg['split']} at seqhw {','.join(map(str, seqhws))}"),
      lambda on_batch: sweep.evaluate_segmentation_sizes(evaluator, params, seqhws,
                                                         on_batch=on_batch))
  return rows


def _sweep_with_progress(args, data_cfg: dict, seqhws, heading, sweep_sizes):
  """(rows, progress) of `sweep_sizes(on_batch)` under one progress bar over every batch at
  every seqhw, after the line `heading(batches per grid)`; the bar is closed either way."""
  from flexivit_jax import data
  from flexivit_jax.outputs import console
  num = data.num_eval_batches(data_cfg, args.batch_size) * len(seqhws)
  progress = console.Progress(num, mode=args.progress, batch_size=args.batch_size,
                              unit="batch", every_s=PROGRESS_EVERY_S)
  progress.line(heading(num // len(seqhws)))
  try:
    rows = sweep_sizes(lambda s, _: progress.update(1, seqhw=str(s)))
  finally:
    progress.close()
  return rows, progress


def _workdir_config(checkpoint: str) -> Optional[run_config.RunConfig]:
  """The config.json of a workdir checkpoint (None for files and shortcuts)."""
  return run_config.read(checkpoint) if os.path.isdir(checkpoint) else None


def write_outputs(rows, out: str, label: str) -> list[str]:
  if rows and "miou" in rows[0]:
    return eval_files.write_segmentation_eval(out, rows, label)
  paths = eval_files.write_eval(out, rows)
  paths.append(plots.plot_accuracy_vs_gflops({label: rows},
                                             os.path.join(out, eval_files.EVAL_PNG)))
  return paths


def run_feature_eval(args, name: str, cfg: dict, model, params, config) -> list[str]:
  """A few-shot or retrieval evaluator at every seqhw: prints its table, writes its files."""
  from flexivit_jax.evaluators import sweep
  from flexivit_jax.outputs import eval_files
  pp = cfg.get("pp") or cfg.get("pp_eval")
  side = run_config.pp_image_side(pp) if isinstance(pp, str) else None
  if side is None:
    raise UserError(f"{name}: its pp {pp!r} must make square images of a fixed size")
  seqhws = seqhws_of(args.seqhw, config, side)
  print(f"running {name} ({cfg.get('type')}) on {args.checkpoint} at seqhw "
        f"{','.join(map(str, seqhws))}")
  results = sweep.evaluate_features(model, params, name, cfg, seqhws,
                                    batch_size=args.batch_size,
                                    data_dir=args.data_dir or (config and config.data_dir))
  about = {"checkpoint": args.checkpoint, "evaluator": name, "config": cfg}
  if cfg["type"] == "retrieval":
    report = eval_files.retrieval_report(results, side, cfg.get("ks", (1, 5)))
    for k in report["recall"]:
      print(tables.format_recall_matrix(report, k) + "\n")
    return eval_files.write_retrieval(args.out, report, about) if args.out else []
  rows = eval_files.fewshot_rows(results, side)
  print(tables.format_fewshot_table(rows))
  return [eval_files.write_fewshot(args.out, rows, about)] if args.out else []


def run_named(args, name: str, cfg: dict) -> Optional[list[str]]:
  """--eval/--eval_config: a classification or segmentation config becomes --data/--pp
  (and --task/--ignore_label; None: run as usual); other types run here (the paths of the files written)."""
  from flexivit_jax import evaluators
  evaluators.check_config(name, cfg)
  kind = cfg.get("type", "classification")
  if kind in ("classification", "segmentation"):
    data = cfg["data"]
    args.data, args.pp = f"{data['name']}:{data['split']}", cfg["pp"]
    if "label_mapping" in cfg and args.label_mapping is None:
      args.label_mapping = str(cfg["label_mapping"])
    if kind == "segmentation":
      args.task = "segmentation"
      if "ignore_label" in cfg and args.ignore_label is None:
        args.ignore_label = cfg["ignore_label"]
    return None
  from flexivit_jax.evaluators import loading
  model, params, config = loading.load_model(args.checkpoint, args.model)
  return run_feature_eval(args, name, cfg, model, params, config)


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  named = named_eval_config(args, _workdir_config(args.checkpoint) if args.eval_name else None)
  if named:
    written = run_named(args, *named)
    if written is not None:
      for path in written:
        print(f"wrote {path}")
      return
  rows = run(args)
  print(tables.format_segmentation_table(rows) if rows and "miou" in rows[0]
        else tables.format_eval_table(rows))
  if args.out:
    label = os.path.basename(os.path.normpath(args.checkpoint))
    for path in write_outputs(rows, args.out, label):
      print(f"wrote {path}")


if __name__ == "__main__":
  main()

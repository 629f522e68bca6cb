"""Eval results by name: a flexi value as a label, `eval/NAME/LABEL/prec@1` metric names, and the curves read back from them."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

# A flexi value as a hashable key, e.g. (("seqhw", 4),) or (("patch_size", (8, 8)),).
FlexiKey = Tuple[Tuple[str, Any], ...]
# The headline metric of each evaluator type: classification's prec@1, segmentation's miou.
HEADLINE_METRICS = ("prec@1", "miou")


def seqhw_side(seqhw) -> int:
  """Tokens along the height, for an int or an (h, w) seqhw."""
  return seqhw if isinstance(seqhw, int) else seqhw[0]


# ----------------------------------------------------------------------------
# Eval metric names: 'eval/<evaluator>/<flexi label>/<metric>', written and parsed here only.


def flexi_label(key: FlexiKey) -> str:
  """(("seqhw", 4),) -> 'seqhw=4'; (("patch_size", (8, 8)),) -> 'patch_size=8x8'."""
  fmt = lambda v: "x".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
  return ",".join(f"{k}={fmt(v)}" for k, v in key)


def parse_flexi_label(label: str) -> FlexiKey:
  """The inverse of `flexi_label`."""
  out = []
  for item in label.split(","):
    name, _, text = item.partition("=")
    value = tuple(int(x) for x in text.split("x")) if "x" in text else int(text)
    out.append((name, value))
  return tuple(out)


def eval_metric_name(evaluator: str, key: FlexiKey, metric: str = "prec@1") -> str:
  return f"eval/{evaluator}/{flexi_label(key)}/{metric}"


def parse_eval_metric_name(name: str) -> Optional[Tuple[str, FlexiKey, str]]:
  """'eval/test/seqhw=4/prec@1' -> ('test', (('seqhw', 4),), 'prec@1'); else None."""
  parts = name.split("/")
  if len(parts) != 4 or parts[0] != "eval":
    return None
  try:
    return parts[1], parse_flexi_label(parts[2]), parts[3]
  except ValueError:
    return None


def seqhw_and_patch(key: FlexiKey, image_size: Optional[int]
                     ) -> Tuple[Optional[int], Optional[int]]:
  """Tokens and pixels per side of a flexi value (None where not known)."""
  side = lambda v: v if isinstance(v, int) else v[0]
  values = dict(key)
  if "seqhw" in values:
    seqhw = side(values["seqhw"])
    return seqhw, (image_size // seqhw if image_size else None)
  if "patch_size" in values:
    patch = side(values["patch_size"])
    return (image_size // patch if image_size else None), patch
  return None, None


def flexi_sort_key(key: FlexiKey, image_size: Optional[int]):
  seqhw, patch = seqhw_and_patch(key, image_size)
  return (seqhw if seqhw is not None else -(patch or 0), flexi_label(key))


def eval_curve_over_compute(rows: Iterable[Mapping[str, Any]], evaluator: Optional[str] = None
                            ) -> list:
  """[(cumulative GFLOPs, {seqhw: prec@1})] of every eval row that logged its compute.

  `evaluator` defaults to the first name (sorted) found in the rows.
  """
  points = []
  for row in rows:
    if "compute/gflops" not in row:
      continue
    accs = {}
    for key, value in row.items():
      parsed = parse_eval_metric_name(key)
      if parsed and parsed[2] == "prec@1" and [k for k, _ in parsed[1]] == ["seqhw"]:
        evaluator = evaluator or parsed[0]
        if parsed[0] == evaluator:
          accs[parsed[1][0][1]] = value
    if accs:
      points.append((row["compute/gflops"], accs))
  return points


def _last_eval_row(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
  last: Mapping[str, Any] = {}
  for row in rows:
    if any(k.startswith("eval/") for k in row):
      last = row
  return last


def final_eval_curves(rows: Iterable[Mapping[str, Any]]
                      ) -> Dict[str, Dict[FlexiKey, float]]:
  """{evaluator: {flexi key: headline metric}} from the last eval row of a metrics.jsonl:
  prec@1 of a classification evaluator, miou of a segmentation one (`final_eval_metrics`)."""
  curves: Dict[str, Dict[FlexiKey, float]] = {}
  for key, value in _last_eval_row(rows).items():
    parsed = parse_eval_metric_name(key)
    if parsed and parsed[2] in HEADLINE_METRICS:
      curves.setdefault(parsed[0], {})[parsed[1]] = value
  return curves


def final_eval_metrics(rows: Iterable[Mapping[str, Any]]) -> Dict[str, str]:
  """{evaluator: the headline metric its curve in `final_eval_curves` holds}."""
  out: Dict[str, str] = {}
  for key in _last_eval_row(rows):
    parsed = parse_eval_metric_name(key)
    if parsed and parsed[2] in HEADLINE_METRICS:
      out[parsed[0]] = parsed[2]
  return out

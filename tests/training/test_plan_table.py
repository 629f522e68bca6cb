"""benchmarks/plan_table.py (docs/scaling.md's recipe x topology table) at runlocal size:
rows with before / defaults / fewest / after, extrapolated rows marked, measurements kept
in a cache file and reused without compiling."""
import json
import sys

import pytest

from conftest import REPO
from flexivit_jax.training import plan

sys.path.insert(0, str(REPO / "benchmarks"))
import plan_table  # pylint: disable=g-import-not-at-top,wrong-import-position

ROWS = [("i21k_sup.py:runlocal", "v3-8", "confirm"),
        ("i21k_sup.py:runlocal", "1xH100", "extrapolate")]  # 8 per device, from v3-8's 1.
FIELDS = {"settings", "per_device_batch", "microbatch", "memory_gib", "total_gib", "fits",
          "tflop_per_step", "step_s", "measured_at", "exact", "compile_s"}


def test_rows_have_every_field_and_reuse_the_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(plan, "_MEASURED", {})
  cache = str(tmp_path / "cache.json")
  rows = plan_table.table(ROWS, cache=cache, log=lambda s: None)
  exact, extrapolated = rows
  for row in rows:
    assert "error" not in row, row
    for name in ("before", "defaults", "fewest", "after"):
      assert FIELDS <= set(row[name]), (name, row[name])
      assert row[name]["fits"] and row[name]["total_gib"] > 0
    # The runlocal config is float32, no remat, one microbatch: before is its defaults.
    assert row["before"]["settings"]["model.dtype_mm"] == "float32"
    assert row["before"]["total_gib"] == pytest.approx(row["defaults"]["total_gib"])
    assert row["after_is"] == "defaults" and row["fewest_overrides"] == {"grad_accum_steps": 1}
  assert exact["before"]["exact"] and exact["before"]["compile_s"] > 0
  assert extrapolated["topology"] == "1xH100" and extrapolated["devices"] == 1
  assert extrapolated["before"]["per_device_batch"] == 8 and not extrapolated["before"]["exact"]
  assert extrapolated["before"]["measured_at"] == [1, 1]  # v3-8's compiles, none of its own.
  # A confirmed row also plans bf16 + remat with one microbatch (its own compile).
  assert exact["remat"]["settings"]["model.remat_policy"] == "nothing_saveable"
  assert exact["remat"]["exact"] and extrapolated["remat"] is None
  text = plan_table.markdown(rows)
  assert text.count("\n") == 4 and "| i21k_sup:runlocal | 1xH100 (80 GiB) | ~" in text
  assert plan_table.markdown_remat(rows).count("\n") == 3

  # A new process (empty cache in memory) reads the file and compiles nothing.
  monkeypatch.setattr(plan, "_MEASURED", {})
  monkeypatch.setattr(plan, "_measure", lambda *a: pytest.fail("compiled again"))
  again = plan_table.table(ROWS, cache=cache, log=lambda s: None)
  assert [r["after"]["total_gib"] for r in again] == [r["after"]["total_gib"] for r in rows]
  assert json.load(open(cache))["measurements"][0]["cost"]["compile_seconds"] > 0


def test_rows_parse_and_the_default_table_covers_every_recipe():
  assert plan_table.parse_row("i21k_sup.py@v3-8!") == ("i21k_sup.py", "v3-8", "confirm")
  assert plan_table.parse_row("transfer.py:seqhw=8~") == ("transfer.py:seqhw=8", None,
                                                          "extrapolate")
  rows = plan_table.default_rows()
  assert {c for c, _, _ in rows} == set(plan_table.RECIPES)
  for recipe in plan_table.RECIPES:  # Its own pod and 8x H100.
    topologies = {t or plan_table._load(recipe).topology for c, t, _ in rows if c == recipe}  # pylint: disable=protected-access
    assert {plan_table._load(recipe).topology, "8xH100"} <= topologies  # pylint: disable=protected-access
  for variant in "BL":
    topologies = {t for c, t, _ in rows if c == f"i1k_deit3_distill.py:variant={variant}"}
    assert {"v3-32", "v4-64"} <= topologies

"""The exploration notebook runs top to bottom offline (nbclient), failing on any error."""
import os

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "explore_flexivit.ipynb"


@pytest.mark.slow
def test_notebook_executes(digits_data_dir, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FLEXIVIT_NOTEBOOK_STEPS", "10")  # The kernel inherits the environment.
  monkeypatch.setenv("FLEXIVIT_OFFLINE", "1")  # The released-checkpoint cell skips, one line.
  monkeypatch.setenv("FLEXIVIT_DATA_DIR", digits_data_dir)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO), os.environ.get("PYTHONPATH", "")]))
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # Raises CellExecutionError on any failing cell.
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "relative token error" in outputs and "GFLOPs/img" in outputs and "CKA" in outputs
  assert "offline: skipped the released FlexiViT-B" in outputs

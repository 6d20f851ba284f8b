"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel, committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# what each notebook's outputs must show, and a file it must leave
EXPECTED = {
    "quickstart.ipynb": (["corpus items indexed", "| planted |"], "report/report.json"),
    "explore.ipynb": (["pairs around the threshold", "recomputed at threshold 0.95", "report.html:"],
                      "report-0.95/report.html"),
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERLAP_AUDIT_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    markers, leaves = EXPECTED[path.name]
    for marker in markers:
        assert marker in outputs
    assert (tmp_path / leaves).exists()


def test_there_is_a_notebook():
    assert NOTEBOOKS and {p.name for p in NOTEBOOKS} == set(EXPECTED)

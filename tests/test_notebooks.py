"""The notebooks are executed so they can never go stale, and stored executed so they read well on a code host.

Each notebook keeps to about 30 s of CPU (small inputs, random weights, a few training steps). The default suite
runs the quickstart; the others, 130 s of CPU together, run under the `slow` marker (CI's second step), which keeps
the default suite within its CPU budget. They are stored with their outputs by ``python notebooks/execute.py``.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.slow import slow_except

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", slow_except(NOTEBOOKS, default=[p for p in NOTEBOOKS if p.name == "01_quickstart.ipynb"]),
                         ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The kernel inherits the environment: Ultralytics stays offline, and torch runs on one thread (these are
    # small models: a second thread gains little, and on a busy machine two threads spin against each other).
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed(path):
    """Every code cell has its outputs, from one run in order, and none is an error (no execution needed)."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    missing = [i for i, cell in enumerate(code, 1) if not cell.get("outputs")]
    assert not missing, f"{path.name}: code cells {missing} have no stored outputs; run `python notebooks/execute.py {path.name}`"
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name} was not stored from one run in order: execution counts {counts}"
    errors = [(i, o.get("ename")) for i, cell in enumerate(code, 1) for o in cell.outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored error outputs in code cells {errors}"
    streams = [(i, o.get("text", "")[:80]) for i, cell in enumerate(code, 1) for o in cell.outputs
               if o.get("output_type") == "stream" and o.get("name") == "stderr" and "Traceback" in o.get("text", "")]
    assert not streams, f"{path.name}: tracebacks on stderr in code cells {streams}"


def test_user_guide_plugin_example_is_the_one_notebook_05_runs():
    guide = (Path(__file__).parent.parent / "docs" / "guide.md").read_text(encoding="utf-8")
    section = guide.split("### Your own plugin", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0].strip()
    notebook = nbformat.read(Path(__file__).parent.parent / "notebooks" / "05_your_own_recipe.ipynb", as_version=4)
    assert any(example in cell.source for cell in notebook.cells if cell.cell_type == "code")

"""Execute notebooks in place and store them with their outputs, so they read well on a code host.

    python notebooks/execute.py                       # every notebook in this folder
    python notebooks/execute.py notebooks/02_*.ipynb  # some of them

Each notebook runs in a fresh kernel from its own folder, with timing metadata left out, execution
counts from 1 and the kernel's version details stripped, so re-running an unchanged notebook changes
no more than what its outputs compute. The notebooks seed torch themselves. Run it with the
``notebooks`` extra installed (``pip install -e ".[notebooks]"``); YOLO_OFFLINE=1 is set for
Ultralytics. tests/test_notebooks.py executes the same notebooks and checks the stored ones.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

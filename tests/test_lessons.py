"""Every lesson notebook runs top to bottom: a lesson that stops running is a failing test.

The lessons check their own claims with ``assert``, so executing them is the test.
They run in a fresh kernel of *this* interpreter (``sys.executable``), headless
(MPLBACKEND=Agg), from the lessons folder, importing this checkout's minilm.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A Jupyter data dir whose "python3" kernelspec launches sys.executable.

    JUPYTER_PATH comes first in Jupyter's search path, so a "python3" spec in a
    user's own Jupyter folders (which may point at another interpreter) cannot
    shadow this one.
    """
    data = tmp_path_factory.mktemp("jupyter")
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minilm tests)",
        "language": "python",
    }))
    return data


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_runs(path, kernel_dir, monkeypatch):
    # The kernel inherits this process's environment when it starts.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        p for p in (str(kernel_dir), os.environ.get("JUPYTER_PATH")) if p))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(LESSONS)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        error = ANSI_ESCAPE.sub("", str(err))  # the kernel colours its tracebacks
    if error is not None:
        pytest.fail(f"{path.name}: a cell raised an error\n{error}", pytrace=False)

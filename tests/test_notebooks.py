"""The notebooks in notebooks/ run top to bottom (each in a fresh temp working folder) and
are committed without outputs.

The kernel is this interpreter's: a kernelspec named ``python3`` pointing at
``sys.executable`` is written to a temp folder put first on ``JUPYTER_PATH``, so a
``python3`` kernelspec elsewhere (a user's ``~/.local/share/jupyter``) cannot swap in an
interpreter without autodim.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = {"01_quickstart.ipynb", "02_compare_methods.ipynb", "03_inspect_plan.ipynb",
            "04_own_csv.ipynb"}


def test_the_notebooks_are_there_and_stripped():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: commit notebooks with outputs cleared")


@pytest.fixture()
def venv_kernel(tmp_path_factory, monkeypatch):
    """A ``python3`` kernelspec for this interpreter, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (autodim tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    # Plotting in a kernel without a display: plotly's default renderers are fine; keep
    # Lightning and Optuna from writing progress bars into the outputs.
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, venv_kernel):
    nb = nbformat.read(path, as_version=4)
    # A last cell proves which interpreter ran the notebook.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable

"""Execute every example notebook (examples/*.ipynb) so that they cannot rot.

Each runs as ``python examples/run_notebooks.py`` runs it: a fresh ``python3`` kernel with the
repository root as working directory, so the kernel imports this checkout's ``ode_jax``. The
committed notebooks are never rewritten: the executed copy goes to a temporary folder. Any cell
error (including a failed ``assert``) fails the test. To refresh the committed outputs:
``python examples/run_notebooks.py``.
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def _load_runner():
    """examples/run_notebooks.py as a module (examples/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "examples" / "run_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_notebooks = _load_runner()


def test_examples_exist():
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "adjoints.ipynb",
        "training.ipynb",
    }


# The quickstart runs by default; the other notebooks (16-26 s each) with -m slow.
@pytest.mark.parametrize(
    "path",
    [p if p.stem == "quickstart" else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    try:
        run_notebooks.execute(nb)  # raises CellExecutionError, naming the cell, on the first error
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a post-mortem

"""Re-execute the example notebooks in place, so that their committed outputs are current.

    python examples/run_notebooks.py                      # every examples/*.ipynb
    python examples/run_notebooks.py examples/quickstart.ipynb

Each notebook runs in a fresh ``python3`` kernel whose working directory is the repository
root, so ``import ode_jax`` finds this checkout even without ``pip install -e .``. For each
notebook the wall time and the kernel's CPU time (kernel start included) are printed.
tests/test_notebooks.py runs the same notebooks without writing them.
"""

import resource
import sys
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT_S = 120


def execute(nb: nbformat.NotebookNode) -> None:
    """Run every cell of ``nb`` in a fresh kernel started in the repository root, writing the
    outputs into ``nb``; raises ``nbclient.exceptions.CellExecutionError`` at the first cell
    that fails."""
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or sorted((ROOT / "examples").glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        cpu_start = _children_cpu_s()
        nb = nbformat.read(path, as_version=4)
        execute(nb)
        wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu_start
        nbformat.write(nb, path)
        print(f"{path}: executed in {wall:.1f} s wall, kernel CPU {cpu:.1f} s", flush=True)


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (the shut-down kernels)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main(sys.argv[1:])

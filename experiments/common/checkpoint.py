"""Atomic, resumable checkpoints with no code on load.

A checkpoint is ``state_STEP.eqx`` (the model and optimiser arrays, written with
``eqx.tree_serialise_leaves``) plus ``checkpoint.json`` (step, histories, timings, the config,
and the name of the state file). Each file is written to a temporary name and moved into place
with ``os.replace``; ``checkpoint.json`` is written last, so a run killed at any moment leaves
the previous complete checkpoint. Loading reads arrays into a freshly built tree of the same
structure: nothing is unpickled or executed.

The best model so far (model selection) is kept the same way in its own folder:
``model.eqx`` plus ``best.json``, written last.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import equinox as eqx

META = "checkpoint.json"
BEST_MODEL, BEST_META = "model.eqx", "best.json"


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(folder, step: int, tree, meta: dict):
    """Write ``tree`` (a pytree of arrays) and ``meta`` (JSON-able) as the latest checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_name = f"state_{step:08d}.eqx"
    _atomic_write(folder / state_name, lambda f: eqx.tree_serialise_leaves(f, tree))
    record = dict(meta, step=step, state_file=state_name)
    _atomic_write(folder / META, lambda f: f.write(json.dumps(record, indent=1).encode()))
    for old in folder.glob("state_*.eqx"):
        if old.name != state_name:
            old.unlink(missing_ok=True)


def load(folder, like):
    """Return ``(tree, meta)`` of the latest checkpoint in ``folder``, or None if there is none.

    ``like`` is a pytree with the saved structure, shapes and dtypes (e.g. a freshly
    initialised model and optimiser state); its arrays are replaced by the saved ones.
    """
    folder = Path(folder)
    if not (folder / META).exists():
        return None
    meta = json.loads((folder / META).read_text())
    tree = eqx.tree_deserialise_leaves(folder / meta["state_file"], like)
    return tree, meta


def save_best(folder, model, meta: dict):
    """Write ``model`` and ``meta`` (JSON-able) as the best model so far."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / BEST_MODEL, lambda f: eqx.tree_serialise_leaves(f, model))
    _atomic_write(folder / BEST_META, lambda f: f.write(json.dumps(meta).encode()))


def read_best(folder) -> dict | None:
    """The ``meta`` of the best model in ``folder``, or None if there is none."""
    path = Path(folder) / BEST_META
    return json.loads(path.read_text()) if path.exists() else None


def clear_best(folder):
    """Remove the best model of an earlier run (a run starting from scratch)."""
    shutil.rmtree(folder, ignore_errors=True)

"""Multi-process runs on JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same experiment command. After :func:`initialize`, ``jax.devices()``
lists the devices of all processes, so the harness's 1-d "data" mesh spans them; each process
computes only its own rows of the global batch, the train step all-reduces the gradient, and
the parameters stay replicated. Process 0 alone writes files (checkpoints, metrics, figures);
it reads a checkpoint on resume and broadcasts it, so the other processes need no shared disk.

A run is multi-process when it is given a coordinator address, by the config fields
``coordinator``/``num_processes``/``process_id`` or by the environment variables
``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` (what
``python -m experiments.launch`` sets); the fields win. Otherwise nothing here does anything.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def settings(cfg) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` of a multi-process run, or None."""
    coordinator = cfg.coordinator or os.environ.get(ENV_COORDINATOR, "")
    num = cfg.num_processes or int(os.environ.get(ENV_NUM_PROCESSES, "1"))
    pid = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get(ENV_PROCESS_ID, "-1"))
    if num == 1 and pid <= 0:
        return None  # a single process, with or without a coordinator address
    if not coordinator or not 0 <= pid < num:
        raise ValueError(
            f"a multi-process run needs a coordinator address and a process id in "
            f"[0, {num}); got coordinator={coordinator!r}, process_id={pid} (set --coordinator, "
            f"--num-processes, --process-id or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
            f"{ENV_PROCESS_ID}; `python -m experiments.launch` sets them)"
        )
    return coordinator, num, pid


def initialize(cfg):
    """Join the multi-process run ``cfg`` describes (see the module docstring); a no-op for a
    single process or when already joined. Call it before any JAX computation."""
    found = settings(cfg)
    if found is None or jax.distributed.is_initialized():
        return
    coordinator, num, pid = found
    # Cross-process collectives on CPU (the default in recent JAX; older ones have none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num, pid, initialization_timeout=120)
    except RuntimeError as e:
        raise RuntimeError(
            f"process {pid}/{num} could not join the run at {coordinator}: {e} "
            "(jax.distributed.initialize must run before any JAX computation)"
        ) from e


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one when single)."""
    return jax.process_index() == 0


def broadcast(tree):
    """Process 0's ``tree`` (a pytree of arrays, the same structure on every process)."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.broadcast_one_to_all(tree)


def broadcast_json(value):
    """Process 0's ``value`` (anything JSON can hold; the others may pass anything)."""
    if jax.process_count() == 1:
        return value
    data = json.dumps(value).encode() if is_writer() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(size, np.uint8)
    buffer[: len(data)] = np.frombuffer(data, np.uint8)
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())


def to_local(tree):
    """Fully replicated arrays that span other processes' devices as this process's copy (a
    one-device array), so that eager code after training (figures) runs locally."""
    if jax.process_count() == 1:
        return tree

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree.map(local, tree)

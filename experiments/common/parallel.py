"""Data parallelism: a 1-d device mesh over the batch axis, parameters replicated.

In a multi-process run (:mod:`.distributed`) ``jax.devices()`` holds every process's devices,
so the same mesh spans processes and hosts; each process then owns the rows of the global
batch that live on its own devices.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(num_devices: int = 0) -> Mesh:
    """A mesh with one axis, "data", over the first ``num_devices`` devices (0: all)."""
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
    return Mesh(np.array(devices[: num_devices or len(devices)]), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split every array's leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch, mesh: Mesh):
    return jax.device_put(batch, batch_sharding(mesh))


def make_global_batch(get_batch, mesh: Mesh):
    """``key -> batch``: the global batch of the (jittable) ``get_batch``, sharded over ``mesh``.

    One process: ``get_batch`` then :func:`shard_batch`. Several: ``get_batch`` compiled with a
    sharded output, so each process computes only its own rows (with JAX's default
    partitionable threefry, random draws equal the unsharded ones, so the global batch does not
    depend on the number of processes).
    """
    if jax.process_count() == 1:
        return lambda key: shard_batch(get_batch(key), mesh)
    return jax.jit(get_batch, out_shardings=batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
    return eqx.filter_shard(tree, replicated(mesh))

"""Data parallelism: a 1-d device mesh over the batch axis, parameters replicated."""

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


def replicate(tree, mesh: Mesh):
    return eqx.filter_shard(tree, replicated(mesh))

"""The device mesh, the logical-axis rules, and the shardings derived from them.

All parallelism is written down here and in `mesh.rules` (config): the model names its parameter
axes logically (`embed`, `mlp`, `heads`, ...), the rules map each logical name to mesh axes
(`data`, `fsdp`, `tensor`), and every `NamedSharding` of parameters, optimizer state and batches is
derived from that table. A strategy change (data parallel, FSDP, tensor parallel, a mix) is a
config change.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalelab.config import ConfigError

MESH_AXES = ("data", "fsdp", "expert", "tensor")


def mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
    """Axis sizes from config, filling the one -1 axis with the devices left over."""
    sizes = {a: int(getattr(mesh_cfg, a)) for a in MESH_AXES}
    free = [a for a, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh.{free[1]}", f"only one mesh axis may be -1; got {', '.join(free)}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n_devices % fixed:
            raise ConfigError(
                f"mesh.{free[0]}",
                f"cannot fill: {n_devices} devices do not divide by the other axes' product {fixed}",
            )
        sizes[free[0]] = n_devices // fixed
    product = math.prod(sizes.values())
    if product != n_devices:
        shown = " x ".join(f"{a}={sizes[a]}" for a in MESH_AXES)
        raise ConfigError("mesh", f"{shown} = {product} devices, but {n_devices} are available")
    return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # CPU devices or unusual topologies: plain order
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def mesh_axes_of(rule) -> tuple[str, ...]:
    if rule is None:
        return ()
    if isinstance(rule, str):
        return (rule,)
    return tuple(rule)


def logical_to_spec(logical_axes, rules, mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for a tensor with the given logical axis names.

    A mesh axis is used at most once per tensor (the first logical axis that asks for it wins);
    axes of size 1 are dropped, so a one-device mesh gives fully replicated specs.
    """
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        if name is None:  # a dimension no rule splits (activations' hints use it)
            spec.append(None)
            continue
        if name not in rules:
            raise ConfigError(f"mesh.rules.{name}", f"no rule for logical axis {name!r}")
        axes = []
        for a in mesh_axes_of(rules[name]):
            if a not in MESH_AXES:
                raise ConfigError(f"mesh.rules.{name}", f"unknown mesh axis {a!r} (known: {', '.join(MESH_AXES)})")
            if a in used or (mesh is not None and mesh.shape[a] == 1):
                continue
            used.add(a)
            axes.append(a)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def check_divisible(key: str, what: str, shape, spec: PartitionSpec, mesh: Mesh, logical=None) -> None:
    """Raise ConfigError(key) when a dimension of `what` does not split evenly over its mesh axes."""
    for dim, (size, entry) in enumerate(zip(shape, spec)):
        name = f" ({logical[dim]})" if logical else ""
        axes = mesh_axes_of(entry)
        ways = math.prod(mesh.shape[a] for a in axes)
        if size % ways:
            raise ConfigError(
                key,
                f"{what} dimension {dim}{name} of size {size} cannot be split {ways} ways over mesh axis "
                f"{'+'.join(axes)} (mesh {dict(mesh.shape)})",
            )


def param_shardings(axes_tree, shapes_tree, rules, mesh: Mesh):
    """NamedShardings for a parameter tree, checking every split dimension divides evenly."""

    def one(path, axes, shape):
        spec = logical_to_spec(axes, rules, mesh)
        axis = next((a for e in spec for a in mesh_axes_of(e)), "tensor")
        check_divisible(f"mesh.{axis}", f"parameter {jax.tree_util.keystr(path)}", shape, spec, mesh, axes)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(rules, mesh: Mesh, batch_size: int, key: str = "train.batch_size") -> NamedSharding:
    spec = logical_to_spec(("batch", "seq"), rules, mesh)
    check_divisible(key, f"a batch of {batch_size} sequences", (batch_size, 1), spec, mesh, ("batch", "seq"))
    return NamedSharding(mesh, spec)


def batch_shards(rules, mesh: Mesh, batch_size: int) -> int:
    """Into how many pieces the batch is split over the mesh."""
    sharding = batch_sharding(rules, mesh, batch_size)
    return batch_size // sharding.shard_shape((batch_size, 1))[0]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())

"""The placement table printed at the start of a run: what lives where, and what it costs per device."""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import jax


def _group(path: str) -> str:
    """['blocks']['3']['attn']['wq'] -> blocks.*.attn.wq"""
    keys = re.findall(r"\['([^']+)'\]", path)
    return ".".join("*" if k.isdigit() else k for k in keys)


def per_device_bytes(tree, shardings) -> int:
    """Bytes of the largest shard of every array, summed: the memory one device holds."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = sharding.shard_shape(leaf.shape) if hasattr(sharding, "shard_shape") else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def table(fns, steps, mesh) -> str:
    param_sh = steps.state_shardings["params"]
    groups: OrderedDict[str, dict] = OrderedDict()
    leaves = jax.tree_util.tree_leaves_with_path(fns.shapes, is_leaf=lambda x: isinstance(x, tuple))
    axes = jax.tree.leaves(fns.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
    shardings = jax.tree.leaves(param_sh)
    for (path, shape), ax, sh in zip(leaves, axes, shardings):
        g = groups.setdefault(_group(jax.tree_util.keystr(path)),
                              {"count": 0, "shape": shape, "axes": ax, "spec": sh.spec})
        g["count"] += 1
    abstract = jax.eval_shape(steps.init_state, 0)
    params_bytes = per_device_bytes(abstract["params"], param_sh)
    opt_bytes = per_device_bytes(abstract["opt_state"], steps.state_shardings["opt_state"])
    lines = [f"placement on mesh {dict(mesh.shape)} ({mesh.devices.size} devices):",
             f"  {'parameter':<24}{'x':>4}  {'shape':<18}{'logical axes':<32}sharding"]
    for name, g in groups.items():
        lines.append(f"  {name:<24}{g['count']:>4}  {str(g['shape']):<18}{str(g['axes']):<32}{g['spec']}")
    lines.append(f"  per device: parameters {params_bytes / 2**20:,.2f} MiB + optimizer state "
                 f"{opt_bytes / 2**20:,.2f} MiB = {(params_bytes + opt_bytes) / 2**20:,.2f} MiB")
    return "\n".join(lines)

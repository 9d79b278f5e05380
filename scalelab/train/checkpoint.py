"""Orbax checkpoints of a run: train state, data iterator state and run metadata, saved together.

This module is the one that knows the layout: `RUN_DIR/checkpoints/<step>/{state,data,meta}`
(finding a run's checkpoint, restoring the whole state, restoring only the parameters, reading the
metadata), and `RUN_DIR/checkpoint_files/<step>.json`, the size (and, for small files, the CRC32)
of every file of a complete checkpoint, written by the main process once Orbax has finished it.

Saves are asynchronous (training goes on while the previous save is written; Orbax writes into a
temporary directory and renames it when complete, so a kill mid-save leaves no half checkpoint
under a step name). The newest `checkpoint.keep` are kept, and every step of `checkpoint.steps`
(WSD fork points) whatever `keep` says; an older checkpoint is deleted only after a newer one is
complete. Restoring takes the target shardings, so a checkpoint written on one mesh loads onto any
other.

A checkpoint that fails to restore is set aside (moved to `checkpoints_damaged/` by the main
process, with a warning, and the next older one tried) only when its files prove it damaged:
a missing or truncated file, a checksum that differs, unreadable metadata. Any other failure
(a transient filesystem error, memory exhaustion, a library that cannot read its own format any
more) ends the run with CheckpointError naming the checkpoint and leaves every checkpoint in place:
setting those aside would walk a run's every checkpoint away and restart it at step 0.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from scalelab import paths
from scalelab.runfiles import CHECKPOINT_FILES, CHECKPOINTS, DAMAGED, SUMMARY
from scalelab.runtime import consensus, faults

log = logging.getLogger("scalelab")

FILE_LISTS = CHECKPOINT_FILES  # <step>.json: what a complete checkpoint holds
CHECKSUM_MAX_BYTES = 1 << 20  # files up to this size get a CRC32 (metadata, OCDBT manifests); larger ones a size
ITEMS = ("state", "data", "meta")
# what every complete checkpoint holds, and which of it is JSON
REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "data/metadata", "meta/metadata")


class CheckpointError(RuntimeError):
    pass


class DiskFull(CheckpointError):
    """The disk under a run's checkpoints cannot hold the next one; nothing of it was written."""


# a save needs the state's bytes plus Orbax's metadata and the step's file list
SAVE_MARGIN_BYTES = 1 << 20


def ensure_space(run_dir: Path, step: int, state, held: list[int]) -> None:
    """Raise DiskFull, the same on every process, when the checkpoint directory's disk has less
    free space than checkpoint `step` will take: a save that ran out of space midway would fail in
    Orbax's background threads with a torrent of errors and a half-written temporary directory."""
    need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) * 1.1 + SAVE_MARGIN_BYTES
    where = checkpoint_dir(run_dir)
    free = shutil.disk_usage(where if where.exists() else run_dir).free
    if consensus.any_process(free < need):
        kept = f"checkpoint {max(held)} is intact" if held else "no checkpoint was saved yet"
        raise DiskFull(f"no space left on device under {where} for checkpoint {step} (it needs about "
                       f"{need / 2**20:.1f} MiB; {free / 2**20:.1f} MiB free on this process's disk): {kept}; "
                       "free space and run the same command to resume")


class NoCheckpoint(CheckpointError, FileNotFoundError):
    """The path names no checkpoint (neither a run with checkpoints nor a step directory)."""


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir).resolve() / CHECKPOINTS


def _target(abstract_tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def _is_main() -> bool:
    return jax.process_index() == 0


def _options(keep: int, steps, async_save: bool) -> ocp.CheckpointManagerOptions:
    """Keep the newest `keep` and every step of `steps`, whichever deletes less."""
    preserve = policies.AnyPreservationPolicy([policies.LatestN(n=keep), policies.CustomSteps(list(steps))])
    return ocp.CheckpointManagerOptions(
        preservation_policy=preserve, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True,
    )


class Checkpointer:
    """A run's own checkpoints, read and written; `Checkpointer.reader` opens another run's."""

    def __init__(self, run_dir, keep: int = 2, async_save: bool = True, steps=(), read_only: bool = False,
                 on_complete=None):
        self.run_dir = Path(run_dir).resolve()
        self.read_only = read_only
        self.on_complete = on_complete  # called once complete checkpoints are listed (a mirror's upload)
        # read-only: no directory created, no temporary directory cleaned (it may be a save in
        # progress of the run that owns it), nothing deleted
        if read_only:
            self._options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                                         enable_async_checkpointing=False)
        else:
            self._options = _options(keep, steps, async_save)
        self.manager = ocp.CheckpointManager(checkpoint_dir(self.run_dir), options=self._options,
                                             item_names=ITEMS)
        self._unlisted: list[int] = []  # saved steps whose file lists are not written yet

    @classmethod
    def reader(cls, run_dir) -> Checkpointer:
        """Another run's checkpoints (a WSD fork's stable run, perhaps still training), read-only."""
        return cls(run_dir, read_only=True)

    def save(self, step: int, state, data_state: dict, meta: dict, force: bool = False) -> bool:
        """Save `step` (False if not saved). A step already held is kept as it is: a packed member
        that resumed behind its newest checkpoint retrains to it bitwise (see `PackedGroup.start`)."""
        if step in self.manager.all_steps():
            return False
        faults.maybe_fail("save", f"checkpoint {checkpoint_dir(self.run_dir) / str(step)}")
        ensure_space(self.run_dir, step, state, self.steps())
        if _is_main():
            file_list(self.run_dir, step).unlink(missing_ok=True)  # a set-aside step saved again
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )
        # Orbax's save waits for the previous one: every step saved before this one is complete
        self._list_files()
        if saved:
            self._unlisted.append(step)
        if not self._options.enable_async_checkpointing:
            self._list_files()
        return saved

    def _list_files(self) -> None:
        unlisted, self._unlisted = self._unlisted, []
        if _is_main() and not self.read_only:
            write_file_lists(self.run_dir, unlisted)
            if unlisted and self.on_complete is not None:
                self.on_complete()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return checkpoint_dir(self.run_dir) / str(step)

    def restore_step(self, step: int, abstract_state, shardings):
        """(state, data_state, meta) of the checkpoint at `step`, placed with `shardings`."""
        faults.maybe_fail("restore", f"checkpoint {self.step_dir(step)}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_target(abstract_state, shardings)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def restore_latest(self, abstract_state, shardings, at_most: int | None = None):
        """(state, data_state, meta) of the newest checkpoint that restores (at step `at_most` or
        before, when given), or None if there is none.

        Every process takes the same decision: a checkpoint counts as restored only if it restored
        on all of them, and whether it is damaged is the main process's finding.
        """
        for step in reversed([s for s in self.steps() if at_most is None or s <= at_most]):
            error = None
            try:
                restored = self.restore_step(step, abstract_state, shardings)
            except Exception as exc:  # noqa: BLE001 - classified below: damage or not
                error = exc
            if not consensus.any_process(error is not None):
                return restored
            found = damage(self.step_dir(step), file_list(self.run_dir, step), error) if _is_main() else None
            if not consensus.any_process(found is not None):
                raise CheckpointError(_not_damaged_message(self.step_dir(step), error,
                                                           file_list(self.run_dir, step).exists()))
            if _is_main():
                self._set_aside(step, found, error)
            consensus.max_over_processes(0)  # no process looks for an older one before it is moved
            self.manager.reload()
        return None

    def _set_aside(self, step: int, found: str, exc: Exception | None) -> None:
        damaged = self.run_dir / DAMAGED / f"{step}-{int(time.time())}"
        damaged.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.step_dir(step)), damaged)
        listed = file_list(self.run_dir, step)
        if listed.exists():
            shutil.move(str(listed), damaged.with_name(damaged.name + ".files.json"))
        log.warning("checkpoint at step %d is damaged (%s; restoring it raised %s); moved it to %s and "
                    "trying an older one", step, found, _reason(exc), damaged)

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._list_files()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._list_files()
        self.manager.close()


def _short_read(exc: BaseException | None) -> str | None:
    """TensorStore's OUT_OF_RANGE on reading a byte range: a file shorter than the checkpoint's index."""
    text = str(exc) if exc is not None else ""
    if "OUT_OF_RANGE" in text and "Error reading Byte range" in text:
        return "a data file is shorter than the checkpoint's index says (OUT_OF_RANGE)"
    return None


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "it failed to restore on another process"
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _not_damaged_message(step_dir: Path, exc: Exception | None, listed: bool) -> str:
    checked = ("its files match the sizes and checksums recorded when it was saved" if listed
               else "its files and metadata are all there and readable")
    return (f"cannot restore checkpoint {step_dir}: {_reason(exc)}. It is not damaged ({checked}), so "
            "this looks like a transient filesystem error, memory exhaustion or a library version change; "
            "every checkpoint was left in place: fix the cause and start the same command again")


def file_list(run_dir, step: int) -> Path:
    return Path(run_dir).resolve() / FILE_LISTS / f"{step}.json"


def _crc32(path: Path) -> int:
    return zlib.crc32(path.read_bytes())


def describe_files(step_dir: Path) -> dict:
    """{relative path: {size, crc32 for small files}} of every file under a checkpoint's step dir."""
    files = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        size = path.stat().st_size
        files[str(path.relative_to(step_dir))] = {"size": size, **(
            {"crc32": _crc32(path)} if size <= CHECKSUM_MAX_BYTES else {})}
    return files


def write_file_lists(run_dir, steps) -> None:
    """Record the files of each complete checkpoint of `steps`; forget those of deleted checkpoints."""
    from scalelab.train.runlog import write_json_atomic

    root = checkpoint_dir(run_dir)
    for step in steps:
        step_dir = root / str(step)
        try:
            listing = {"step": step, "files": describe_files(step_dir)}
        except FileNotFoundError:  # already deleted (keep=1 deletes the previous one soon)
            continue
        if (step_dir / "_CHECKPOINT_METADATA").exists():
            file_list(run_dir, step).parent.mkdir(exist_ok=True)
            write_json_atomic(file_list(run_dir, step), listing)
    lists = Path(run_dir).resolve() / FILE_LISTS
    for stale in lists.glob("*.json") if lists.is_dir() else []:
        if stale.stem.isdigit() and not (root / stale.stem).is_dir():
            stale.unlink(missing_ok=True)


def damage(step_dir: Path, listed: Path | None = None, exc: BaseException | None = None) -> str | None:
    """Why the checkpoint at `step_dir` is damaged on disk, or None if nothing proves it is.

    Proof is a missing or unreadable metadata file, or a file that differs from the list recorded
    when the checkpoint was complete; without a list (a checkpoint saved by a run killed before it
    could write one), the reader's own finding that a data file ends before its index says it does.
    """
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    for name in REQUIRED:
        path = step_dir / name
        if not path.is_file():
            return f"missing file {name}"
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            return f"unreadable metadata {name} ({type(exc).__name__}: {exc})"
    if listed is None or not listed.exists():
        return _short_read(exc)
    try:
        expected = json.loads(listed.read_text())["files"]
    except (ValueError, KeyError):
        return None  # a file list cut short proves nothing about the checkpoint
    for name, want in expected.items():
        path = step_dir / name
        if not path.is_file():
            return f"missing file {name}"
        size = path.stat().st_size
        if size != want["size"]:
            what = "truncated file" if size < want["size"] else "file changed size:"
            return f"{what} {name} ({size} bytes, {want['size']} when saved)"
        if "crc32" in want and _crc32(path) != want["crc32"]:
            return f"checksum mismatch in {name}"
    return None


@dataclass
class CheckpointFiles:
    """Where one checkpoint and the run around it live."""

    step_dir: Path
    step: int
    run_dir: Path | None  # None when the step dir is not inside a run's checkpoints/
    meta: dict  # the checkpoint's own metadata (step, tokenizer, config), {} if absent
    summary: dict  # the run's summary.json, {} if absent


def _newest_step_dir(path: Path) -> Path:
    if (path / "state").is_dir():
        return path
    parent = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    held = parent.iterdir() if parent.is_dir() else ()
    steps = sorted((int(p.name), p) for p in held if p.name.isdigit() and (p / "state").is_dir())
    if not steps:
        raise NoCheckpoint(f"{path}: no checkpoint found (expected a run dir with checkpoints/<step>/, "
                              f"or a checkpoint step dir holding state/)")
    return steps[-1][1]


def read_meta(step_dir) -> dict:
    """A checkpoint's metadata (step, model, tokenizer, config), or {} for a checkpoint without it."""
    meta_file = Path(step_dir) / "meta" / "metadata"
    return json.loads(meta_file.read_text()) if meta_file.exists() else {}


def _newest_remote(names) -> str | None:
    """In a store's listing of a run dir or of its checkpoints/ dir: the newest checkpoint's prefix,
    among those with a file list (complete uploads) if any has one."""
    found = {}
    for name in names:
        parts = name.split("/")
        prefix = f"{CHECKPOINTS}/" if parts[0] == CHECKPOINTS else ""
        parts = parts[1:] if prefix else parts
        if len(parts) > 2 and parts[0].isdigit() and parts[1] == "state":
            found[int(parts[0])] = f"{prefix}{parts[0]}/"
    listed = {int(n.split("/")[1][:-5]) for n in names if n.startswith(FILE_LISTS + "/")
              and n.endswith(".json") and n.split("/")[1][:-5].isdigit()}
    steps = sorted(set(found) & listed) or sorted(found)
    return found[steps[-1]] if steps else None


def fetch_checkpoint(url: str) -> Path:
    """A checkpoint in an object store, downloaded (once) into `$SCALELAB_CACHE/downloads/`: a run
    dir's newest complete checkpoint with the run's summary.json, or one step dir."""
    remote = paths.entries(url)
    if any(n.startswith("state/") for n in remote):
        return paths.fetch(url, area=paths.DOWNLOADS, remote=remote)
    newest = _newest_remote(remote)
    if newest is None:
        raise NoCheckpoint(f"{url}: no checkpoint found (expected a run dir with checkpoints/<step>/, "
                           "or a checkpoint step dir holding state/)")
    local = paths.fetch(url, lambda n: n == SUMMARY or n.startswith(newest), paths.DOWNLOADS, remote)
    parent = local / newest.rstrip("/")
    for other in parent.parent.iterdir():  # older downloads: the newest is what a reader takes
        if other.name.isdigit() and other != parent:
            shutil.rmtree(other, ignore_errors=True)
    return local


def find_checkpoint(path) -> CheckpointFiles:
    """A run dir (its newest checkpoint), its `checkpoints/` dir, or one `checkpoints/<step>/` dir;
    each may be a URL (downloaded first)."""
    path = fetch_checkpoint(path) if paths.is_url(path) else Path(path)
    if not path.exists():
        raise NoCheckpoint(f"no such run or checkpoint: {path}")
    step_dir = _newest_step_dir(path.resolve())
    run_dir = step_dir.parent.parent if step_dir.parent.name == CHECKPOINTS else None
    meta = read_meta(step_dir)
    summary_file = run_dir / SUMMARY if run_dir else None
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    step = int(meta.get("step", step_dir.name if step_dir.name.isdigit() else -1))
    return CheckpointFiles(step_dir=step_dir, step=step, run_dir=run_dir, meta=meta, summary=summary)


def resolve_checkpoint(path) -> Path:
    """A run dir, its `checkpoints/` dir or one `<step>/` dir -> that checkpoint's step dir."""
    return find_checkpoint(path).step_dir


def _check_param_shapes(step_dir: Path, abstract_params, source: str) -> None:
    stored = ocp.PyTreeCheckpointer().metadata(step_dir / "state")
    stored = getattr(stored, "item_metadata", stored)
    stored_params = stored.tree["params"] if hasattr(stored, "tree") else stored["params"]
    ours = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    theirs = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored_params)}
    problems = [f"{k}: checkpoint {theirs.get(k)} vs config {ours.get(k)}"
                for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"{source}: the checkpoint's architecture does not match the config ({shown})")


def restore_params(path, abstract_params, shardings=None, source: str = "init_from"):
    """Only the parameters of a checkpoint, placed with `shardings` (any mesh; None: the first device).

    Refuses, naming every difference (and `source`, the key or argument that named the checkpoint),
    a checkpoint whose parameter tree or shapes differ.
    """
    step_dir = resolve_checkpoint(path)
    _check_param_shapes(step_dir, abstract_params, f"{source}={path}")
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract_params)
    target = {"params": _target(abstract_params, shardings)}
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        ),
    )
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(restored["params"]))
    log.info("restored %d parameters from %s", n, step_dir)
    return restored["params"]


def load_params(path, abstract_params, shardings):
    """`init_from`: the parameters of a checkpoint, for fine-tuning (see restore_params)."""
    return restore_params(path, abstract_params, shardings, source="init_from")

"""Paths a user gives, local or in an object store (`s3://bucket/key`, `gs://bucket/key`, any
protocol fsspec knows).

A local path stays a `pathlib.Path` and is used exactly as it always was. A URL is worked on
through a local copy of it, its *mirror*, at `$SCALELAB_CACHE/remote/<scheme>/<bucket>/<key>`
(`mirror_dir`; `mirror_url` maps back): readers download what they read (a prepared dataset, a
checkpoint, a sweep's run files), and a run whose run directory is a URL trains in the mirror and
uploads it as it goes (train/store.py). Object stores have no rename, no append and no locks, so
nothing here relies on them: every file is uploaded whole, in one PUT, from a complete local file,
and readers that need a commit point get it from the order of the uploads.

Needs fsspec's store package (`pip install 'scalelab[cloud]'`: s3fs, gcsfs). Credentials and
endpoints are the store client's own: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL
for S3 and S3-compatible servers, Application Default Credentials for GCS.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://(.+)$")  # two letters or more: not a Windows drive
MIRRORS = "remote"
DOWNLOADS = "downloads"
SMALL_BYTES = 1 << 20  # files up to this size are downloaded again whatever their size says


def is_url(path) -> bool:
    """True for `scheme://...` (s3, gs, ...); False for local paths, including `file://` ones."""
    match = _URL.match(str(path)) if isinstance(path, str) else None
    return match is not None and match.group(1).lower() != "file"


def join(url: str, *names: str) -> str:
    return posixpath.join(url.rstrip("/"), *names)


def cache_root() -> Path:
    return Path(os.environ.get("SCALELAB_CACHE", Path.home() / ".cache" / "scalelab"))


def mirror_dir(url: str, area: str = MIRRORS) -> Path:
    """The local copy of `url`: `$SCALELAB_CACHE/<area>/<scheme>/<bucket>/<key>` (readers of
    another run's files use `DOWNLOADS`, so that they never touch a training run's mirror)."""
    scheme, rest = _URL.match(url).groups()
    parts = [p for p in rest.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{url}: expected a URL such as s3://bucket/key")
    return cache_root().joinpath(area, scheme.lower(), *parts)


def mirror_url(path) -> str | None:
    """The URL whose mirror `path` is (or is inside), or None for any other local path."""
    try:
        rel = Path(path).resolve().relative_to((cache_root() / MIRRORS).resolve())
    except ValueError:
        return None
    if len(rel.parts) < 2:
        return None
    scheme, *rest = rel.parts
    return f"{scheme}://{'/'.join(rest)}"


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of a URL; an ImportError that names the extra to install."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise ImportError(f"{url}: this storage needs a package that is not installed ({exc}); "
                          "install scalelab's cloud extra: pip install 'scalelab[cloud]'") from exc


def entries(url: str) -> dict[str, dict]:
    """{relative path: the store's info (size, ETag, ...)} of every file under `url` ({} if none)."""
    fs, root = filesystem(url)
    fs.invalidate_cache()  # fsspec caches listings: another process may have written since
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    root = root.rstrip("/")
    return {posixpath.relpath(name, root): info for name, info in found.items()
            if info.get("type") == "file" and name.rstrip("/") != root}


def listing(url: str) -> dict[str, int]:
    """{relative path: size} of every file under `url` ({} when there is none)."""
    return {name: int(info.get("size") or 0) for name, info in entries(url).items()}


def _version(info: dict) -> str:
    """What changes when an object is replaced: S3's ETag, GCS's generation, else its time."""
    for key in ("ETag", "etag", "generation", "LastModified", "updated", "mtime"):
        if info.get(key):
            return str(info[key])
    return ""


def download(url: str, local: Path, files: dict[str, int]) -> None:
    """Copy `files` ({relative path: size}) from `url` into `local`, each written to a temporary name
    and renamed, and only those not already there with that size (small files always)."""
    fs, root = filesystem(url)
    for name, size in files.items():
        target = local / name
        if size > SMALL_BYTES and target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.download")  # readers may race: own names
        fs.get_file(posixpath.join(root, name), str(tmp))
        os.replace(tmp, target)


def upload(local: Path, url: str, names) -> None:
    """Copy the files `names` (relative paths) of `local` to `url`, one whole PUT each, in order."""
    fs, root = filesystem(url)
    for name in names:
        fs.put_file(str(local / name), posixpath.join(root, name))


def delete(url: str, names) -> None:
    fs, root = filesystem(url)
    keys = [posixpath.join(root, name) for name in names]
    if keys:
        fs.rm(keys)


def local_files(local: Path) -> dict[str, int]:
    """{relative posix path: size} of every file under `local`."""
    if not local.is_dir():
        return {}
    return {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}


FETCHED = ".fetched.json"  # in a downloaded copy: the store's version of each file downloaded


def fetch(url: str, keep=lambda name: True, area: str = MIRRORS, remote: dict | None = None) -> Path:
    """The mirror of `url`, made equal to it for the files `keep` accepts (downloaded unless the
    same version is there already, and local files the store no longer has removed); the local
    path itself for a local path. `remote`: the store's `entries(url)`, if already listed."""
    if not is_url(url):
        return Path(url)
    local = mirror_dir(url, area)
    remote = {name: info for name, info in (entries(url) if remote is None else remote).items() if keep(name)}
    try:
        had = json.loads((local / FETCHED).read_text())
    except (OSError, ValueError):
        had = {}
    versions = {name: _version(info) for name, info in remote.items()}
    for name, version in versions.items():
        if had.get(name) != version or not version:  # replaced in the store since (a dataset re-prepared)
            (local / name).unlink(missing_ok=True)
    download(url, local, {name: int(info.get("size") or 0) for name, info in remote.items()})
    for name in set(local_files(local)) - set(remote):
        if keep(name) and name != FETCHED:
            (local / name).unlink(missing_ok=True)
    local.mkdir(parents=True, exist_ok=True)
    present = local_files(local)
    (local / FETCHED).write_text(json.dumps({n: v for n, v in {**had, **versions}.items() if n in present}))
    return local


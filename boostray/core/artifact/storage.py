"""Where runs live: a local path, or a URI of any filesystem pyarrow knows (``file://``, ``s3://``,
``gs://``, ``hdfs://``; options such as an S3 endpoint ride in the URI's query string).

A cluster without a filesystem that every node mounts keeps its runs in object storage: training
assembles a run directory locally and copies it up, ``metrics.json`` last, so a run that is there is
complete; whoever reads a run from a URI (load, evaluate, serve replicas, predict) copies it into a
local cache first. Local paths take plain ``os`` calls, as before.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from typing import Any

from boostray.errors import ArtifactError, ConfigError

COMPLETE_MARKER = "metrics.json"  # written last: a run directory that has it is finished


def is_uri(path: str) -> bool:
    return "://" in str(path)


def _filesystem(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, ValueError, OSError) as exc:
        raise ConfigError(f"{uri}: not a storage URI pyarrow can open ({exc})") from None


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a storage URI: what Ray Data and pyarrow
    take as ``filesystem=`` and path."""
    if not is_uri(path):
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), local_path(path)
    return _filesystem(path)


def join(base: str, *parts: str) -> str:
    """``os.path.join`` for paths; for URIs the parts go before the query string."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def parent(path: str) -> str:
    """``os.path.dirname`` for paths; for URIs the last part goes, the query string stays."""
    if not is_uri(path):
        return os.path.dirname(os.path.normpath(path))
    head, sep, query = path.partition("?")
    return head.rstrip("/").rsplit("/", 1)[0] + sep + query


def local_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs

    fs, fs_path = _filesystem(path)
    return fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound


def write_bytes(path: str, data: bytes) -> None:
    """Whole-file write; a local file appears complete or not at all (rename), as an object does."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.partial-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs, fs_path = _filesystem(path)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    fs, fs_path = _filesystem(path)
    with fs.open_input_stream(fs_path) as f:
        return f.read()


def torch_save(obj: Any, path: str) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def torch_load(path: str) -> Any:
    import torch

    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)


def upload_run(local_dir: str, uri: str) -> None:
    """Copy a finished run directory to ``uri``, its completion marker last."""
    import pyarrow.fs

    fs, fs_path = _filesystem(uri)
    fs.create_dir(fs_path, recursive=True)
    marker = os.path.join(local_dir, COMPLETE_MARKER)
    held = tempfile.mkdtemp(prefix="boostray-marker-")
    try:
        shutil.move(marker, os.path.join(held, COMPLETE_MARKER))
        pyarrow.fs.copy_files(local_dir, fs_path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)
        with open(os.path.join(held, COMPLETE_MARKER), "rb") as f:
            write_bytes(join(uri, COMPLETE_MARKER), f.read())
    finally:
        shutil.rmtree(held, ignore_errors=True)


def cache_root() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "boostray", "runs")


def local_copy(path: str) -> str:
    """A local directory holding the run (or ensemble folder) at ``path``: ``path`` itself when it is
    local, else a copy in the cache (fetched once per URI; only a complete copy is renamed into place)."""
    if not is_uri(path):
        return os.path.expanduser(path)
    import pyarrow.fs

    target = os.path.join(cache_root(), hashlib.sha256(path.encode()).hexdigest()[:24])
    if os.path.isdir(target):
        return target
    fs, fs_path = _filesystem(path)
    if fs.get_file_info(fs_path).type != pyarrow.fs.FileType.Directory:
        raise ArtifactError(f"no run directory at {path}")
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root(), prefix=".partial-")
    try:
        pyarrow.fs.copy_files(fs_path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):  # another process that fetched the same run won the rename
            raise
    return target

"""Listing and reading a data folder that is a local path or a storage URI (``s3://``, ``gs://``,
``file://``), through one pyarrow filesystem: the loaders see folders and files, not where they live."""

from __future__ import annotations

import fnmatch
import posixpath

from boostray.core.artifact import storage
from boostray.errors import DataError


def open_folder(data_dir: str):
    """(pyarrow filesystem, the folder's path in it) for ``--data-dir``, local or a URI."""
    try:
        fs, root = storage.filesystem(data_dir)
    except Exception as exc:  # noqa: BLE001 - a ConfigError for a bad URI, or pyarrow's own error
        raise DataError(f"cannot open --data-dir {data_dir}: {exc}") from None
    return fs, root.rstrip("/") or "/"


def _infos(fs, path: str, recursive: bool = False) -> list:
    import pyarrow.fs

    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise DataError(f"cannot list {path}: {exc}") from None


def is_dir(fs, path: str) -> bool:
    import pyarrow.fs

    try:
        return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
    except OSError:
        return False


def subfolders(fs, path: str) -> list[str]:
    """The names of the folders directly in ``path``, sorted."""
    import pyarrow.fs

    return sorted(posixpath.basename(i.path) for i in _infos(fs, path) if i.type == pyarrow.fs.FileType.Directory)


def matching(fs, folder: str, pattern: str) -> list[str]:
    """Paths of the files directly in ``folder`` whose names match ``pattern`` (glob), sorted."""
    import pyarrow.fs

    return sorted(i.path for i in _infos(fs, folder)
                  if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(posixpath.basename(i.path), pattern))


def files_below(fs, root: str, extensions: tuple[str, ...]) -> list[str]:
    """Every file under ``root`` with one of ``extensions``, in os.walk's sorted order (folder, then name)."""
    import pyarrow.fs

    found = [i.path for i in _infos(fs, root, recursive=True)
             if i.type == pyarrow.fs.FileType.File and i.path.lower().endswith(extensions)]
    return sorted(found, key=lambda p: (posixpath.dirname(p), posixpath.basename(p)))


def is_file(fs, path: str) -> bool:
    import pyarrow.fs

    try:
        return fs.get_file_info(path).type == pyarrow.fs.FileType.File
    except OSError:
        return False

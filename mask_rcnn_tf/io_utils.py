"""Atomic writes: a reader never sees a half-written file.

Everything is first written under a temporary name in the destination folder (same filesystem,
so the final os.replace() is atomic), then moved onto the destination in one step.
"""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write to; moves it onto `path` when the block succeeds.

    The temporary path sits in a fresh hidden folder next to `path` and keeps its base name, so
    writers that check the suffix (`model.save("x.keras")`, `save_weights("x.weights.h5")`) accept
    it, and writers that create a directory (SavedModel export) can create it there. On error the
    temporary folder is removed and `path` is left as it was.

    Args:
        path: str or os.PathLike, the final destination (a file, or a directory that does not exist
            yet or is empty). Its parent folder must exist.

    Yields:
        str, the temporary path; nothing exists there yet.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if not name:
        raise ValueError(f"atomic_path: {path!r} has no file name")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"atomic_path: folder {folder!r} for {name!r} does not exist")
    temp_folder = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=folder)
    try:
        temp_path = os.path.join(temp_folder, name)
        yield temp_path
        if not os.path.lexists(temp_path):
            raise FileNotFoundError(f"atomic_path: nothing was written for {path!r}")
        os.replace(temp_path, path)
    finally:
        shutil.rmtree(temp_folder, ignore_errors=True)


def fsync_path(path):
    """Flushes one file or folder entry to disk (a folder: its list of names)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    """Flushes every file and folder under `root` to disk, deepest first, so a folder renamed
    into place after a power loss never holds empty files."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` atomically, flushed to disk before the rename.

    Args:
        path: str or os.PathLike, the destination file; its folder must exist.
        data: bytes, the whole file content.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes: data for {os.fspath(path)!r} must be bytes, "
                        f"got {type(data).__name__}")
    with atomic_path(path) as temp_path:
        with open(temp_path, "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash right after the rename can leave an empty file on disk.
            os.fsync(f.fileno())


def atomic_write_json(path, obj):
    """Writes `obj` as JSON (indent 2, sorted keys, trailing newline) to `path` atomically.

    Args:
        path: str or os.PathLike, the destination file; its folder must exist.
        obj: a JSON-serializable object (dicts, lists, str, int, float, bool, None).
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise type(e)(f"atomic_write_json: cannot write {os.fspath(path)!r}: {e}") from e
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))

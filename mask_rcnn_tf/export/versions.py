"""Versioned model folders as TF Serving reads them: BASE/<version>/ with an integer name.

tensorflow_model_server polls BASE and loads any folder whose name is an integer, so a version
folder must appear complete or not at all. A version is written under a hidden temporary name
in BASE (same filesystem), flushed to disk, then renamed into place: a rename is atomic, and the
hidden name is not an integer, so the server never sees it.
"""

import os
import re
import shutil
import tempfile

from mask_rcnn_tf.io_utils import atomic_path, fsync_path, fsync_tree

_VERSION_RE = re.compile(r"^[0-9]+$")


def existing_versions(export_base):
    """Sorted integer names of the version folders in `export_base` ([] if it does not exist)."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(name) for name in os.listdir(export_base)
                  if _VERSION_RE.match(name) and os.path.isdir(os.path.join(export_base, name)))


def next_version(export_base):
    """One past the highest version folder in `export_base`, 1 when there is none."""
    versions = existing_versions(export_base)
    return versions[-1] + 1 if versions else 1


def resolve_version(export_base, version=None, overwrite=False):
    """Chooses the version to write and checks it may be written.

    Args:
        export_base: folder of the version folders.
        version: positive int, or None for next_version(export_base).
        overwrite: allow replacing an existing version folder.

    Returns:
        int, the version.

    Raises:
        ValueError: version is not a positive integer.
        FileExistsError: the version folder exists and overwrite is False.
    """
    if version is None:
        return next_version(export_base)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"export version must be a positive integer, got {version!r}")
    path = os.path.join(export_base, str(version))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or "
                              f"leave out --version to write version {next_version(export_base)}")
    return version




def publish_version(export_base, version, write, overwrite=False):
    """Writes one version folder atomically.

    `write(path)` creates the folder `path` (e.g. tf.saved_model.save) inside a hidden temporary
    folder of export_base; when it returns, the folder is flushed and renamed to
    export_base/<version>. If `write` raises, nothing named <version> appears and the temporary
    folder is removed. With overwrite, an existing version is moved aside just before the
    rename and deleted after it (a server polling in that instant sees the version missing);
    if the rename fails, it is moved back.

    Args:
        export_base: folder of the version folders; created if missing.
        version: positive int, or None for next_version(export_base).
        write: callable taking the str path of the folder to create.
        overwrite: replace an existing version folder.

    Returns:
        str, the path export_base/<version>.

    Raises:
        FileExistsError: the version exists and overwrite is False (it is left as it was).
    """
    version = resolve_version(export_base, version, overwrite)
    os.makedirs(export_base, exist_ok=True)
    final = os.path.join(os.path.abspath(export_base), str(version))
    aside = None
    try:
        with atomic_path(final) as temp:
            write(temp)
            fsync_tree(temp)
            if os.path.lexists(final):
                # A rename onto a non-empty folder fails, so the old version steps aside first.
                resolve_version(export_base, version, overwrite)
                aside = tempfile.mkdtemp(prefix=f".{version}.old-", dir=export_base)
                os.replace(final, os.path.join(aside, str(version)))
    except BaseException:
        if aside is not None and not os.path.lexists(final):
            os.replace(os.path.join(aside, str(version)), final)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    # Without this, a power loss could forget the rename of a folder whose files were flushed.
    fsync_path(export_base)
    return final

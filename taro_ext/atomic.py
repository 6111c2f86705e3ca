"""Writing final artifacts so that a kill at any moment leaves the old one or the new one, both complete.

A directory artifact (a router, a reward model) is written into a fresh directory beside the
target (``.<name>.saving-<pid>``), every file and the directory are fsynced, and the new directory
then takes the target's place in one step: ``renameat2(RENAME_EXCHANGE)`` swaps it with an existing
target atomically (Linux), and the old one is removed afterwards. Where the exchange is not
supported, the old directory is renamed aside and the new one renamed in; a kill between those two
renames leaves the old artifact complete at ``.<name>.old-<pid>`` beside the target. A kill before
the swap leaves the old target untouched and a ``.<name>.saving-<pid>`` directory beside it.

Entries of an existing target that belong to the training run rather than to the artifact
(``carry``: e.g. ``checkpoint-*`` directories and ``train_log.json`` in a trainer's output
directory) are moved into the new directory just before the swap, each by one rename (a kill
during those renames leaves the moved ones, complete, in ``.<name>.saving-<pid>``).
A single file (``train_log.json``) is written to a temporary file, fsynced and renamed over the
target (``os.replace``, atomic on POSIX).
"""
from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import shutil
from typing import Callable, Sequence

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name))
        _fsync_path(dirpath)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap paths ``a`` and ``b``; False where the system cannot (then nothing changed)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _sibling(target: str, tag: str) -> str:
    head, name = os.path.split(os.path.abspath(target))
    return os.path.join(head, f".{name}.{tag}-{os.getpid()}")


def replace_directory(target: str, fill: Callable[[str], None], *, is_artifact: Callable[[str], bool],
                      carry: Sequence[str] = ()) -> None:
    """Write the directory ``target`` with ``fill(tmp_dir)``, replacing an existing one atomically.

    ``carry`` are ``fnmatch`` patterns of entries kept from an existing directory;
    ``is_artifact(path)`` says whether it holds a previous artifact of this kind. An existing
    directory with other entries that is not one is refused, never deleted.
    """
    target = os.path.abspath(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is not a directory (the artifact is a directory)")
    exists = os.path.isdir(target)
    carried = (lambda name: any(fnmatch.fnmatch(name, p) for p in carry))
    if exists and any(not carried(n) for n in os.listdir(target)) and not is_artifact(target):
        raise ValueError(f"{target} is a non-empty directory that holds no previous save of this kind; "
                         f"not replacing it (choose a new or empty directory)")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = _sibling(target, "saving")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.mkdir(tmp)
    try:
        fill(tmp)
        if exists:
            for name in os.listdir(target):
                if carried(name) and not os.path.exists(os.path.join(tmp, name)):
                    os.rename(os.path.join(target, name), os.path.join(tmp, name))
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not exists:
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # now the old directory
    else:
        old = _sibling(target, "old")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    _fsync_path(os.path.dirname(target))


def write_file(path: str, save: Callable[[str], None]) -> None:
    """Write the file ``path`` atomically: ``save(tmp_path)`` writes a temporary file beside it,
    which is fsynced and renamed over ``path``."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path, "saving")
    try:
        save(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_path(os.path.dirname(path))


def write_text(path: str, text: str) -> None:
    """``write_file`` for a text file (UTF-8)."""
    def save(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_file(path, save)

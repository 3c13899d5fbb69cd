"""Filesystem: the one place that writes a run's outputs.

Every output path goes through here, so each promise about files is kept in
one function: a file is either the old complete one or the new complete one
(write beside, then rename), and an export folder is swapped in whole.
Paths are expanded here too: bash leaves `~` alone after `--flag=`, and a
literal `~` folder in the working directory is one `rm -rf ~` away from a
deleted home directory.
"""

import ctypes
import glob
import json
import os
import shutil
import tempfile

# Leftovers of a write that was killed half-way: they are never read, and are
# removed by the next writer of the same folder.
TMP_MARK, OLD_MARK = ".tmp-", ".old-"


def expand(path: str) -> str:
    """`~` and `~user` expanded, environment variables too; '' stays ''."""
    return os.path.expandvars(os.path.expanduser(path)) if path else path


def write_file(path: str, write) -> None:
    """write(tmp_path) beside `path`, then rename: a kill at any instant leaves the old
    file or the new one, never half of one (for libraries that write files themselves)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + TMP_MARK)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    write_file(path, write)


def append_line(path: str, line: str) -> None:
    """One line appended; a kill mid-write leaves at most a partial LAST line, which
    readers of line files skip (see reporting.RunLog)."""
    with open(path, "a") as f:
        f.write(line + "\n")


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def exists(path: str) -> bool:
    return os.path.exists(path)


def remove_stale(folder: str) -> list[str]:
    """Delete the half-written files and folders that killed writes left in `folder`.

    Only `*.tmp-*`: an `*.old-*` folder may hold the one complete copy of an
    export (see publish_dir), which the next publish puts back."""
    removed = glob.glob(os.path.join(glob.escape(folder), f"*{TMP_MARK}*"))
    for path in removed:
        remove(path)
    return removed


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


# ----------------------------------------------------------------------------- folders

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot
        return False
    raise OSError(ctypes.get_errno(), f"could not swap {b} in", a)


def publish_dir(folder: str, write) -> None:
    """Create `folder` with write(tmp_folder), swapping it in whole.

    The new folder is written completely beside the old one, then the two are
    exchanged in one rename (renameat2): at every instant a reader of `folder`
    finds either the old complete folder or the new complete one. Where the
    filesystem cannot exchange, the old folder is moved aside and put back if
    the second rename fails (a window of two renames without `folder`).
    Leftovers of a killed earlier publish are removed first.
    """
    folder = os.path.abspath(folder)
    parent, name = os.path.dirname(folder), os.path.basename(folder)
    os.makedirs(parent, exist_ok=True)
    for old in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + f"{OLD_MARK}*", name)):
        if not os.path.exists(folder):  # killed between the two renames: put the old one back
            os.rename(old, folder)
    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + f"{TMP_MARK}*")) + \
            glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + f"{OLD_MARK}*")):
        remove(stale)
    tmp = tempfile.mkdtemp(prefix=name + TMP_MARK, dir=parent)
    try:
        write(tmp)
        if not os.path.exists(folder):
            os.rename(tmp, folder)
            return
        if _exchange(tmp, folder):
            remove(tmp)  # now holds the old folder
            return
        old = tempfile.mkdtemp(prefix=name + OLD_MARK, dir=parent)
        os.rename(folder, os.path.join(old, name))
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(os.path.join(old, name), folder)
            raise
        remove(old)
    except BaseException:
        remove(tmp)
        raise

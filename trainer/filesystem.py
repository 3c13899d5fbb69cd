"""Filesystem: the one place that writes a run's outputs, on local disk or gs://.

Every output path goes through here, so each promise about files is kept in
one function: a file is either the old complete one or the new complete one,
and an export folder is swapped in whole.

- Local paths: write beside, then rename; folders are exchanged in one
  renameat2 call.
- gs:// (and any other URL TensorFlow's filesystem knows): through tf.io.gfile.
  An object upload is all-or-nothing, so single files are atomic as they are.
  Cloud Storage has no rename, so a folder is complete when its marker object
  (COMPLETE_MARKER, written last) exists; readers check it. Folders written
  by libraries that only write locally (save_pretrained, matplotlib) are
  written to a local temporary folder and uploaded with the google-cloud-storage
  client (parallel transfers).

Paths are expanded here too: bash leaves `~` alone after `--flag=`, and a
literal `~` folder in the working directory is one `rm -rf ~` away from a
deleted home directory.
"""

import ctypes
import glob
import io
import json
import os
import shutil
import tempfile
import uuid

from trainer.errors import UserError

# Leftovers of a write that was killed half-way: they are never read, and are
# removed by the next writer of the same folder.
TMP_MARK, OLD_MARK = ".tmp-", ".old-"
# Written last into every published folder (export/, export_pytorch/, lr_find/):
# on gs://, where a folder cannot be swapped in, its presence means complete.
COMPLETE_MARKER = "COMPLETE.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def is_remote(path: str) -> bool:
    """gs://bucket/... (or another scheme TensorFlow's filesystem handles)."""
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def expand(path: str) -> str:
    """`~` and `~user` expanded, environment variables too; '' stays ''; URLs as given."""
    if not path:
        return path
    path = os.path.expandvars(path)
    return path if is_remote(path) else os.path.expanduser(path)


def join(*parts: str) -> str:
    return os.path.join(*parts)  # string arithmetic only: also right for gs://bucket/a + b


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names in a folder (no trailing '/'), sorted."""
    if is_remote(path):
        return sorted(name.rstrip("/") for name in _gfile().listdir(path))
    return sorted(os.listdir(path))


def makedirs(path: str) -> None:
    """On gs:// folders are implicit: nothing to do (and gfile.makedirs on a missing
    bucket retries forever: check_output_location comes first)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def glob_in(folder: str, pattern: str) -> list[str]:
    """Paths in `folder` matching `pattern` (the folder's own name is taken literally)."""
    if is_remote(folder):
        return sorted(_gfile().glob(join(folder, pattern)))
    return sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))


def size(path: str) -> int:
    """Bytes in a file."""
    return int(_gfile().stat(path).length) if is_remote(path) else os.path.getsize(path)


def read_text(path: str) -> str:
    if is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path) as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def open_bytes(path: str):
    """A file opened to stream its bytes (`with open_bytes(p) as f: f.read(n)`), seekable
    (Parquet reads its footer first): a corpus file need not fit in memory."""
    return io.BufferedReader(_RemoteReader(path)) if is_remote(path) else open(path, "rb")


class _RemoteReader(io.RawIOBase):
    """tf.io.gfile.GFile as a standard binary file: GFile has no `closed`, and pyarrow
    takes a file without one for a closed file."""

    def __init__(self, path: str):
        self._file = _gfile().GFile(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._file.seek(offset, whence)
        return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def write_file(path: str, write) -> None:
    """write(tmp_path) beside `path`, then rename: a kill at any instant leaves the old
    file or the new one, never half of one (for libraries that write files themselves).
    On gs:// tmp_path is local and the file is uploaded in one object write."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="tunewell-upload-") as local:
            tmp = os.path.join(local, os.path.basename(path))
            write(tmp)
            _gfile().copy(tmp, path, overwrite=True)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + TMP_MARK)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as readable as any other
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """UTF-8 whatever the machine's locale (reports, JSON and CSVs hold any script)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Bytes as given (e.g. review.csv's UTF-8 with a BOM), atomically."""
    if is_remote(path):
        with _gfile().GFile(path, "wb") as f:  # one object, created whole on close
            f.write(data)
        return

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_file(path, write)


def append_line(path: str, line: str) -> None:
    """One line appended; a kill mid-write leaves at most a partial LAST line, which
    readers of line files skip (see reporting.RunLog). Objects cannot be appended to:
    on gs:// the file is rewritten whole (metrics files are small)."""
    if is_remote(path):
        write_text(path, (read_text(path) if exists(path) else "") + line + "\n")
        return
    with open(path, "a") as f:
        f.write(line + "\n")


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str):
    return json.loads(read_text(path))


def remove_stale(folder: str) -> list[str]:
    """Delete the half-written files and folders that killed writes left in `folder`.

    Only `*.tmp-*`: an `*.old-*` folder may hold the one complete copy of an
    export (see publish_dir), which the next publish puts back."""
    if is_remote(folder):
        return []  # nothing is written beside its target on gs://
    removed = glob.glob(os.path.join(glob.escape(folder), f"*{TMP_MARK}*"))
    for path in removed:
        remove(path)
    return removed


def remove(path: str) -> None:
    if is_remote(path):
        gfile = _gfile()
        if gfile.isdir(path):
            gfile.rmtree(path)
        elif gfile.exists(path):
            gfile.remove(path)
        return
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
    Leftovers of a killed earlier publish are removed first. On gs:// see
    _publish_remote. Either way COMPLETE_MARKER is the folder's last file.
    """
    if is_remote(folder):
        return _publish_remote(folder, write)
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
        _write_marker(tmp)
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


def _write_marker(local_folder: str) -> None:
    files = sorted(os.path.relpath(os.path.join(root, f), local_folder)
                   for root, _, names in os.walk(local_folder) for f in names)
    # "publish" differs at every publish, so a cached copy of an earlier one is told apart.
    with open(os.path.join(local_folder, COMPLETE_MARKER), "w") as f:
        json.dump({"files": {p: os.path.getsize(os.path.join(local_folder, p)) for p in files},
                   "publish": uuid.uuid4().hex}, f, indent=1, sort_keys=True)


def _publish_remote(folder: str, write) -> None:
    """Cloud Storage has no rename: the marker goes first, then the old objects, then the
    new ones are uploaded and the marker is written last. A kill in between leaves a folder
    without its marker, which readers refuse and the next publish replaces."""
    with tempfile.TemporaryDirectory(prefix="tunewell-publish-") as local:
        write(local)
        remove(join(folder, COMPLETE_MARKER))
        remove(folder)
        upload_dir(local, folder)
        _write_marker(local)
        _gfile().copy(os.path.join(local, COMPLETE_MARKER), join(folder, COMPLETE_MARKER), overwrite=True)


def is_complete(folder: str) -> bool:
    """A published folder: its marker is there (every local publish writes it too)."""
    return exists(join(folder, COMPLETE_MARKER))


# ----------------------------------------------------------------------------- Cloud Storage


def _split_gs(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("gs://"):].partition("/")
    return bucket, prefix.strip("/")


def _storage_client():
    from google.cloud import storage

    return storage.Client()  # application default credentials; STORAGE_EMULATOR_HOST in tests


def upload_dir(local: str, url: str) -> None:
    """Every file under `local` to the same relative names under gs://bucket/prefix."""
    from google.cloud.storage import transfer_manager

    bucket_name, prefix = _split_gs(url)
    names = sorted(os.path.relpath(os.path.join(root, f), local)
                   for root, _, files in os.walk(local) for f in files)
    bucket = _storage_client().bucket(bucket_name)
    results = transfer_manager.upload_many_from_filenames(
        bucket, names, source_directory=local, blob_name_prefix=f"{prefix}/" if prefix else "",
        max_workers=8, worker_type=transfer_manager.THREAD)
    for name, result in zip(names, results):
        if isinstance(result, Exception):
            raise OSError(f"uploading {name} to {url} failed: {result}") from result


def download_dir(url: str, local: str) -> str:
    """A published folder on gs:// copied to `local`; refused without its marker."""
    if not is_complete(url):
        raise UserError(f"{url} has no {COMPLETE_MARKER}: it is not a complete folder (an export that "
                        "was interrupted, or not one tunewell wrote). Re-run the training job to finish it.")
    bucket_name, prefix = _split_gs(url)
    client = _storage_client()
    bucket = client.bucket(bucket_name)
    for listed in client.list_blobs(bucket_name, prefix=f"{prefix}/"):
        relative = listed.name[len(prefix) + 1:]
        if not relative or relative.endswith("/"):
            continue
        target = os.path.join(local, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # A fresh handle: its download URL comes from the client's endpoint, not the
        # listing's mediaLink (which names the public host even behind a private endpoint).
        bucket.blob(listed.name).download_to_filename(target)
    return local


def check_output_location(path: str, write: bool = True) -> None:
    """Before any compute: the bucket of a gs:// output exists and this job may write there
    (write=False: only read it, as the non-chief workers of a multi-worker job do).

    TensorFlow's gfile.makedirs and tf.summary.create_file_writer retry forever
    on a missing bucket (no error), while listing the bucket fails at once: this
    check is what turns a typo into a message instead of a hung job."""
    if not path.startswith("gs://"):
        return
    import tensorflow as tf

    bucket = _split_gs(path)[0]
    try:
        _gfile().listdir(f"gs://{bucket}/")
    except tf.errors.NotFoundError:
        raise UserError(f"{path}: the bucket gs://{bucket} does not exist. Create it (gcloud storage buckets "
                        f"create gs://{bucket} --location=REGION) or fix the bucket name.") from None
    except tf.errors.PermissionDeniedError:
        raise UserError(f"{path}: this job may not list gs://{bucket} (missing permission "
                        "storage.objects.list). Grant its service account roles/storage.objectAdmin on "
                        "the bucket.") from None
    if not write:
        return
    probe = join(path, f".tunewell-write-check-{uuid.uuid4().hex[:8]}")
    try:
        write_text(probe, "ok")
        remove(probe)
    except tf.errors.PermissionDeniedError:
        raise UserError(f"{path}: this job may not write to gs://{bucket} (missing permission "
                        "storage.objects.create). Grant its service account roles/storage.objectAdmin "
                        "on the bucket.") from None

"""Files written whole or not at all, by one writer at a time.

Every file the pipeline writes (prototxt, caffemodel, means, indexes, plots, reports) goes through
`atomic_path`: the writer fills a temporary file in the target's folder, which is renamed over the
target only when the writer returns, so an interrupted run never leaves half a file behind and an
existing file stays as it was.

`output_lock` makes a writer the only one: an index, a run folder or a dataset being written by
one process (or one part of a process) is refused to a second writer with a one-line error,
instead of both "succeeding" and one result being silently lost. The lock is the kernel's
(fcntl.flock), so a killed writer never leaves a stale lock behind.

What a writer stages under its own name (`partial_path`: a dataset, a snapshot) carries its
process id, so `remove_stale_partials` can clear what a killed writer left (its process is gone)
without touching a live writer's.
"""
import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import DlbhcError


class OutputLocked(DlbhcError):
    """Another writer holds the output; names the output and the lock."""


def lock_path(path):
    """The lock file of output `path`: a hidden file beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path, what="output"):
    """Hold the exclusive write lock of `path` (a file or a folder) for the `with` block; raise
    OutputLocked at once when another writer holds it.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "my.index"
    >>> with output_lock(target, "index"):
    ...     with output_lock(target, "index"):
    ...         pass
    Traceback (most recent call last):
    ...
    dlbhc_caffe.fileio.OutputLocked: ...my.index: another process is writing this index ...
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLocked(f"{path}: another process is writing this {what} (it holds "
                               f"{lock}); wait for it to finish, or stop it") from None
        # The holder before us may have removed the file after we opened it: lock the live one.
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


def refuse_folder(path):
    """`path` as a Path, unless it is a folder (an output file's name given a folder's)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name to write",
                                str(path))
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "codes.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("101")
    >>> target.read_text()
    '101'
    """
    path = refuse_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    tmp = Path(tmp)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data):
    """Write `data` to `path` whole or not at all; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# ---------------------------------------------------------------- staged names, and their leftovers

_PARTIAL = ".partial-"


def partial_path(target):
    """The hidden name this process stages `target` under."""
    target = Path(target)
    return target.with_name(f".{target.name}{_PARTIAL}{os.getpid()}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path):
    """Remove a file, link or folder tree (nothing when it is not there)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale_partials(target, log=print, tail=""):
    """Remove what killed writers of `target` left (``.NAME.partial-PID``, ``.NAME.old-PID``,
    then `tail`, a regex, e.g. a snapshot's ``_iter_N.caffemodel``) once PID is gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.name}") + r"(?:\.partial|\.old)-(\d+)" + tail + "$")
    removed = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            log(f"removing {entry}, left by an interrupted run")
            remove_path(entry)
            removed.append(entry)
    return removed

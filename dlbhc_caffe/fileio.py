"""Files written whole or not at all.

Every file the pipeline writes (prototxt, caffemodel, means, indexes, plots, reports) goes through
`atomic_path`: the writer fills a temporary file in the target's folder, which is renamed over the
target only when the writer returns, so an interrupted run never leaves half a file behind and an
existing file stays as it was.
"""
import contextlib
import os
import tempfile
from pathlib import Path


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
    path = Path(path)
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

"""The package's one exception base, and how every command-line tool reports it.

Every error the package raises on purpose (bad input, a missing file it was told to read, a
net Caffe would abort on) derives from `DlbhcError`, so a caller catches one class and a tool
maps it to one exit code. The message is one line that names the culprit (file, line, layer,
field or record) and, where there is one, what to do.

>>> try:
...     raise DlbhcError("net.prototxt:3: layer 'conv1': kernel_size must be > 0, got 0")
... except ValueError as err:   # a DlbhcError is a ValueError, as the old classes were
...     print(err)
net.prototxt:3: layer 'conv1': kernel_size must be > 0, got 0
"""

#: Exit codes shared by every tool: bad input or a failed step, and Ctrl-C (128 + SIGINT).
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class DlbhcError(ValueError):
    """Base of every error the package raises on purpose; its text is the whole message."""

"""The training log, in Caffe's glog format, and its parser.

Lines are written as Caffe's solver logs them (`Iteration 100, loss = 0.53`,
`Iteration 100, lr = 0.001`, `Iteration 100, Testing net (#0)`,
`    Test net output #0: accuracy = 0.53`), with glog's prefix (`I0521 14:03:07.123456 4242
train.py] ...`) in log.txt, so Caffe's own tools/extra/parse_log.py reads our logs and
`parse_log` reads Caffe's. Numbers are printed as C++ streams print them (6 significant digits).

>>> lines = ["I0731 16:17:41.417026 23561 solver.cpp:247] Iteration 0, Testing net (#0)",
...          "I0731 16:17:47.491853 23561 solver.cpp:298]     Test net output #0: accuracy = 0.0968",
...          "I0731 16:17:47.650558 23561 solver.cpp:191] Iteration 0, loss = 2.32529",
...          "I0731 16:17:47.650617 23561 solver.cpp:403] Iteration 0, lr = 0.001"]
>>> history = parse_log(lines)
>>> history.train_loss, history.test["accuracy"], history.lr
([(0, 2.32529)], [(0, 0.0968)], [(0, 0.001)])
"""
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf))"
_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER)
_LR = re.compile(r"Iteration (\d+), lr = " + _NUMBER)
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUMBER)


class CaffeLog:
    """Writes Caffe-style log lines to a file (with glog's prefix) and to the console.

    `echo` is a callable taking one line (default: print to stdout); use tqdm.write while a
    progress bar is shown. Lines are flushed as written, so `tail -f log.txt` follows training.
    """

    def __init__(self, path=None, echo=print, source="train.py"):
        self.path = Path(path) if path else None
        self.echo = echo
        self.source = source
        self._file = None

    def open(self):
        if self.path is not None and self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        return self

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    def prefix(self, level="I"):
        now = time.time()
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now))
        return f"{level}{stamp}.{int(now % 1 * 1e6):06d} {os.getpid()} {self.source}]"

    def info(self, message, level="I"):
        """Log one message (may hold several lines)."""
        for line in str(message).splitlines() or [""]:
            if self._file is not None:
                self._file.write(f"{self.prefix(level)} {line}\n")
                self._file.flush()
            if self.echo is not None:
                self.echo(line)

    def warning(self, message):
        self.info(message, level="W")


@dataclass
class History:
    """What a training log says: (iteration, value) series."""
    train_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    test: dict = field(default_factory=dict)   # output name -> [(iteration, value)]

    def last_test(self, name):
        """The last value of test output `name`, or None."""
        values = self.test.get(name)
        return values[-1][1] if values else None


def parse_log(lines):
    """A History from a Caffe (or our) training log: a path or an iterable of lines.

    A resumed run appends to the same log and repeats iterations from its snapshot on; later
    values replace earlier ones for the same iteration.
    """
    if isinstance(lines, (str, Path)):
        lines = Path(lines).read_text(encoding="utf-8", errors="replace").splitlines()
    loss, lr, tests = {}, {}, {}
    test_iteration = None
    for line in lines:
        match = _TESTING.search(line)
        if match:
            test_iteration = int(match.group(1))
            continue
        match = _TEST_OUTPUT.search(line)
        if match and test_iteration is not None:
            tests.setdefault(match.group(2), {})[test_iteration] = float(match.group(3))
            continue
        match = _LOSS.search(line)
        if match:
            loss[int(match.group(1))] = float(match.group(2))
            continue
        match = _LR.search(line)
        if match:
            lr[int(match.group(1))] = float(match.group(2))
    return History(train_loss=sorted(loss.items()), lr=sorted(lr.items()),
                   test={name: sorted(values.items()) for name, values in tests.items()})


def console(line):
    """Print a log line to stdout (the default echo)."""
    print(line, file=sys.stdout, flush=True)

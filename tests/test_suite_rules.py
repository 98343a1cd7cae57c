"""Rules of the test suite itself, read from the test files.

- Every skip goes through conftest's `unavailable` guard (which fails under CI=true unless the
  skip depends on this machine's hardware): no bare pytest.skip, importorskip or skip markers,
  since a test that always skips cannot fail.
"""
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BARE_SKIP = re.compile(r"pytest\.skip\(|importorskip\(|mark\.skip(if)?\b|pytest\.xfail\(")


def _sources():
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(TESTS.glob("*.py"))
            if p.name not in ("conftest.py", Path(__file__).name)]


def test_every_skip_goes_through_the_ci_guard():
    bare = [f"{path.name}:{n}: {line.strip()}" for path, text in _sources()
            for n, line in enumerate(text.splitlines(), 1) if BARE_SKIP.search(line)]
    assert not bare, "use conftest.unavailable(reason[, hardware=True]):\n" + "\n".join(bare)

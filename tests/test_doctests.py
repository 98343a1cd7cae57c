"""Every docstring example in the package runs (doctest over each module of dlbhc_caffe).

Modules that load real Caffe at import (backends/caffe.py) are marked `caffe` and run where it is
built; every other module runs everywhere.
"""
import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlbhc_caffe"
NEEDS_CAFFE = {"dlbhc_caffe.backends.caffe"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__" or parts[-1].endswith("_pb2"):
            continue  # a runner, and protoc's generated code
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        marks = [pytest.mark.caffe] if name in NEEDS_CAFFE else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_modules()))
def test_docstring_examples_run(name, request):
    if name in NEEDS_CAFFE:
        request.getfixturevalue("caffe")  # the CI guard: skipped (or failed under CI) without it
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

"""Shared test helpers.

Tests that need the original project's files (../shared/fixtures/cvprw15) or real Caffe skip with
the reason on a developer machine that lacks them, and fail under CI=true, where both must exist.
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "cvprw15"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixtures_dir():
    """../shared/fixtures/cvprw15, the original project's files."""
    if not FIXTURES.is_dir():
        _unavailable(f"fixtures missing: {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def caffe():
    """Real Caffe's Python module, as built by scripts/build_caffe.sh."""
    try:
        import caffe as caffe_module  # noqa: PLC0415 (tests may import caffe directly)
    except ImportError as err:
        _unavailable(f"real Caffe is not importable ({err}); run `make setup`")
    return caffe_module


@pytest.fixture(scope="session")
def caffe_pb2(caffe):
    """Real Caffe's own protobuf module (the schema we must match)."""
    from caffe.proto import caffe_pb2 as module  # noqa: PLC0415

    return module

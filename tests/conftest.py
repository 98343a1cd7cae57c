"""Shared test helpers.

Tests that need the original project's files (../shared/fixtures/cvprw15) or real Caffe skip with
the reason on a developer machine that lacks them, and fail under CI=true, where both must exist.
Every skip goes through `unavailable` (tests/test_suite_rules.py enforces it); only a skip that
depends on this machine's hardware (a CPU feature, a GPU), which CI cannot choose, may skip there.

Markers follow the fixtures a test uses (`pytest_collection_modifyitems`): a test that uses real
Caffe (the `caffe`, `caffe_pb2`, `caffe_tools` or `trained_small_run` fixture, directly or through
another fixture) is marked `caffe`, one that uses `fixtures_dir` is marked `fixtures`, so
`-m "not caffe"` selects exactly the tests that run without the Caffe build.
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "cvprw15"
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason, *, hardware=False):
    """Skip with `reason`; under CI=true fail instead, unless `hardware` (the skip depends on
    this machine's CPU or GPU, which CI cannot choose)."""
    if IN_CI and not hardware:
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(("hardware: " if hardware else "") + reason)


_unavailable = unavailable  # the name the first tests used

# fixture -> the marker every test using it gets (directly or through other fixtures)
FIXTURE_MARKS = {"caffe": "caffe", "caffe_pb2": "caffe", "caffe_tools": "caffe",
                 "trained_small_run": "caffe", "fixtures_dir": "fixtures"}


# Modules that run after all others: they need the Caffe variant `make test` builds in the
# background while the rest runs (scripts/run_tests.sh).
RUN_LAST = ("test_caffe_gpu.py", "test_caffe_variants.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in FIXTURE_MARKS:
                item.add_marker(FIXTURE_MARKS[name])
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def fixtures_dir():
    """../shared/fixtures/cvprw15, the original project's files."""
    if not FIXTURES.is_dir():
        unavailable(f"fixtures missing: {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def caffe():
    """Real Caffe's Python module, as built by scripts/build_caffe.sh."""
    try:
        import caffe as caffe_module  # noqa: PLC0415 (tests may import caffe directly)
    except ImportError as err:
        unavailable(f"real Caffe is not importable ({err}); run `make setup`")
    return caffe_module


@pytest.fixture(scope="session")
def caffe_pb2(caffe):
    """Real Caffe's own protobuf module (the schema we must match)."""
    from caffe.proto import caffe_pb2 as module  # noqa: PLC0415

    return module


@pytest.fixture(scope="session")
def caffe_tools():
    """Folder of real Caffe's command-line tools (upgrade_net_proto_text, ...).

    scripts/build_caffe.sh writes the cache root of its build to .venv/caffe_home (one line); the
    tools are in <root>/build/tools.
    """
    home_file = ROOT / ".venv" / "caffe_home"
    if not home_file.is_file():
        unavailable(f"real Caffe's tools are not built ({home_file} is missing); run `make setup`")
    tools = Path(home_file.read_text().strip()) / "build" / "tools"
    if not (tools / "upgrade_net_proto_text").is_file():
        unavailable(f"no upgrade_net_proto_text in {tools}; rebuild Caffe with `make setup`")
    return tools


# ---------------------------------------------------------------- training (tests/test_train.py)

# The shared small model: the small net on the embedded digits, 12 bits, trained once per session
# through tools/train.py (docs/small-net.md).
SMALL_RUN_ARGS = ("--bits", "12", "--net", "small", "--dataset", "digits", "--seed", "1",
                  "--max-iter", "600", "--test-interval", "100", "--snapshot", "300",
                  "--backend", "caffe", "--no-progress")


@pytest.fixture(scope="session")
def digits_data_root(tmp_path_factory):
    """A data folder holding digits/ as `tools/prepare.py --dataset digits` writes it."""
    from dlbhc_caffe import datasets  # noqa: PLC0415

    root = tmp_path_factory.mktemp("data")
    datasets.prepare("digits", root, progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def trained_small_run(caffe, digits_data_root, tmp_path_factory):
    """The small net trained on digits (12 bits) by tools/train.py, once per test session.

    A dict: run (the run folder), root (the data folder holding digits/), stdout, seconds.
    """
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    run = tmp_path_factory.mktemp("runs") / "digits_small_12"
    command = [sys.executable, str(ROOT / "tools" / "train.py"), *SMALL_RUN_ARGS,
               "--root", str(digits_data_root), "--out", str(run)]
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"training the shared small model failed (exit {done.returncode}):\n"
                    f"{done.stderr[-3000:]}", pytrace=False)
    return {"run": run, "root": digits_data_root, "stdout": done.stdout,
            "seconds": time.time() - started, "command": command}


# ---------------------------------------------------------------- search service (tests/test_serve*.py)

@pytest.fixture(scope="session")
def serve_sample(tmp_path_factory):
    """The service's sample index: the embedded digits as PNG class folders, indexed by the small
    net at random weights on the torch backend (no Caffe needed). A dict: index, images, model."""
    from dlbhc_caffe.serve import sample  # noqa: PLC0415

    root = tmp_path_factory.mktemp("serve")
    model = sample.untrained_model(root / "model")
    index = sample.build_sample_index(root / "images", model, root / "digits.index")
    return {"index": index, "images": root / "images", "model": model}


# ---------------------------------------------------------------- reports after the run

_REPORTS = []


def report_at_end(config, lines):
    """Print `lines` in pytest's terminal summary (after the run, not between its dots)."""
    _REPORTS.append(list(lines))


def pytest_terminal_summary(terminalreporter):
    for lines in _REPORTS:
        for line in lines:
            terminalreporter.write_line(line)

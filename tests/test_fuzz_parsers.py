"""The fuzz suite, bounded for the normal test run (about a minute in all): every reader of an
outside file (prototxt, caffemodel, solverstate, binaryproto, Datum, index) and the net rules
refuse what they cannot read with a one-line DlbhcError and nothing else, and a net the rules
accept builds in real Caffe with the same param shapes (caffe_agrees). `make fuzz` runs the
same targets for FUZZ_SECONDS per parser, each in a child process that also counts aborts,
crashes and hangs (tests/fuzz_targets.py)."""
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_targets  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 150))


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.caffe) if name in fuzz_targets.CAFFE_TARGETS else name
    for name in sorted(fuzz_targets.TARGETS)])
@pytest.mark.slow
def test_parser_refuses_only_with_one_line_errors(name, request):
    if name in fuzz_targets.CAFFE_TARGETS:   # the rules against real Caffe, in a child process
        request.getfixturevalue("caffe")
    target, strategy = fuzz_targets.TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        fuzz_targets.check(target, value)

    run()


@pytest.mark.parametrize("name", sorted(fuzz_targets.SEEDS))
def test_every_seed_is_read_without_error(name):
    """The mutations start from files the readers accept (so they probe near valid input)."""
    target, _ = fuzz_targets.TARGETS[name]
    for seed in fuzz_targets.SEEDS[name]:
        target(seed)

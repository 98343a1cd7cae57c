#!/usr/bin/env python
"""Upgrade an old Caffe net (V0 or V1 prototxt or caffemodel) or solver to the current format.

    python tools/upgrade_net.py old.prototxt new.prototxt
    python tools/upgrade_net.py old.caffemodel new.caffemodel
    python tools/upgrade_net.py old_solver.prototxt new_solver.prototxt

What Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text do;
a prototxt is a net or a solver by its content. Text or binary is chosen by each file's
extension (.caffemodel, .binaryproto, .pb, .bin are binary), so a caffemodel can be written as
prototxt to read it. Legacy fields that Caffe drops are reported as warnings.
"""
import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import proto  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="IN", help="net to upgrade (.prototxt or .caffemodel)")
    p.add_argument("output", metavar="OUT", help="where to write the upgraded net")
    p.add_argument("--force", action="store_true", help="overwrite OUT when it exists")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    source, target = Path(args.input), Path(args.output)
    if target.exists() and not args.force:
        print(f"error: {target} exists; use --force to overwrite it", file=sys.stderr)
        return 2
    try:
        if not proto.is_binary_path(source) and read_kind(source) == "solver":
            return upgrade_solver(source, target)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", proto.UpgradeWarning)
            old = proto.read_net(source, upgrade=False)
            if not proto.net_needs_upgrade(old):
                print(f"note: {source} is already in the current format", file=sys.stderr)
            net = proto.upgrade_net(old, source=str(source))
    except proto.ProtoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {source}: {warning.message}", file=sys.stderr)
    proto.write_message(net, target)
    print(f"wrote {target} ({len(net.layer)} layers, "
          f"{'binary' if proto.is_binary_path(target) else 'text'})")
    return 0


def read_kind(source):
    """"net" or "solver", by the prototxt's content."""
    try:
        text = source.read_text()
    except UnicodeDecodeError:
        raise proto.ProtoError(f"{source}: not a text prototxt (binary files need a .caffemodel, "
                               f".binaryproto, .pb or .bin name)") from None
    return proto.text_kind(text, source)


def upgrade_solver(source, target):
    """upgrade_solver_proto_text: solver_type (enum) -> type (string)."""
    old = proto.read_solver(source, upgrade=False)
    if not proto.solver_needs_upgrade(old):
        print(f"note: {source} is already in the current format", file=sys.stderr)
    solver = proto.upgrade_solver(old, source=str(source))
    proto.write_text(solver, target)
    print(f"wrote {target} (solver, type {solver.type or 'SGD'}, text)")
    return 0

if __name__ == "__main__":
    sys.exit(cli.run(main, "upgrade_net.py"))

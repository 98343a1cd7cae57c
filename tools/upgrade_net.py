#!/usr/bin/env python
"""Upgrade an old Caffe net (V0 or V1 prototxt or caffemodel) to the current format.

    python tools/upgrade_net.py old.prototxt new.prototxt
    python tools/upgrade_net.py old.caffemodel new.caffemodel

What Caffe's upgrade_net_proto_text and upgrade_net_proto_binary do. Text or binary is chosen by
each file's extension (.caffemodel, .binaryproto, .pb, .bin are binary), so a caffemodel can be
written as prototxt to read it. Legacy fields that Caffe drops are reported as warnings.
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", proto.UpgradeWarning)
        try:
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


if __name__ == "__main__":
    sys.exit(cli.run(main, "upgrade_net.py"))

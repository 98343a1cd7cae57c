"""Fuzz targets over every reader of an outside file, and the `make fuzz` runner.

Each target takes bytes and feeds them to one reader the way the pipeline does (prototxt ->
parse, upgrade, Caffe's rules; caffemodel -> weights plan; solverstate -> the resume checks;
binaryproto -> a mean; Datum -> record checks and decoding; index -> load and query). A reader
may refuse its input only with a `DlbhcError` (one line naming the culprit); any other exception
is a bug, as is an abort, a crash or a hang. Inputs are valid files of each kind, mutated
(bytes flipped, inserted, deleted, duplicated, truncated), or random bytes; nets are also built
field by field from the schema (`random_nets`).

    python tests/fuzz_targets.py --seconds 600          # every parser, each in a child process
    python tests/fuzz_targets.py --seconds 60 --only index

prints the inputs tried per parser and what went wrong (nothing, when all is well). The bounded
version runs in the normal test suite (tests/test_fuzz_parsers.py).
"""
import argparse
from concurrent.futures import ThreadPoolExecutor
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from dlbhc_caffe import proto  # noqa: E402
from dlbhc_caffe.datasets import dbread  # noqa: E402
from dlbhc_caffe.datasets.records import decode_datum  # noqa: E402
from dlbhc_caffe.errors import DlbhcError  # noqa: E402
from dlbhc_caffe.rules.shapes import known_types  # noqa: E402
from dlbhc_caffe.rules.validate import check_deploy, check_net  # noqa: E402
from dlbhc_caffe.search.index import HashIndex, load_index  # noqa: E402
from dlbhc_caffe.train.snapshots import snapshot_problem  # noqa: E402
from dlbhc_caffe.rules.weights import plan_weight_copy  # noqa: E402
from reliability_nets import BASE  # noqa: E402

pb = proto.pb
_TMP = Path(tempfile.mkdtemp(prefix="dlbhc-fuzz-"))
_BASE_NET = proto.parse_text(BASE, pb.NetParameter())
_BASE_PARAMS = check_net(_BASE_NET, "base").params


# ---------------------------------------------------------------- seeds

def _model_bytes(legacy=False):
    rng = np.random.default_rng(0)
    model = pb.NetParameter(name="tiny")
    for layer in _BASE_NET.layer:
        out = model.layers.add(name=layer.name, type=14) if legacy else \
            model.layer.add(name=layer.name, type=layer.type)
        for shape in _BASE_PARAMS.get(layer.name, []):
            out.blobs.add().CopyFrom(proto.array_to_blob(rng.normal(size=shape),
                                                         diff=np.zeros(shape) if legacy else None))
    return model.SerializeToString()


def _state_bytes():
    state = pb.SolverState(iter=4, learned_net="tiny.caffemodel", current_step=1)
    for shapes in _BASE_PARAMS.values():
        for shape in shapes:
            state.history.add().CopyFrom(proto.array_to_blob(np.zeros(shape)))
    return state.SerializeToString()


def _index_bytes():
    index = HashIndex(bits=12, meta={"model": {"deploy": "d.prototxt", "weights": "m"}})
    rng = np.random.default_rng(0)
    index.add(rng.integers(0, 2, (5, 12)), fc7=rng.normal(size=(5, 3)), labels=[0, 1, 0, 1, 2],
              paths=[f"img{i}.jpg" for i in range(4)] + ["caf\u00e9.png"])
    path = _TMP / "seed.index"
    index.save(path)
    return path.read_bytes()


def _datum_seeds():
    from PIL import Image  # noqa: PLC0415
    import io  # noqa: PLC0415

    raw = proto.datum_from_array(np.arange(48, dtype=np.uint8).reshape(3, 4, 4), 3)
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
    encoded = pb.Datum(data=png.getvalue(), encoded=True, label=1)
    floats = pb.Datum(channels=1, height=2, width=2, float_data=[0.5, 1, 2, 3], label=0)
    return [d.SerializeToString() for d in (raw, encoded, floats)]


def _net_seeds():
    files = sorted(f for f in (ROOT / "prototxt").rglob("*.prototxt") if "solver" not in f.name)
    return [BASE.encode()] + [f.read_bytes() for f in files[:3]] + [
        b'name: "v0"\nlayers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 }'
        b' bottom: "data" top: "c" }\ninput: "data"\ninput_dim: 1 input_dim: 1 input_dim: 5'
        b' input_dim: 5\n',
        b'layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" '
        b'inner_product_param { num_output: 2 } }\ninput: "data" input_shape { dim: 1 dim: 4 }\n']


SEEDS = {"prototxt": _net_seeds(), "caffemodel": [_model_bytes(), _model_bytes(legacy=True)],
         "solverstate": [_state_bytes()],
         "binaryproto": [proto.array_to_blob(np.ones((1, 3, 4, 4)), legacy_4d=True)
                         .SerializeToString(),
                         proto.array_to_blob(np.ones((3, 2, 2))).SerializeToString()],
         "datum": _datum_seeds(), "index": [_index_bytes()]}


@st.composite
def mutated(draw, seeds):
    """A seed with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(("flip", "insert", "delete", "set", "cut", "dup")))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "set" and data:
            data[at] = draw(st.sampled_from((0, 0x7F, 0x80, 0xFF, ord("-"), ord("{"), ord("}"))))
        elif op == "cut":
            del data[at:]
        elif op == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def inputs(kind):
    return st.one_of(mutated(SEEDS[kind]), st.binary(max_size=256))


# ---------------------------------------------------------------- nets built from the schema

_SMALL = st.one_of(st.integers(-2, 12), st.sampled_from([0, 1, 2, 3, 2 ** 31 - 1, 2 ** 31,
                                                         2 ** 32 - 1, -2 ** 31]))


def _value(field):
    if field.cpp_type == field.CPPTYPE_BOOL:
        return st.booleans()
    if field.cpp_type == field.CPPTYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):
        return st.floats(-4, 4, allow_nan=False)
    if field.cpp_type == field.CPPTYPE_STRING:
        return st.sampled_from(["", "x", "constant", "xavier"])
    low = 0 if field.cpp_type in (field.CPPTYPE_UINT32, field.CPPTYPE_UINT64) else -2 ** 31
    high = 2 ** 32 - 1 if field.cpp_type == field.CPPTYPE_UINT32 else 2 ** 31 - 1
    return _SMALL.filter(lambda v: low <= v <= high)


@st.composite
def random_layer(draw, index, blobs):
    kind = draw(st.sampled_from(known_types()))
    layer = pb.LayerParameter(name=f"l{index}", type=kind)
    layer.bottom.extend(draw(st.lists(st.sampled_from(blobs), max_size=3)) if blobs else [])
    layer.top.extend(draw(st.lists(st.sampled_from(blobs + [f"b{index}"]), min_size=0,
                                   max_size=2, unique=True)))
    holder_name = {"InnerProduct": "inner_product_param", "LRN": "lrn_param",
                   "ReLU": "relu_param", "TanH": "tanh_param", "ELU": "elu_param"}.get(
        kind, "".join("_" + c.lower() if c.isupper() else c for c in kind).lstrip("_") + "_param")
    holder = getattr(layer, holder_name, None) if holder_name in \
        pb.LayerParameter.DESCRIPTOR.fields_by_name else None
    if holder is not None:
        fields = [f for f in holder.DESCRIPTOR.fields if f.message_type is None]
        for field in draw(st.lists(st.sampled_from(fields), max_size=4, unique_by=id)
                          if fields else st.just([])):
            value = draw(_value(field))
            if field.label == field.LABEL_REPEATED:
                getattr(holder, field.name).extend([value] * draw(st.integers(1, 3)))
            else:
                setattr(holder, field.name, value)
        if kind in ("Input", "DummyData", "Reshape"):
            shape = holder.shape.add() if kind != "Reshape" else holder.shape
            shape.dim.extend(draw(st.lists(_SMALL.filter(lambda v: -2 <= v <= 40), max_size=4)))
    return layer


@st.composite
def random_nets(draw):
    """A NetParameter of up to 6 layers of the types with rules, fields drawn from the schema."""
    net = pb.NetParameter(name="fuzz")
    first = net.layer.add(name="in", type="Input", top=["data"])
    first.input_param.shape.add().dim.extend(draw(st.lists(st.integers(1, 9), min_size=1,
                                                           max_size=4)))
    blobs = ["data"]
    for i in range(draw(st.integers(1, 6))):
        layer = draw(random_layer(i, blobs))
        net.layer.add().CopyFrom(layer)
        blobs += [t for t in layer.top if t not in blobs]
    return net


# ---------------------------------------------------------------- targets

def _write(data, name):
    path = _TMP / name
    path.write_bytes(data)
    return path


def target_prototxt(data):
    net = proto.parse_text(data, pb.NetParameter(), "fuzz.prototxt")
    check_deploy(proto.upgrade_net(net, source="fuzz.prototxt"), "fuzz.prototxt")


def target_caffemodel(data):
    path = _write(data, "fuzz.caffemodel")
    proto.read_net(path)
    plan_weight_copy(_BASE_PARAMS, path)


def target_solverstate(data):
    path = _write(data, "fuzz_iter_4.solverstate")
    _write(_model_bytes(), "tiny.caffemodel")
    problem = snapshot_problem(path)
    assert problem is None or isinstance(problem, str)
    state = proto.read_solverstate(path)
    for i, blob in enumerate(state.history):
        proto.check_blob_values(blob, f"history blob {i}")


def target_binaryproto(data):
    proto.read_mean(_write(data, "fuzz.binaryproto"))


def target_datum(data):
    datum = dbread.parse_datum(data, "fuzz_db: record 00000000")
    if dbread.check_datum(datum, "fuzz_db: record 00000000", classes=10) is not None or \
            datum.encoded:
        decode_datum(datum)


def target_index(data):
    index = load_index(_write(data, "fuzz.index"))
    index.paths_of(np.arange(index.ntotal))
    if index.ntotal:
        index.search(np.zeros((1, index.bits), np.uint8), k=1)


def target_nets(net):
    check_net(net, "fuzz.prototxt")


_CAFFE_WORKER = """
import json, os, sys
os.environ.setdefault("GLOG_minloglevel", "2")
import caffe
for line in sys.stdin:
    net = caffe.Net(line.strip(), caffe.TEST)
    print(json.dumps({k: [list(b.data.shape) for b in v] for k, v in net.params.items()}),
          flush=True)
"""


class CaffeWorker:
    """Real Caffe in a child process that builds the nets it is given; an abort there kills only
    the child, which is started again."""

    def __init__(self):
        self.process = None

    def build(self, net):
        """(True, param shapes) when Caffe builds `net`, (False, its last words) when it aborts."""
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, "-c", _CAFFE_WORKER], text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, cwd=_TMP)
        path = _TMP / "caffe_net.prototxt"
        proto.write_text(net, path)
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if line:
            return True, {k: [tuple(s) for s in v] for k, v in json.loads(line).items()}
        self.process.wait()
        words = [w for w in self.process.stderr.read().splitlines() if w.strip()]
        fatal = [w.split("] ", 1)[-1] for w in words if w[:1] == "F" and "] " in w]
        self.process = None
        return False, (fatal or words or ["(no message)"])[-1]


_WORKER = CaffeWorker()


def target_caffe_agrees(net):
    """Differential: a net the rules accept must build in real Caffe, with the same param
    shapes (an AssertionError here is a rule that lets an abort through)."""
    try:
        shapes = check_net(net, "fuzz.prototxt")
    except DlbhcError:
        return
    built, result = _WORKER.build(net)
    assert built, f"rules accept, real Caffe aborts: {result}"
    assert result == shapes.params, f"param shapes differ: Caffe {result}, rules {shapes.params}"


TARGETS = {"prototxt": (target_prototxt, inputs("prototxt")),
           "caffemodel": (target_caffemodel, inputs("caffemodel")),
           "solverstate": (target_solverstate, inputs("solverstate")),
           "binaryproto": (target_binaryproto, inputs("binaryproto")),
           "datum": (target_datum, inputs("datum")),
           "index": (target_index, inputs("index")),
           "nets": (target_nets, random_nets()),
           "caffe_agrees": (target_caffe_agrees, random_nets())}
CAFFE_TARGETS = {"caffe_agrees"}  # need real Caffe


def check(target, value):
    """Run one input; a DlbhcError is a refusal, anything else propagates (a bug)."""
    try:
        target(value)
    except DlbhcError as err:
        assert "\n" not in str(err), f"a multi-line error: {err!r}"


# ---------------------------------------------------------------- the timed runner

class _TimeUp(Exception):
    pass


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def fuzz_for(name, seconds, hang_seconds=10):
    """Fuzz one target for `seconds`; returns {inputs, unexpected: {type: example}, hangs}."""
    target, strategy = TARGETS[name]
    end = time.monotonic() + seconds
    report = {"parser": name, "inputs": 0, "unexpected": {}, "hangs": 0}
    signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=10 ** 9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        if time.monotonic() > end:
            raise _TimeUp()
        report["inputs"] += 1
        signal.alarm(hang_seconds)
        try:
            check(target, value)
        except _Hang:
            report["hangs"] += 1
        except Exception as err:  # noqa: BLE001 (a bug: recorded, fuzzing goes on)
            kind = f"{type(err).__name__}: {str(err)[:120]}"
            report["unexpected"].setdefault(kind[:90], repr(value)[:400])
        finally:
            signal.alarm(0)

    while time.monotonic() < end:
        try:
            run()
        except _TimeUp:
            break
    return report


def _child(name, seconds):
    """(exit code or None for a hang, stdout, stderr) of one parser's fuzzing child."""
    command = [sys.executable, __file__, "--child", name, "--seconds", str(seconds)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        return done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        return None, "", ""


def _report(name, code, out, err):
    """Print one parser's line; True when it found anything."""
    report = json.loads(out.splitlines()[-1]) if code == 0 and out.strip() else \
        {"inputs": "?", "unexpected": {}, "hangs": int(code is None)}
    aborts = int(code == -signal.SIGABRT)
    crashes = int(code not in (0, None, -signal.SIGABRT))
    print(f"{name:12s} {report['inputs']:>9} {aborts:>6d} {crashes:>7d} "
          f"{report['hangs']:>5d} {len(report['unexpected']):>10d}", flush=True)
    for kind, example in report["unexpected"].items():
        print(f"    {kind}: {example[:300]!r}")
    if code != 0:
        print(f"    child exit status {code}: {err[-500:] if code else ''}")
    return bool(aborts or crashes or report["hangs"] or report["unexpected"])


def main(argv=None):
    p = argparse.ArgumentParser(description="Fuzz every parser, each in a child process.")
    p.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)),
                   help="budget per parser (default FUZZ_SECONDS or 600)")
    p.add_argument("--only", action="append", choices=sorted(TARGETS))
    p.add_argument("--jobs", type=int, default=int(os.environ.get("FUZZ_JOBS", 1)),
                   help="parsers fuzzed at once (default FUZZ_JOBS or 1)")
    p.add_argument("--child", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(fuzz_for(args.child, args.seconds)))
        return 0
    failed = False
    print(f"{'parser':12s} {'inputs':>9s} {'aborts':>6s} {'crashes':>7s} {'hangs':>5s} "
          f"{'unexpected':>10s}   (budget {args.seconds:g} s each, {args.jobs} at a time)",
          flush=True)
    names = args.only or sorted(TARGETS)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, (code, out, err) in zip(names, pool.map(
                lambda name: _child(name, args.seconds), names)):
            failed |= _report(name, code, out, err)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

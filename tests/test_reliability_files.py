"""Issue 10, items 1 (the parser), 2, 5 (a crafted index), 8, 9 and 10 (two index writers):
files Caffe's parser refuses are refused here too, with file:line; model and index files that
would abort Caffe or mislead a search are one-line errors; tools exit 2 and write nothing."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlbhc_caffe import cli, proto
from dlbhc_caffe.errors import DlbhcError
from dlbhc_caffe.encode import Encoder
from dlbhc_caffe.search.index import ALIGN, HashIndex, IndexFormatError, load_index

sys.path.insert(0, str(Path(__file__).parent))
from reliability_nets import BASE, CASES, net_text, write_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pb = proto.pb


# ---------------------------------------------------------------- item 1: Caffe's parser

PARSER_CASES = {
    "singular field twice": (b'name: "a"\nname: "b"\n', False, 'multiple "name" fields'),
    "message field twice": (b'layer { name: "d" input_param { shape { dim: 1 } }\n'
                            b'input_param { shape { dim: 2 } } }\n', False,
                            'multiple "input_param" fields'),
    "NUL in a comment": (b'name: "a"\n# x\0y\n', False, "a NUL byte"),
    "NUL in a string": (b'name: "a\0b"\n', False, "a NUL byte"),
    "Latin-1 in a comment": (b'# caf\xe9 cr\xe8me\nname: "a"\n', True, None),
}


@pytest.mark.parametrize("case", sorted(PARSER_CASES))
def test_prototxt_parser_is_as_strict_as_caffe(case, tmp_path):
    data, accepted, fragment = PARSER_CASES[case]
    path = tmp_path / "net.prototxt"
    path.write_bytes(data)
    if accepted:
        assert proto.read_net(path).name == "a"
        return
    with pytest.raises(proto.ProtoError) as err:
        proto.read_net(path)
    line = data[:data.index(b"\0")].count(b"\n") + 1 if b"\0" in data else 2
    assert str(err.value).startswith(f"{path}:{line}") and fragment in str(err.value)


@pytest.mark.caffe
@pytest.mark.parametrize("case", sorted(PARSER_CASES))
def test_caffe_parser_agrees(caffe_tools, case, tmp_path):
    data, accepted, _ = PARSER_CASES[case]
    path = tmp_path / "net.prototxt"
    path.write_bytes(data)
    done = subprocess.run([str(caffe_tools / "upgrade_net_proto_text"), str(path),
                           str(tmp_path / "out.prototxt")], capture_output=True)
    assert (done.returncode == 0) == accepted, done.stderr[-500:]


def test_latin1_outside_a_comment_is_one_line(tmp_path):
    """Caffe keeps such bytes in a name; protobuf's Python cannot, so it is refused clearly."""
    path = tmp_path / "net.prototxt"
    path.write_bytes(b'name: "caf\xe9"\n')
    with pytest.raises(proto.ProtoError, match=f"^{path}:1: bytes that are not UTF-8 outside a "
                                               f"comment; save the file as UTF-8$"):
        proto.read_net(path)


# ---------------------------------------------------------------- item 9: old formats

def test_v0_kernelsize_on_a_relu_is_dropped_as_caffe_does(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text('layers { layer { name: "relu" type: "relu" kernelsize: 3 } '
                    'bottom: "data" top: "data" }\ninput: "data"\n'
                    'input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n')
    with pytest.warns(proto.UpgradeWarning, match="'kernelsize' has no meaning in a 'relu'"):
        net = proto.read_net(path)
    assert [layer.type for layer in net.layer] == ["Input", "ReLU"]


def test_non_utf8_layer_name_in_a_v1_caffemodel_is_one_line(tmp_path):
    net = pb.NetParameter()
    net.layers.add(name="ab", type=pb.V1LayerParameter.INNER_PRODUCT)
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString().replace(b"ab", b"a\xe9"))
    with pytest.raises(proto.ProtoError, match=f"^{path}: .*not UTF-8"):
        proto.read_net(path)


# ---------------------------------------------------------------- item 2: blob value counts

def _damaged_model(folder, how):
    path = write_model(folder / f"{how}.caffemodel")
    model = proto.read_net(path, upgrade=False)
    blob = next(layer for layer in model.layer if layer.name == "fc7").blobs[0]
    if how == "short":
        del blob.data[-1]
    else:
        blob.diff.extend([0.0] * (len(blob.data) + 1))
    proto.write_binary(model, path)
    return path


MODEL_CASES = {"short": "shape (6, 36) needs 216 values, the file holds 215",
               "extra_diff": "shape (6, 36) needs 216 diff values, the file holds 217"}


@pytest.mark.parametrize("backend", [pytest.param("caffe", marks=pytest.mark.caffe), "torch"])
@pytest.mark.parametrize("how", sorted(MODEL_CASES))
def test_caffemodel_with_a_wrong_value_count_is_one_line(tmp_path, backend, how, request):
    if backend == "caffe":
        request.getfixturevalue("caffe")
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(BASE)
    model = _damaged_model(tmp_path, how)
    with pytest.raises(DlbhcError) as err:
        Encoder.from_files(deploy, model, backend=backend)
    assert f"{model}: layer 'fc7', param 0: {MODEL_CASES[how]}" in str(err.value)


@pytest.mark.caffe
@pytest.mark.parametrize("how", sorted(MODEL_CASES))
def test_real_caffe_aborts_on_a_wrong_value_count(caffe, tmp_path, how):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(BASE)
    model = _damaged_model(tmp_path, how)
    done = subprocess.run([sys.executable, "-c", "import caffe, sys; caffe.Net(sys.argv[1], "
                           "caffe.TEST, weights=sys.argv[2])", str(deploy), str(model)],
                          capture_output=True, text=True,
                          env=dict(os.environ, GLOG_minloglevel="2"))
    assert done.returncode == -6 and "Check failed" in done.stderr


# ---------------------------------------------------------------- tools: exit 2, nothing written

@pytest.fixture
def images(tmp_path):
    from PIL import Image  # noqa: PLC0415

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    write_model(tmp_path / "m.caffemodel")
    (tmp_path / "base.prototxt").write_text(BASE)
    return tmp_path


def _search(*args, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "search.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def _exit_2_one_line(done):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, \
        done.stderr[-2000:]
    return lines[0]


TOOL_CASES = [case for case in CASES if case[0] in ("wrong bottom", "stride 0", "Crop mismatch",
                                                    "huge Input")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("caffe", marks=pytest.mark.caffe), "torch"])
@pytest.mark.parametrize("name,edits,fragment,aborts", TOOL_CASES,
                         ids=[case[0] for case in TOOL_CASES])
def test_search_index_refuses_bad_deploys(images, backend, name, edits, fragment, aborts):
    deploy = images / "bad.prototxt"
    deploy.write_text(net_text(edits))
    out = images / "out.index"
    done = _search("index", "--deploy", deploy, "--model", images / "m.caffemodel", "--folder",
                   images / "imgs", "--out", out, "--backend", backend, "--quiet", cwd=images)
    line = _exit_2_one_line(done)
    assert fragment in line and str(deploy) in line
    assert not out.exists()


# ---------------------------------------------------------------- item 5: a crafted index

def test_an_index_cannot_make_a_query_load_a_model_from_elsewhere(images, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    victim = elsewhere / "precious.txt"
    victim.write_text("keep me")
    deploy = elsewhere / "writer.prototxt"
    deploy.write_text(BASE + 'layer { name: "dump" type: "HDF5Output" bottom: "fc7" '
                      'bottom: "fc7" hdf5_output_param { file_name: "%s" } }\n' % victim)
    write_model(elsewhere / "m.caffemodel")
    index = HashIndex(bits=4, meta={"model": {"deploy": str(deploy),
                                              "weights": str(elsewhere / "m.caffemodel")}})
    index.add(np.eye(4, dtype=np.uint8), fc7=np.zeros((4, 6)))
    index.save(images / "crafted.index")
    done = _search("query", "--index", images / "crafted.index", images / "imgs" / "0.png",
                   "--k", "2", "--montage", images / "q.png", "--backend", "torch", cwd=images)
    line = _exit_2_one_line(done)
    assert f"the model file it records, {deploy}, is not beside it" in line
    assert victim.read_text() == "keep me" and not (images / "q.png").exists()


TAP = """import caffe


class Tap(caffe.Layer):
    def setup(self, bottom, top):
        with open(self.param_str, "a") as f:
            f.write("ran\\n")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
"""


@pytest.mark.parametrize("backend", [pytest.param("caffe", marks=pytest.mark.caffe), "torch"])
def test_a_code_running_layer_runs_only_when_the_command_line_names_it(images, backend, request):
    """A Python layer is refused by default (the message gives the flag); `--allow-layer NAME`
    lets the engine run it, and the index records the model but never the permission."""
    if backend == "caffe":
        request.getfixturevalue("caffe")
    (images / "tap.py").write_text(TAP)
    ran = images / "ran.txt"
    deploy = images / "tap.prototxt"
    deploy.write_text(BASE + 'layer { name: "tap" type: "Python" bottom: "fc7" top: "tapped" '
                      'python_param { module: "tap" layer: "Tap" param_str: "%s" } }\n' % ran)
    args = ["index", "--deploy", deploy, "--model", images / "m.caffemodel", "--folder",
            images / "imgs", "--backend", backend, "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(images))
    line = _exit_2_one_line(_search(*args, "--out", images / "a.index", cwd=images, env=env))
    assert "layer 'tap' (Python)" in line and "--allow-layer tap" in line
    assert not ran.exists() and not (images / "a.index").exists()
    done = _search(*args, "--out", images / "b.index", "--allow-layer", "tap", cwd=images, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ran.read_text().startswith("ran")
    model = load_index(images / "b.index").meta["model"]
    assert model["deploy"] == str(deploy) and "allow_layers" not in model


def test_hdf5_output_is_refused_even_when_named(images):
    """Real Caffe's HDF5Output writes its datasets once and aborts on the next forward, so an
    encoder (many forwards) can never run it: refused, with the reason, allowed or not."""
    dump = images / "dump.h5"
    deploy = images / "writer.prototxt"
    deploy.write_text(BASE + 'layer { name: "dump" type: "HDF5Output" bottom: "fc7" '
                      'bottom: "fc7" hdf5_output_param { file_name: "%s" } }\n' % dump)
    line = _exit_2_one_line(_search(
        "index", "--deploy", deploy, "--model", images / "m.caffemodel", "--folder",
        images / "imgs", "--out", images / "a.index", "--allow-layer", "dump", cwd=images))
    assert "layer 'dump' (HDF5Output)" in line and "one forward" in line
    assert not dump.exists() and not (images / "a.index").exists()


@pytest.mark.slow
def test_a_recorded_model_beside_the_index_is_used_and_named(images):
    model = ["--deploy", images / "base.prototxt", "--model", images / "m.caffemodel"]
    assert _search("index", *model, "--folder", images / "imgs", "--out", images / "ok.index",
                   "--backend", "torch", "--quiet", cwd=images).returncode == 0
    done = _search("query", "--index", images / "ok.index", images / "imgs" / "1.png", "--k",
                   "2", "--montage", images / "q.png", "--backend", "torch", cwd=images)
    assert done.returncode == 0, done.stderr
    assert f"model recorded in {images / 'ok.index'}: {images / 'base.prototxt'}" in done.stderr


# ---------------------------------------------------------------- item 8: the index loader

def _index_file(folder, bits=12):
    index = HashIndex(bits=bits)
    rng = np.random.default_rng(3)
    index.add(rng.integers(0, 2, (4, bits)), ids=[10, 11, 12, 13],
              paths=["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    return index.save(folder / "x.index")


def _rewrite_header(path, change):
    data = bytearray(path.read_bytes())
    length = int(np.frombuffer(bytes(data[8:16]), "<u4")[1])
    header = json.loads(bytes(data[16:16 + length]))
    change(header)
    body = json.dumps(header).encode()
    first = min(offset for offset, _ in json.loads(bytes(data[16:16 + length]))["sections"]
                .values())
    assert 16 + len(body) <= first
    data[8:16] = np.array([1, len(body)], "<u4").tobytes()
    data[16:first] = body + b"\0" * (first - 16 - len(body))
    path.write_bytes(bytes(data))


def _section(path, name):
    data = path.read_bytes()
    length = int(np.frombuffer(data[8:16], "<u4")[1])
    return json.loads(data[16:16 + length])["sections"][name]


def _patch(path, name, dtype, change):
    offset, nbytes = _section(path, name)
    data = bytearray(path.read_bytes())
    values = np.frombuffer(bytes(data[offset:offset + nbytes]), dtype).copy()
    change(values)
    data[offset:offset + nbytes] = values.tobytes()
    path.write_bytes(bytes(data))


HEADER_CASES = {
    "bits as a string": (lambda h: h.update(bits="12"), "'bits' must be an integer"),
    "bits as true": (lambda h: h.update(bits=True), "'bits' must be an integer"),
    "ntotal a float": (lambda h: h.update(ntotal=4.5), "'ntotal' must be an integer"),
    "ntotal huge": (lambda h: h.update(ntotal=10 ** 30), "'ntotal' must be an integer"),
    "sections a list": (lambda h: h.update(sections=[1, 2]), "'sections' must be a JSON object"),
    "section not a pair": (lambda h: h["sections"].update(ids=7), "section 'ids' must be"),
    "meta a string": (lambda h: h.update(meta="x"), "'meta' must be a JSON object"),
    "fc7_dim negative": (lambda h: h.update(fc7_dim=-1), "'fc7_dim' must be an integer >= 1"),
    "no bits": (lambda h: h.pop("bits"), "header lacks 'bits'"),
    "header a list": (lambda h: (h.clear(), None), "header lacks"),
}
ARRAY_CASES = {
    "offsets not monotonic": ("path_offsets", "<i8", lambda v: v.__setitem__(2, 0),
                              "offsets are not increasing"),
    "code bits above bits": ("codes", "<u8", lambda v: v.__setitem__(1, v[1] | np.uint64(1 << 40)),
                             "code of row 1 has bits set above its 12 bits"),
    "duplicate ids": ("ids", "<i8", lambda v: v.__setitem__(3, 11), "id 11 appears more than once"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_index_header_of_wrong_types_is_one_line(tmp_path, case):
    path = _index_file(tmp_path)
    change, fragment = HEADER_CASES[case]
    _rewrite_header(path, change)
    with pytest.raises(IndexFormatError) as err:
        load_index(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_index_sections_that_disagree_are_refused(tmp_path, case):
    path = _index_file(tmp_path)
    name, dtype, change, fragment = ARRAY_CASES[case]
    _patch(path, name, dtype, change)
    with pytest.raises(IndexFormatError, match=fragment):
        load_index(path)


@pytest.mark.slow
def test_search_query_on_a_corrupt_index_exits_2(images):
    path = _index_file(images)
    _patch(path, "ids", "<i8", lambda v: v.__setitem__(3, 11))
    done = _search("query", "--index", path, images / "imgs" / "0.png", "--k", "2", "--deploy",
                   images / "base.prototxt", "--model", images / "m.caffemodel",
                   "--backend", "torch", "--montage", images / "q.png", cwd=images)
    assert "id 11 appears more than once" in _exit_2_one_line(done)
    assert not (images / "q.png").exists()


# ---------------------------------------------------------------- items 9 and 10: output paths

def _index_argv(images, out):
    return ["index", "--deploy", str(images / "base.prototxt"), "--model",
            str(images / "m.caffemodel"), "--folder", str(images / "imgs"), "--out", str(out),
            "--backend", "torch", "--quiet"]


@pytest.fixture
def search_main():
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("search_tool", ROOT / "tools" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_an_output_path_that_is_a_folder_is_one_line(images, search_main, capsys):
    (images / "dir.index").mkdir()
    assert cli.run(search_main, "search.py", _index_argv(images, images / "dir.index") +
                   ["--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{images / 'dir.index'}: is a folder; give a file name to write")
    assert "\n" not in err


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_disk_or_read_only_folder_is_one_line(images, search_main, capsys, monkeypatch,
                                                      error):
    import dlbhc_caffe.fileio as fileio  # noqa: PLC0415

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error), str(images / "out.index"))

    monkeypatch.setattr(fileio.os, "replace", refuse)   # where the finished file would land
    assert cli.run(search_main, "search.py", _index_argv(images, images / "out.index")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{images / 'out.index'}: {os.strerror(error)}") and "\n" not in err
    assert not (images / "out.index").exists()
    assert not [p for p in images.iterdir() if p.name.startswith(".out.index")]


@pytest.mark.slow
def test_a_non_integer_label_names_its_line(images):
    (images / "list.txt").write_text("imgs/0.png 0\nimgs/1.png x\nimgs/2.png 1\n")
    done = _search(*_index_argv(images, images / "l.index")[:5], "--list", images / "list.txt",
                   "--out", images / "l.index", "--backend", "torch", cwd=images)
    assert f"{images / 'list.txt'}:2: label 'x' is not an integer" in _exit_2_one_line(done)


def test_a_second_writer_of_an_index_is_refused(images, search_main, capsys):
    from dlbhc_caffe.fileio import output_lock  # noqa: PLC0415

    out = images / "busy.index"
    with output_lock(out, "index"):
        assert cli.run(search_main, "search.py", _index_argv(images, out)) == 2
    assert f"{out}: another process is writing this index" in capsys.readouterr().err
    assert not out.exists()
    assert cli.run(search_main, "search.py", _index_argv(images, out)) == 0   # once it is free


@pytest.mark.slow
def test_two_concurrent_index_runs_one_is_refused(images):
    outs = [subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"),
                              *_index_argv(images, images / "both.index")],
                             cwd=images, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in outs]
    codes = sorted(code for code, _ in results)
    # Either the second started after the first finished (then "already exists"), or it was
    # refused by the lock; never two successes.
    assert codes == [0, 2], results
    assert any("another process is writing this index" in err or "already exists" in err
               for _, err in results)


# ---------------------------------------------------------------- leftovers of a killed writer

def test_a_killed_runs_staged_snapshot_is_removed_and_a_live_ones_kept(tmp_path):
    from dlbhc_caffe.train.snapshots import staging_prefix  # noqa: PLC0415

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    prefix = tmp_path / "snap"
    dead = [tmp_path / f".snap.partial-{gone}_iter_10.caffemodel",
            tmp_path / f".snap.partial-{gone}_iter_10.solverstate"]
    live = tmp_path / f".snap.partial-{os.getppid()}_iter_10.caffemodel"
    kept = [live, tmp_path / "snap_iter_10.caffemodel", tmp_path / f".other.partial-{gone}"]
    for path in dead + kept:
        path.write_bytes(b"x")
    said = []
    staged = staging_prefix(prefix, log=said.append)
    assert staged == tmp_path / f".snap.partial-{os.getpid()}"
    assert not any(p.exists() for p in dead) and all(p.exists() for p in kept)
    assert len(said) == 2 and "left by an interrupted run" in said[0]

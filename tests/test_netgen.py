"""The KevinNet / small-net generator, the committed reference files, and tools/train.py --dry-run.

Our 48-bit CIFAR-10 files are held against the authors' (upgraded) train, test, deploy and solver
files layer by layer; every difference is deliberate and listed in DELIBERATE_DIFFERENCES, and
`original_as_ours` applies exactly those to the original, which must then equal ours.
"""
import importlib.util
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import ROOT
from dlbhc_caffe import netgen, proto, runs
from dlbhc_caffe.netgen import kevinnet, small
from dlbhc_caffe.proto import pb

TRAIN_TOOL = ROOT / "tools" / "train.py"

DELIBERATE_DIFFERENCES = [
    "one train_val net: the original's V0 train and test nets merged, their data layers marked "
    "include { phase: TRAIN } / include { phase: TEST }",
    "paths: sources data/cifar10/cifar10_train_leveldb and data/cifar10/cifar10_test_leveldb "
    "(original: cifar10_train_leveldb, cifar10_val_leveldb); mean_file "
    "data/ilsvrc12/imagenet_mean.binaryproto (original: ../../data/ilsvrc12/...)",
    "data_param backend: LEVELDB written out (Caffe's default; the original left it implicit)",
    "TEST data layer: mirror false (the original's test net mirrored at random)",
    "the original's det_* window-data fields on its data layer are gone (Caffe drops them)",
    "loss: SoftmaxWithLoss with a named top 'loss', in both phases (the original's had no top "
    "and its test net no loss)",
    "TEST accuracy: Accuracy(fc8_pascal, label), include { phase: TEST }, instead of the "
    "original test net's prob = Softmax(fc8_pascal) -> Accuracy(prob, label) (same argmax)",
    "solver: net: prototxt/cifar10_48/train_val.prototxt instead of train_net: / test_net:",
    "solver: solver_mode: GPU written out (Caffe's default; the original left it implicit)",
    "deploy: none (equal to Caffe's upgrade of KevinNet_CIFAR10_48_deploy.prototxt)",
]


def copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def read_original(fixtures_dir, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", proto.UpgradeWarning)  # the det_* fields
        return proto.read_net(fixtures_dir / "models" / name)


def original_as_ours(train, test):
    """The original train and test nets with DELIBERATE_DIFFERENCES applied, one by one."""
    net = pb.NetParameter(name=train.name)
    datas = []
    for original, phase, source in ((train, pb.TRAIN, "data/cifar10/cifar10_train_leveldb"),
                                    (test, pb.TEST, "data/cifar10/cifar10_test_leveldb")):
        data = copy(original.layer[0])
        data.include.add(phase=phase)                                        # one train_val
        data.data_param.source = source                                      # paths
        data.transform_param.mean_file = "data/ilsvrc12/imagenet_mean.binaryproto"
        data.data_param.backend = pb.DataParameter.LEVELDB                   # backend written
        if phase == pb.TEST:
            data.transform_param.mirror = False                              # no TEST mirror
        datas.append(data)
    body = list(train.layer[1:-1])                                           # conv1 .. fc8_pascal
    assert list(test.layer[1:-2]) == body  # the original's two nets share all of these
    accuracy = pb.LayerParameter(name="accuracy", type="Accuracy",       # TEST accuracy
                                 bottom=["fc8_pascal", "label"], top=["accuracy"])
    accuracy.include.add(phase=pb.TEST)
    loss = copy(train.layer[-1])
    loss.top.append("loss")                                                  # named loss top
    net.layer.extend(datas + body + [accuracy, loss])
    return net


def reference_net(name):
    return proto.parse_text(netgen.reference_files()[name],
                            pb.SolverParameter() if name == "solver.prototxt"
                            else pb.NetParameter())


def load_train_tool():
    spec = importlib.util.spec_from_file_location("train_tool", TRAIN_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the committed reference

@pytest.mark.parametrize("name", netgen.NET_FILES)
def test_committed_reference_files_are_what_the_generator_writes(name):
    committed = ROOT / netgen.REFERENCE_DIR / name
    assert committed.is_file(), f"{committed} missing: netgen.write_reference('.') writes it"
    assert committed.read_text() == netgen.reference_files()[name], (
        f"{committed} differs from the generator; after a deliberate change run "
        "netgen.write_reference('.')")


@pytest.mark.fixtures
def test_train_val_equals_the_original_but_for_the_listed_differences(fixtures_dir):
    train = read_original(fixtures_dir, "train_CIFAR10_48.prototxt")
    test = read_original(fixtures_dir, "test_CIFAR10_48.prototxt")
    # The original's test net really ends as DELIBERATE_DIFFERENCES says.
    assert [(l.name, l.type) for l in test.layer[-2:]] == [("prob", "Softmax"),
                                                           ("accuracy", "Accuracy")]
    assert list(test.layer[-1].bottom) == ["prob", "label"]
    assert test.layer[0].transform_param.mirror
    assert not train.layer[-1].top
    ours = reference_net("train_val.prototxt")
    expected = original_as_ours(train, test)
    assert [l.name for l in ours.layer] == [l.name for l in expected.layer]
    for a, b in zip(ours.layer, expected.layer):
        assert a == b, f"layer {a.name}:\nours:\n{a}\noriginal (adjusted):\n{b}"
    assert ours == expected


@pytest.mark.fixtures
def test_solver_equals_the_original_but_for_the_listed_differences(fixtures_dir):
    original = proto.read_solver(fixtures_dir / "models" / "solver_CIFAR10_48.prototxt")
    expected = copy(original)
    expected.ClearField("train_net")
    expected.ClearField("test_net")
    expected.net = "prototxt/cifar10_48/train_val.prototxt"
    expected.solver_mode = pb.SolverParameter.GPU
    assert reference_net("solver.prototxt") == expected
    # the design's numbers, spelled out
    ours = reference_net("solver.prototxt")
    assert (ours.lr_policy, ours.stepsize, ours.max_iter, list(ours.test_iter),
            ours.test_interval, ours.snapshot, ours.display) == ("step", 25000, 50000, [100], 100,
                                                                  10000, 20)
    assert (ours.base_lr, ours.gamma, ours.momentum, ours.weight_decay) == pytest.approx(
        (0.001, 0.1, 0.9, 0.0005))


@pytest.mark.fixtures
def test_deploy_equals_the_upgraded_original_deploy(fixtures_dir):
    original = read_original(fixtures_dir, "KevinNet_CIFAR10_48_deploy.prototxt")
    assert reference_net("deploy.prototxt") == original


def test_deploy_ends_at_the_codes_with_fc7_after_relu7():
    net = reference_net("deploy.prototxt")
    names = [l.name for l in net.layer]
    assert names[-1] == "fc8_kevin_encode" and "fc8_pascal" not in names
    relu7 = net.layer[names.index("relu7")]
    assert list(relu7.bottom) == list(relu7.top) == ["fc7"]
    assert list(net.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    assert not any(len(l.param) or l.convolution_param.HasField("weight_filler")
                   or l.inner_product_param.HasField("weight_filler") for l in net.layer)


# ---------------------------------------------------------------- the generators

@pytest.mark.parametrize("bits", [1, 12, 16, 32, 48, 64, 128, 1024])
def test_any_bits_gives_the_latent_layer_that_size(bits):
    spec = netgen.NetSpec(bits=bits, classes=7)
    spec.validate()
    shapes = netgen.blob_shapes(spec.deploy())
    assert shapes["fc7"] == (10, 4096)
    assert shapes["fc8_kevin"] == shapes["fc8_kevin_encode"] == (10, bits)
    train = netgen.blob_shapes(spec.train_val(), "TRAIN", spec.record_shape)
    assert train["data"] == (32, 3, 227, 227) and train["fc8_pascal"] == (32, 7)
    assert train["pool5"] == (32, 256, 6, 6)


@pytest.mark.parametrize("bits", [0, 1025, -3])
def test_bits_out_of_range_is_refused(bits):
    with pytest.raises(netgen.NetSpecError, match="1 to 1024"):
        netgen.NetSpec(bits=bits).validate()


def test_caffenet_layers_are_the_originals_settings():
    layers = {l.name: l for l in netgen.caffenet_layers()}
    conv2 = layers["conv2"].convolution_param
    assert (conv2.num_output, list(conv2.pad), list(conv2.kernel_size), conv2.group) == (
        256, [2], [5], 2)
    assert not layers["conv1"].convolution_param.pad  # unset, as in the original
    fc6 = layers["fc6"].inner_product_param
    assert fc6.weight_filler.std == pytest.approx(0.005) and fc6.bias_filler.value == 1
    assert layers["drop7"].dropout_param.dropout_ratio == 0.5


def test_small_net_layout_and_xavier_fillers():
    spec = netgen.NetSpec(net="small", bits=12, classes=10, record_shape=(3, 32, 32), crop=None,
                          mean_value=(128,), mean_file=None, mirror=False, batch_size=64,
                          test_batch_size=100, scale=small.SCALE)
    spec.validate()
    net = spec.train_val()
    names = [l.name for l in net.layer]
    assert names == ["data", "data", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                     "conv3", "relu3", "pool3", "fc7", "relu7", "fc8_kevin", "fc8_kevin_encode",
                     "fc8_pascal", "accuracy", "loss"]
    fillers = [p.weight_filler.type for l in net.layer
               for p in (l.convolution_param, l.inner_product_param) if p.HasField("num_output")]
    assert fillers == ["xavier"] * 6  # conv1..3, fc7, fc8_kevin, fc8_pascal
    shapes = netgen.blob_shapes(net, "TRAIN", spec.record_shape)
    assert [shapes[f"conv{i}"][1] for i in (1, 2, 3)] == [32, 32, 64]
    assert shapes["fc7"] == (64, 64) and shapes["fc8_kevin"] == (64, 12)
    assert shapes["fc8_pascal"] == (64, 10)
    deploy = spec.deploy()
    assert deploy.layer[-1].name == "fc8_kevin_encode"
    assert netgen.blob_shapes(deploy)["fc7"] == (10, 64)


def test_generated_layers_are_named_for_the_released_caffemodel():
    net = kevinnet.train_val_net(48, 10, "a", "b")
    names = {l.name for l in net.layer}
    assert {"fc8_kevin", "fc8_kevin_encode", "fc8_pascal"} <= names
    pascal = next(l for l in net.layer if l.name == "fc8_pascal")
    assert [p.lr_mult for p in pascal.param] == [10, 20]


# ---------------------------------------------------------------- validation

def test_crop_larger_than_records_is_refused():
    with pytest.raises(netgen.NetSpecError, match="crop 300 is larger than the records"):
        netgen.NetSpec(crop=300).validate()


def test_crop_that_breaks_caffenets_fc6_is_refused():
    with pytest.raises(netgen.NetSpecError, match="pool5 5x5.*--crop 227"):
        netgen.NetSpec(crop=190).validate()
    netgen.NetSpec(crop=200).validate()  # still a 6x6 pool5


def test_kevinnet_needs_color_records():
    with pytest.raises(netgen.NetSpecError, match="3-channel"):
        netgen.NetSpec(record_shape=(1, 256, 256)).validate()


def test_records_too_small_for_the_small_net_name_the_layer():
    spec = netgen.NetSpec(net="small", record_shape=(3, 1, 1), crop=None, mean_value=(0,),
                          mean_file=None)
    with pytest.raises(netgen.NetSpecError, match="layer 'pool"):
        spec.validate()


def test_mean_file_of_another_size_is_refused(tmp_path):
    mean = tmp_path / "mean.binaryproto"
    proto.write_blob(np.zeros((1, 3, 32, 32)), mean)
    with pytest.raises(netgen.NetSpecError, match="3x32x32 but the records are 3x256x256"):
        netgen.NetSpec(mean_file=str(mean)).validate()


@pytest.mark.parametrize("kw, message", [
    (dict(classes=1), "classes must be"),
    (dict(batch_size=0), "batch size"),
    (dict(db="hdf5"), "leveldb, lmdb"),
    (dict(mean_file=None, mean_value=(1, 2)), "1 or 3 values"),
    (dict(mean_file=None), "needs a mean"),
])
def test_bad_choices_are_refused(kw, message):
    with pytest.raises(netgen.NetSpecError, match=message):
        netgen.NetSpec(**kw).validate()


def test_unknown_dataset_without_manifest_says_to_prepare(tmp_path):
    with pytest.raises(netgen.NetSpecError, match="run tools/prepare.py --dataset flowers"):
        netgen.plan_net("flowers", root=tmp_path)


def test_bad_solver_settings_are_refused():
    spec = netgen.NetSpec()
    with pytest.raises(netgen.NetSpecError, match="max_iter"):
        netgen.plan_solver(spec, max_iter=0)
    with pytest.raises(netgen.NetSpecError, match="base_lr"):
        netgen.plan_solver(spec, base_lr=-1.0)


# ---------------------------------------------------------------- the dataset manifest

def write_manifest(root, name="mnist5k", **changes):
    """A dataset.json as tools/prepare.py writes it (dlbhc_caffe.datasets.manifest)."""
    from dlbhc_caffe.datasets import manifest as manifest_module  # noqa: PLC0415

    folder = root / name
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{name}_{split}_lmdb").mkdir()
    proto.write_blob(np.zeros((1, 1, 32, 32)), folder / "mean.binaryproto")
    manifest = {
        "format_version": manifest_module.FORMAT_VERSION, "name": name, "dataset": "mnist",
        "classes": 10, "class_names": [str(i) for i in range(10)], "record_shape": [1, 32, 32],
        "channels": 1, "height": 32, "width": 32, "channel_order": "gray", "encoding": "raw",
        "backend": "lmdb", "train_db": f"{name}_train_lmdb", "test_db": f"{name}_test_lmdb",
        "train_count": 5000, "test_count": 1000, "mean_file": "mean.binaryproto",
        "train_file_list": "train-file-list.txt", "test_file_list": "test-file-list.txt",
        "train_labels": "train-label.txt", "test_labels": "test-label.txt"}
    manifest.update(changes)
    manifest_module.write_manifest(folder, manifest)
    return folder


def test_manifest_gives_classes_databases_shape_and_mean(tmp_path):
    folder = write_manifest(tmp_path)
    spec = netgen.plan_net("mnist5k", root=tmp_path, net="small", bits=48)
    assert not spec.notes
    assert spec.classes == 10 and spec.db == "lmdb" and spec.record_shape == (1, 32, 32)
    assert spec.train_db == str((folder / "mnist5k_train_lmdb").resolve())
    assert spec.mean_file == str((folder / "mean.binaryproto").resolve())
    data = spec.train_val().layer[0]
    assert data.data_param.backend == pb.DataParameter.LMDB
    assert list(spec.deploy().layer[0].input_param.shape[0].dim) == [10, 1, 32, 32]
    assert netgen.plan_solver(spec).test_iter == math.ceil(1000 / 100)
    with pytest.raises(netgen.NetSpecError, match="not leveldb"):
        netgen.plan_net("mnist5k", root=tmp_path, net="small", bits=48, db="leveldb")
    with pytest.raises(netgen.NetSpecError, match="has 10 classes, not 3"):
        netgen.plan_net("mnist5k", root=tmp_path, net="small", bits=48, classes=3)
    with pytest.raises(netgen.NetSpecError, match="larger than the records"):
        netgen.plan_net("mnist5k", root=tmp_path, net="kevinnet", bits=48)


def test_broken_or_encoded_manifests(tmp_path):
    write_manifest(tmp_path, "old", format_version=0)
    with pytest.raises(netgen.NetSpecError, match="format_version"):
        netgen.plan_net("old", root=tmp_path, net="small", bits=12)
    write_manifest(tmp_path, "pngs", encoding="png")
    spec = netgen.plan_net("pngs", root=tmp_path, net="small", bits=12)
    assert any("png-encoded" in note for note in spec.notes)


def test_cifar10_defaults_without_manifest_say_so(tmp_path):
    spec = netgen.plan_net("cifar10", root=tmp_path / "data", bits=48)
    assert any("CIFAR-10 defaults" in note for note in spec.notes)
    assert any("imagenet_mean.binaryproto does not exist yet" in note for note in spec.notes)
    assert spec.train_db == str((tmp_path / "data/cifar10/cifar10_train_leveldb").resolve())
    assert spec.classes == 10


# ---------------------------------------------------------------- tools/train.py --dry-run

def test_dry_run_writes_absolute_files_and_refuses_an_existing_folder(tmp_path, capsys):
    tool = load_train_tool()
    root, out = tmp_path / "data", tmp_path / "run"
    argv = ["--bits", "48", "--dry-run", "--root", str(root), "--out", str(out),
            "--test-interval", "500", "--seed", "7"]
    assert tool.main(argv) == 0
    captured = capsys.readouterr()
    printed = [Path(line) for line in captured.out.split()]
    assert printed == [out / name for name in netgen.NET_FILES]
    assert "CIFAR-10 defaults" in captured.err
    solver = proto.read_solver(out / "solver.prototxt")
    assert solver.net == str(out / "train_val.prototxt")
    assert solver.snapshot_prefix == str(out / "KevinNet_CIFAR10_48")
    assert (solver.test_interval, solver.random_seed) == (500, 7)
    assert solver.solver_mode == pb.SolverParameter.CPU
    net = proto.read_net(out / "train_val.prototxt")
    sources = [l.data_param.source for l in net.layer if l.type == "Data"]
    assert sources == [str(root / "cifar10" / f"cifar10_{s}_leveldb") for s in ("train", "test")]
    assert all(Path(l.transform_param.mean_file).is_absolute() for l in net.layer[:2])

    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "--resume" in err

    (out / "KevinNet_CIFAR10_48_iter_10.caffemodel").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    assert tool.main(argv + ["--force", "--bits", "12"]) == 0
    assert not (out / "KevinNet_CIFAR10_48_iter_10.caffemodel").exists()
    assert (out / "notes.txt").read_text() == "mine"
    deploy = proto.read_net(out / "deploy.prototxt")
    assert deploy.layer[-2].inner_product_param.num_output == 12


def test_dry_run_default_folder_small_net_and_lmdb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tool = load_train_tool()
    assert tool.main(["--bits", "12", "--net", "small", "--db", "lmdb", "--dry-run",
                      "--batch-size", "16", "--mean-value", "120"]) == 0
    folder = tmp_path / "runs" / "cifar10_small_12"
    assert capsys.readouterr().out.split()[0] == str(folder / "train_val.prototxt")
    net = proto.read_net(folder / "train_val.prototxt")
    assert net.layer[0].data_param.backend == pb.DataParameter.LMDB
    assert net.layer[0].data_param.batch_size == 16
    assert list(net.layer[0].transform_param.mean_value) == [120]
    assert net.layer[0].data_param.source.endswith("data/cifar10/cifar10_train_lmdb")


@pytest.mark.parametrize("argv, message", [
    (["--bits", "0"], "1 to 1024"),
    (["--bits", "2000"], "1 to 1024"),
    (["--bits", "48", "--crop", "300"], "larger than the records"),
    (["--bits", "48", "--dataset", "flowers"], "tools/prepare.py"),
    (["--bits", "48", "--resume"], "--resume"),
])
def test_dry_run_errors_say_what_to_do(tmp_path, capsys, argv, message):
    tool = load_train_tool()
    out = tmp_path / "run"
    assert tool.main(argv + ["--dry-run", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_never_writes_into_prototxt(capsys):
    tool = load_train_tool()
    target = ROOT / "prototxt" / "cifar10_48_copy"
    assert tool.main(["--bits", "48", "--dry-run", "--out", str(target)]) == 2
    assert "never go in" in capsys.readouterr().err
    assert not target.exists()


def test_help_documents_every_option():
    parser = load_train_tool().build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    result = subprocess.run([sys.executable, str(TRAIN_TOOL), "--help"], capture_output=True,
                            text=True, check=True)
    for option in ("--bits", "--dry-run", "--dataset", "--net", "--root", "--db", "--classes",
                   "--batch-size", "--test-batch-size", "--crop", "--mean-file", "--test-interval",
                   "--test-iter", "--max-iter", "--base-lr", "--snapshot", "--seed", "--out",
                   "--force"):
        assert option in result.stdout


def test_run_folder_rules(tmp_path):
    assert runs.default_run_name("cifar10", "small", 12) == "cifar10_small_12"
    with pytest.raises(runs.RunFolderError, match="nothing to resume"):
        runs.check_run_folder(tmp_path / "new", resume=True)
    (tmp_path / "empty").mkdir()
    assert runs.check_run_folder(tmp_path / "empty") == tmp_path / "empty"


# ---------------------------------------------------------------- against real Caffe

def write_lmdb(path, shape, count=4, classes=10):
    import lmdb  # noqa: PLC0415

    rng = np.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i in range(count):
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            txn.put(f"{i:08d}".encode(), proto.datum_from_array(image, i % classes)
                    .SerializeToString())
    env.close()
    return str(path)


def generated_files(tmp_path):
    """{(net, file name): text} for KevinNet 48 and the small net 12 (absolute paths)."""
    specs = {
        "kevinnet": netgen.NetSpec(),
        "small": netgen.NetSpec(net="small", bits=12, classes=10, record_shape=(3, 32, 32),
                                crop=None, mean_file=None, mean_value=(128,), mirror=False,
                                batch_size=64, test_batch_size=100, scale=small.SCALE),
    }
    out = {}
    for net, spec in specs.items():
        solver = netgen.plan_solver(spec)
        for name, text in netgen.net_files(spec, solver, tmp_path / net).items():
            out[net, name] = text
    return specs, out


@pytest.mark.caffe
def test_every_generated_file_parses_with_caffes_schema(caffe_pb2, tmp_path):
    specs, files = generated_files(tmp_path)
    for (net, name), text in files.items():
        kind = "SolverParameter" if name == "solver.prototxt" else "NetParameter"
        theirs = text_format.Merge(text, getattr(caffe_pb2, kind)())
        ours = proto.parse_text(text, getattr(pb, kind)())
        assert theirs.SerializeToString() == ours.SerializeToString(), (net, name)
        if name == "train_val.prototxt":
            layers = {l.name: l for l in theirs.layer}
            assert layers["fc8_pascal"].inner_product_param.num_output == specs[net].classes
            assert layers["fc8_kevin"].inner_product_param.num_output == specs[net].bits
            assert [l.include[0].phase for l in theirs.layer[:2]] == [caffe_pb2.TRAIN,
                                                                     caffe_pb2.TEST]
    reference = text_format.Merge(netgen.reference_files()["train_val.prototxt"],
                                  caffe_pb2.NetParameter())
    assert reference.layer[-3].inner_product_param.num_output == 10


@pytest.mark.caffe
@pytest.mark.parametrize("net", ["kevinnet", "small"])
def test_deploy_nets_load_in_caffe_with_the_expected_shapes(caffe, tmp_path, net):
    specs, files = generated_files(tmp_path)
    path = tmp_path / "deploy.prototxt"
    path.write_text(files[net, "deploy.prototxt"])
    model = caffe.Net(str(path), caffe.TEST)
    spec = specs[net]
    fc7 = 4096 if net == "kevinnet" else 64
    assert model.blobs["data"].data.shape == (10,) + spec.input_shape
    assert model.blobs["fc7"].data.shape == (10, fc7)
    assert model.blobs["fc8_kevin"].data.shape == (10, spec.bits)
    assert model.blobs["fc8_kevin_encode"].data.shape == (10, spec.bits)
    assert list(model.outputs) == ["fc8_kevin_encode"]
    # A deploy net has no fillers: give it random weights, then forward a batch of 2 twice.
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(1 << 16, dtype=np.float32) * 0.01  # tiled: fc6 alone has 37M
    for params in model.params.values():
        for blob in params:
            blob.data[...] = np.resize(noise, blob.data.shape)
    model.blobs["data"].reshape(2, *spec.input_shape)
    model.reshape()
    model.blobs["data"].data[...] = rng.normal(0, 50, model.blobs["data"].data.shape)
    codes = model.forward()["fc8_kevin_encode"].copy()
    fc7_out = model.blobs["fc7"].data.copy()
    assert (fc7_out >= 0).all() and (fc7_out > 0).any()  # fc7 is relu7's in-place output
    again = model.forward()["fc8_kevin_encode"]
    np.testing.assert_array_equal(codes, again)  # dropout does nothing at TEST
    np.testing.assert_array_equal(fc7_out, model.blobs["fc7"].data)
    assert ((codes > 0) & (codes < 1)).all() and codes.std() > 0


@pytest.mark.caffe
@pytest.mark.fixtures
def test_kevinnet_train_val_loads_in_caffe_on_a_tiny_database(caffe, fixtures_dir, tmp_path):
    train_db = write_lmdb(tmp_path / "train_lmdb", (3, 256, 256))
    test_db = write_lmdb(tmp_path / "test_lmdb", (3, 256, 256))
    spec = netgen.NetSpec(train_db=train_db, test_db=test_db, db="lmdb", batch_size=2,
                          test_batch_size=2,
                          mean_file=str(fixtures_dir / "models" / "imagenet_mean.binaryproto"))
    spec.validate()
    paths = netgen.write_net_files(spec, netgen.SolverSpec(), tmp_path / "run")
    model = caffe.Net(str(paths["train_val.prototxt"]), caffe.TEST)
    shapes = {name: model.blobs[name].data.shape for name in
              ("data", "label", "fc7", "fc8_kevin", "fc8_kevin_encode", "fc8_pascal")}
    assert shapes == {"data": (2, 3, 227, 227), "label": (2,), "fc7": (2, 4096),
                      "fc8_kevin": (2, 48), "fc8_kevin_encode": (2, 48), "fc8_pascal": (2, 10)}
    out = model.forward()
    assert np.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1


@pytest.mark.caffe
def test_small_net_solver_trains_a_few_steps_in_caffe(caffe, tmp_path):
    train_db = write_lmdb(tmp_path / "train_lmdb", (3, 32, 32), count=8)
    test_db = write_lmdb(tmp_path / "test_lmdb", (3, 32, 32), count=8)
    spec = netgen.NetSpec(net="small", bits=12, classes=10, record_shape=(3, 32, 32),
                          train_db=train_db, test_db=test_db, db="lmdb", batch_size=4,
                          test_batch_size=4, crop=28, mean_file=None, mean_value=(128,),
                          mirror=True, scale=small.SCALE)
    spec.validate()
    solver_spec = netgen.SolverSpec(base_lr=0.01, max_iter=3, test_iter=1, test_interval=2,
                                    snapshot=0, solver_mode="CPU", random_seed=1)
    paths = netgen.write_net_files(spec, solver_spec, tmp_path / "run")
    solver = caffe.SGDSolver(str(paths["solver.prototxt"]))
    assert solver.net.blobs["data"].data.shape == (4, 3, 28, 28)
    assert solver.net.blobs["fc8_pascal"].data.shape == (4, 10)
    assert solver.test_nets[0].blobs["fc8_kevin_encode"].data.shape == (4, 12)
    solver.step(3)
    assert solver.iter == 3 and np.isfinite(solver.net.blobs["loss"].data)

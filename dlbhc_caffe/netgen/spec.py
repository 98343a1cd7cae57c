"""What a training run's nets are made of, checked before Caffe sees them, and the files it gets.

`plan_net` turns a dataset (its manifest data/<dataset>/dataset.json, or CIFAR-10's defaults) and
the user's choices into a validated `NetSpec`; `plan_solver` does the same for the solver;
`net_files` / `write_net_files` produce train_val.prototxt, deploy.prototxt and solver.prototxt.
`reference_files` regenerates the committed prototxt/cifar10_48 files.

>>> spec = NetSpec(bits=12)             # KevinNet on CIFAR-10, repo-relative paths
>>> spec.train_val().layer[0].data_param.source
'data/cifar10/cifar10_train_leveldb'
>>> reference_files()["solver.prototxt"].splitlines()[-1]
'net: "prototxt/cifar10_48/train_val.prototxt"'
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..proto import ProtoError, atomic_write_bytes, format_text, read_mean
from . import caffenet, kevinnet, small
from .shapes import blob_shapes
from .solver import PAPER_SOLVER, SMALL_SOLVER, check_solver_settings, make_solver
from ..datasets.manifest import MANIFEST, load_manifest
from ..errors import DlbhcError

NETS = ("kevinnet", "small")
DATABASES = ("leveldb", "lmdb")
TRAIN_VAL, DEPLOY, SOLVER = "train_val.prototxt", "deploy.prototxt", "solver.prototxt"
NET_FILES = (TRAIN_VAL, DEPLOY, SOLVER)  # what write_net_files writes (dlbhc_caffe.runs: the rest)
CIFAR10 = dict(name="cifar10", classes=10, train_count=50000, test_count=10000)
IMAGENET_MEAN = Path("ilsvrc12") / "imagenet_mean.binaryproto"
REFERENCE_DIR = Path("prototxt") / "cifar10_48"


class NetSpecError(DlbhcError):
    """A choice of net, dataset or solver that cannot work; the message says what to do."""


# ---------------------------------------------------------------- the dataset side

@dataclass
class DatasetInputs:
    """What the nets need from a dataset: classes, databases, record shape (C, H, W), mean."""

    name: str
    classes: int
    db: str
    train_db: str
    test_db: str
    shape: tuple
    mean_file: Optional[str] = None
    train_count: Optional[int] = None
    test_count: Optional[int] = None
    manifest: Optional[str] = None
    notes: list = field(default_factory=list)


def _load_manifest(root, name):
    """dlbhc_caffe.datasets.load_manifest (paths made absolute), or None when there is none."""
    path = Path(root) / name / MANIFEST
    if not path.is_file():
        return None, path
    try:
        return load_manifest(root, name), path
    except ValueError as err:  # DatasetError: names the file and what to do
        raise NetSpecError(str(err)) from None


def _inputs_from_manifest(manifest, path, name):
    classes = manifest["classes"]
    if isinstance(classes, (list, tuple)):
        classes = len(classes)
    inputs = DatasetInputs(
        name=name, classes=int(classes), db=str(manifest["backend"]).lower(),
        train_db=manifest["train_db"], test_db=manifest["test_db"],
        shape=tuple(int(d) for d in manifest["record_shape"]),
        mean_file=manifest.get("mean_file"), train_count=manifest.get("train_count"),
        test_count=manifest.get("test_count"), manifest=str(path))
    encoding = manifest.get("encoding", "raw")
    if encoding != "raw":
        inputs.notes.append(f"{path}: the records are {encoding}-encoded; Caffe built without "
                            "OpenCV cannot decode them (prepare with raw records for it)")
    return inputs


def dataset_inputs(root="data", name="cifar10", *, net="kevinnet", db=None, classes=None):
    """The dataset side of a run: from data/<name>/dataset.json when it exists.

    Without a manifest, CIFAR-10 gets its defaults (10 classes, data/cifar10/cifar10_{train,test}
    _<db>, records 3x256x256 for KevinNet, 3x32x32 for the small net) and a note saying so; any
    other dataset needs `classes` and gets the same layout under data/<name>/.
    """
    manifest, path = _load_manifest(root, name)
    if manifest is not None:
        inputs = _inputs_from_manifest(manifest, path, name)
        if db is not None and db != inputs.db:
            raise NetSpecError(f"{path} describes {inputs.db} databases, not {db}: drop --db, "
                               f"or run tools/prepare.py --dataset {name} --db {db}")
        if classes is not None and classes != inputs.classes:
            raise NetSpecError(f"{path} has {inputs.classes} classes, not {classes}: drop "
                               "--classes (it is taken from the manifest)")
        return inputs
    db = db or "leveldb"
    size = caffenet.RECORD_SIZE if net == "kevinnet" else small.RECORD_SIZE
    folder = Path(root) / name
    if name == CIFAR10["name"]:
        if classes is not None and classes != CIFAR10["classes"]:
            raise NetSpecError(f"CIFAR-10 has {CIFAR10['classes']} classes, not {classes}")
        classes = CIFAR10["classes"]
        counts = dict(train_count=CIFAR10["train_count"], test_count=CIFAR10["test_count"])
        what = "CIFAR-10 defaults: 10 classes"
    elif classes is None:
        raise NetSpecError(f"no dataset manifest {path}: run tools/prepare.py --dataset {name} "
                           f"first, or give --classes N to use {folder}/{name}_{{train,test}}_"
                           f"{db} as they are")
    else:
        counts = {}
        what = f"{classes} classes (--classes)"
    inputs = DatasetInputs(
        name=name, classes=classes, db=db, train_db=str(folder / f"{name}_train_{db}"),
        test_db=str(folder / f"{name}_test_{db}"), shape=(3, size, size),
        mean_file=str(folder / "mean.binaryproto"), **counts)
    inputs.notes.append(
        f"no dataset manifest {path}: using {what}, {inputs.train_db} and {inputs.test_db}, "
        f"records of 3x{size}x{size} (run tools/prepare.py --dataset {name} to make them)")
    return inputs


# ---------------------------------------------------------------- the nets

@dataclass
class NetSpec:
    """Everything train_val.prototxt and deploy.prototxt depend on (defaults: the paper's).

    Paths are written as given: absolute for run folders, repo-relative for prototxt/.
    """

    net: str = "kevinnet"
    bits: int = 48
    classes: int = 10
    dataset: str = "cifar10"
    train_db: str = "data/cifar10/cifar10_train_leveldb"
    test_db: str = "data/cifar10/cifar10_test_leveldb"
    db: str = "leveldb"
    record_shape: tuple = (3, caffenet.RECORD_SIZE, caffenet.RECORD_SIZE)
    batch_size: int = 32
    test_batch_size: int = 32
    crop: Optional[int] = caffenet.CROP
    mean_file: Optional[str] = "data/ilsvrc12/imagenet_mean.binaryproto"
    mean_value: Optional[tuple] = None
    mirror: bool = True
    scale: Optional[float] = None
    base: str = "caffenet"
    test_count: Optional[int] = field(default=None, compare=False)
    notes: list = field(default_factory=list, compare=False)

    @property
    def name(self):
        """The net's name: KevinNet_CIFAR10 (the original's) or SmallNet_<DATASET>."""
        prefix = "KevinNet" if self.net == "kevinnet" else "SmallNet"
        return f"{prefix}_{self.dataset.upper()}"

    @property
    def snapshot_name(self):
        """The snapshot prefix's file part: KevinNet_CIFAR10_48, as the original's."""
        return f"{self.name}_{self.bits}"

    @property
    def input_shape(self):
        """(C, H, W) of what the net sees: the crop, or whole records."""
        channels, height, width = self.record_shape
        return (channels, self.crop or height, self.crop or width)

    def train_val(self):
        """The train_val NetParameter (TRAIN and TEST Data layers, include { phase })."""
        kw = dict(mean_file=self.mean_file, mean_value=self.mean_value, backend=self.db,
                  batch_size=self.batch_size, test_batch_size=self.test_batch_size,
                  crop=self.crop, mirror=self.mirror, scale=self.scale, name=self.name)
        if self.net == "kevinnet":
            return kevinnet.train_val_net(self.bits, self.classes, self.train_db, self.test_db,
                                          base=self.base, **kw)
        return small.train_val_net(self.bits, self.classes, self.train_db, self.test_db, **kw)

    def deploy(self, batch=kevinnet.DEPLOY_BATCH):
        """The deploy NetParameter: Input -> ... -> fc7 -> fc8_kevin_encode."""
        channels, height, width = self.input_shape
        if self.net == "kevinnet":
            return kevinnet.deploy_net(self.bits, channels=channels, crop=height, batch=batch,
                                       base=self.base, name=self.name)
        return small.deploy_net(self.bits, channels=channels, size=height, batch=batch,
                                name=self.name)

    def validate(self):
        """Raise NetSpecError with what to do, for anything Caffe would abort on or reject."""
        def fail(message):
            raise NetSpecError(message)

        if self.net not in NETS:
            fail(f"unknown net '{self.net}'; choose one of {', '.join(NETS)}")
        try:
            kevinnet.check_bits(self.bits)
        except ValueError as err:
            fail(str(err))
        if not isinstance(self.classes, int) or self.classes < 2:
            fail(f"classes must be an integer >= 2, got {self.classes!r}")
        if self.db not in DATABASES:
            fail(f"database type must be one of {', '.join(DATABASES)}, got {self.db!r}")
        for what, value in (("batch size", self.batch_size),
                            ("test batch size", self.test_batch_size)):
            if not isinstance(value, int) or value < 1:
                fail(f"{what} must be a positive integer, got {value!r}")
        shape = tuple(self.record_shape)
        if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            fail(f"record shape must be channels x height x width, got {shape!r}")
        channels, height, width = shape
        records = "x".join(map(str, shape))
        if self.crop is not None:
            if not isinstance(self.crop, int) or self.crop < 1:
                fail(f"crop must be a positive integer, got {self.crop!r}")
            if self.crop > min(height, width):
                hint = (" (KevinNet needs records of at least 227x227: prepare the dataset with "
                        "--resize 256, or use --net small)" if self.net == "kevinnet" else "")
                fail(f"crop {self.crop} is larger than the records ({records}){hint}")
        if self.net == "kevinnet" and channels != 3:
            fail(f"KevinNet needs 3-channel records (CaffeNet's weights and the ImageNet mean "
                 f"are BGR), the records are {records}: prepare without --gray, or use "
                 "--net small")
        self._validate_mean(shape, records)
        self._validate_shapes()

    def _validate_mean(self, shape, records):
        if self.mean_file and self.mean_value:
            raise NetSpecError("give a mean file or a mean value, not both")
        if self.mean_value is not None:
            if len(self.mean_value) not in (1, shape[0]):
                raise NetSpecError(f"mean value needs 1 or {shape[0]} values (one a channel), "
                                   f"got {len(self.mean_value)}")
            return
        if not self.mean_file:
            raise NetSpecError("the net needs a mean: give a mean file (--mean-file) or a mean "
                               "value (--mean-value)")
        path = Path(self.mean_file)
        if not path.is_file():
            how = ("tools/prepare.py --weights caffenet" if path.name == IMAGENET_MEAN.name
                   else f"tools/prepare.py --dataset {self.dataset}")
            note = f"mean file {path} does not exist yet (make it with {how}); training needs it"
            if note not in self.notes:
                self.notes.append(note)
            return
        try:
            mean = read_mean(path)
        except ProtoError as err:
            raise NetSpecError(str(err)) from None
        if tuple(mean.shape) != shape:
            raise NetSpecError(
                f"mean file {path} is {'x'.join(map(str, mean.shape))} but the records are "
                f"{records}: Caffe needs them equal (subtract a mean at the record size, e.g. "
                "the dataset's own mean.binaryproto, or use --mean-value)")

    def _validate_shapes(self):
        net = self.train_val()
        try:
            for phase in ("TRAIN", "TEST"):
                shapes = blob_shapes(net, phase, self.record_shape)
        except ProtoError as err:
            raise NetSpecError(f"{err} (input {'x'.join(map(str, self.input_shape))}: use a "
                               "larger crop or larger records)") from None
        if self.net == "kevinnet" and self.base == "caffenet":
            pool5 = shapes["pool5"][2:]
            if pool5 != (caffenet.POOL5_SIZE,) * 2:
                raise NetSpecError(
                    f"crop {self.crop} gives pool5 {pool5[0]}x{pool5[1]}, but CaffeNet's fc6 "
                    f"weights need {caffenet.POOL5_SIZE}x{caffenet.POOL5_SIZE} (crops "
                    "199..230): use --crop 227, CaffeNet's own")


def plan_net(dataset="cifar10", *, root="data", net="kevinnet", bits=48, classes=None, db=None,
             batch_size=None, test_batch_size=None, crop=None, mean_file=None, mean_value=None,
             mirror=None, absolute=True):
    """A validated NetSpec for `net` on `dataset`, defaults filled in (the notes say which).

    KevinNet: batch 32/32, crop 227, mirror, the ImageNet mean <root>/ilsvrc12/
    imagenet_mean.binaryproto. Small net: batch 64/100, whole records, no mirror, the dataset's
    own mean (<root>/<dataset>/mean.binaryproto), inputs scaled by 1/256. absolute=True makes
    every path absolute, as run folders need (Caffe resolves them against its working directory).
    """
    if net not in NETS:
        raise NetSpecError(f"unknown net '{net}'; choose one of {', '.join(NETS)}")
    if db is not None and db not in DATABASES:
        raise NetSpecError(f"database type must be one of {', '.join(DATABASES)}, got {db!r}")
    root = Path(root).resolve() if absolute else Path(root)
    inputs = dataset_inputs(root, dataset, net=net, db=db, classes=classes)
    if mean_file is not None and absolute:
        mean_file = str(Path(mean_file).resolve())
    if mean_file is None and mean_value is None:
        mean_file = (str(root / IMAGENET_MEAN) if net == "kevinnet"
                     else inputs.mean_file or str(root / dataset / "mean.binaryproto"))
    if mean_value is not None:
        mean_value = tuple(float(v) for v in mean_value)
    is_kevinnet = net == "kevinnet"
    spec = NetSpec(
        net=net, bits=bits, classes=inputs.classes, dataset=dataset,
        train_db=_absolute(inputs.train_db, absolute), test_db=_absolute(inputs.test_db, absolute),
        db=inputs.db, record_shape=tuple(inputs.shape),
        batch_size=batch_size if batch_size is not None else (32 if is_kevinnet else 64),
        test_batch_size=(test_batch_size if test_batch_size is not None
                         else (32 if is_kevinnet else 100)),
        crop=crop if crop is not None else (caffenet.CROP if is_kevinnet else None),
        mean_file=mean_file, mean_value=mean_value,
        mirror=mirror if mirror is not None else is_kevinnet,
        scale=None if is_kevinnet else small.SCALE, test_count=inputs.test_count,
        notes=list(inputs.notes))
    spec.validate()
    return spec


def _absolute(path, absolute):
    return str(Path(path).resolve()) if absolute else str(path)


# ---------------------------------------------------------------- the solver

@dataclass
class SolverSpec:
    """The solver's settings (defaults: the original's solver_CIFAR10_48)."""

    base_lr: float = PAPER_SOLVER["base_lr"]
    lr_policy: str = PAPER_SOLVER["lr_policy"]
    gamma: float = PAPER_SOLVER["gamma"]
    stepsize: Optional[int] = None
    max_iter: int = PAPER_SOLVER["max_iter"]
    momentum: float = PAPER_SOLVER["momentum"]
    weight_decay: float = PAPER_SOLVER["weight_decay"]
    test_iter: int = PAPER_SOLVER["test_iter"]
    test_interval: int = PAPER_SOLVER["test_interval"]
    snapshot: int = PAPER_SOLVER["snapshot"]
    display: int = PAPER_SOLVER["display"]
    solver_mode: str = "CPU"
    random_seed: Optional[int] = None

    def solver(self, net_path, snapshot_prefix):
        """The SolverParameter for the train_val at `net_path`."""
        return make_solver(net_path, snapshot_prefix, **self.__dict__)

    def validate(self):
        """Raise NetSpecError naming the first bad setting."""
        try:
            check_solver_settings(**self.__dict__)
        except ValueError as err:
            raise NetSpecError(str(err)) from None


def plan_solver(spec, *, base_lr=None, max_iter=None, stepsize=None, test_iter=None,
                test_interval=None, snapshot=None, display=None, seed=None, solver_mode="CPU"):
    """A validated SolverSpec for `spec`: the original's settings for KevinNet, the small net's
    (lr 0.01, 1000 iterations, the whole test set each test) for the small net; None keeps them."""
    defaults = dict(PAPER_SOLVER if spec.net == "kevinnet" else SMALL_SOLVER)
    if spec.net == "small" and spec.test_count:
        defaults["test_iter"] = math.ceil(spec.test_count / spec.test_batch_size)
    given = dict(base_lr=base_lr, max_iter=max_iter, stepsize=stepsize, test_iter=test_iter,
                 test_interval=test_interval, snapshot=snapshot, display=display)
    settings = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    out = SolverSpec(random_seed=seed, solver_mode=solver_mode.upper(), **settings)
    out.validate()
    return out


# ---------------------------------------------------------------- the files

def _header(spec, what):
    return (f"# {spec.name}: {spec.net}, {spec.bits} bits, {spec.classes} classes. Written by "
            f"dlbhc_caffe.netgen.\n# {what}.\n")


def net_files(spec, solver_spec, out_dir, *, net_path=None, snapshot_prefix=None):
    """{file name: prototxt text} of train_val, deploy and solver for a run in `out_dir`.

    The solver's `net` and `snapshot_prefix` default to absolute paths in `out_dir`.
    """
    out_dir = Path(out_dir)
    net_path = net_path or out_dir.resolve() / TRAIN_VAL
    snapshot_prefix = snapshot_prefix or out_dir.resolve() / spec.snapshot_name
    channels, height, width = spec.input_shape
    deploy_what = (f"deploy, Input {kevinnet.DEPLOY_BATCH}x{channels}x{height}x{width} -> fc7 "
                   f"(after relu7) -> {kevinnet.ENCODE} (codes: output > 0.5)")
    return {
        TRAIN_VAL: _header(spec, "train_val, TRAIN and TEST phases")
        + format_text(spec.train_val()),
        DEPLOY: _header(spec, deploy_what) + format_text(spec.deploy()),
        SOLVER: _header(spec, "solver")
        + format_text(solver_spec.solver(net_path, snapshot_prefix)),
    }


def write_net_files(spec, solver_spec, out_dir, **kw):
    """Write train_val.prototxt, deploy.prototxt and solver.prototxt into `out_dir` (each file
    whole or not at all); returns {file name: path}."""
    out_dir = Path(out_dir)
    paths = {}
    for name, text in net_files(spec, solver_spec, out_dir, **kw).items():
        paths[name] = atomic_write_bytes(out_dir / name, text.encode())
    return paths


def reference_spec():
    """The committed prototxt/cifar10_48 run: KevinNet, 48 bits, CIFAR-10, repo-relative paths,
    solver_mode GPU (the original trained on a GPU; Caffe's default)."""
    spec = NetSpec(net="kevinnet", bits=48, classes=10, dataset="cifar10",
                   train_db="data/cifar10/cifar10_train_leveldb",
                   test_db="data/cifar10/cifar10_test_leveldb", db="leveldb",
                   mean_file="data/ilsvrc12/imagenet_mean.binaryproto")
    return spec, SolverSpec(solver_mode="GPU")


def reference_files():
    """{file name: text} of prototxt/cifar10_48, as committed (the tests compare them)."""
    spec, solver_spec = reference_spec()
    return net_files(spec, solver_spec, REFERENCE_DIR,
                     net_path=(REFERENCE_DIR / TRAIN_VAL).as_posix(),
                     snapshot_prefix=spec.snapshot_name)


def write_reference(repo_root="."):
    """Write prototxt/cifar10_48 under `repo_root` (after a deliberate change to the generator)."""
    out = Path(repo_root) / REFERENCE_DIR
    return {name: atomic_write_bytes(out / name, text.encode())
            for name, text in reference_files().items()}

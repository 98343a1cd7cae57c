"""The "caffe" backend: real BVLC Caffe through pycaffe, with checks in Python first.

Re-exports pycaffe's surface (`Net`, `SGDSolver` and the other solvers, `get_solver`, `TRAIN`,
`TEST`, `set_mode_cpu`, `set_random_seed`, `layer_type_list`) as they are; `set_mode_gpu` and
`set_device` first check, in a child process, that the GPU can be used (`check_device`), and
raise BackendUnavailable naming the device and the reason instead of letting Caffe abort.
Caffe's own log (glog) is quiet by default -- GLOG_minloglevel=2 (errors only) unless the
environment sets it, applied before caffe is first imported or, when it came in earlier, to the
running glog -- and `set_verbose(True)` turns its INFO lines back on.

Caffe's CHECK failures abort the whole Python process with a C++ message. `validate_net` checks
in Python what a net would abort on when Caffe builds it -- files that are missing, layer types
this build lacks, records smaller than the crop, a mean of another size, every layer's bottoms,
tops, parameters and shapes (dlbhc_caffe.rules), pretrained weights of other shapes or value
counts -- and raises NetValidationError naming the layer and the file instead. A layer type
without an engine-free rule is tried in a child process (`probe_net`), never in this one.
"""
import ctypes
import ctypes.util
import os
import sys
import tempfile
from pathlib import Path

_USER_LOG_LEVEL = "GLOG_minloglevel" in os.environ
_CAFFE_WAS_IMPORTED = "caffe" in sys.modules
os.environ.setdefault("GLOG_minloglevel", "2")

import caffe as _caffe  # noqa: E402  (after GLOG_minloglevel)
from caffe import (TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: E402,F401
                   NesterovSolver, Net, RMSPropSolver, SGDSolver, get_solver, layer_type_list,
                   set_mode_cpu, set_random_seed)

from .. import proto  # noqa: E402
from ..datasets.db import DatabaseError, detect_backend, open_db  # noqa: E402
from ..datasets.records import decode_datum  # noqa: E402
from ..errors import DlbhcError  # noqa: E402
from ..proto import filter_net, pb, phase_value  # noqa: E402
from ..rules.transform import TransformError, check_param, transformed_shape  # noqa: E402
from ..rules.weights import WeightsError, plan_weight_copy  # noqa: E402
from ..rules.validate import RuleError, check_net  # noqa: E402

name = "caffe"
__version__ = getattr(_caffe, "__version__", "unknown")
module = _caffe  # the pycaffe module itself, for what this surface does not re-export


class NetValidationError(DlbhcError):
    """A net Caffe would abort on; the message names the net, the layer and the file."""


# ---------------------------------------------------------------- Caffe's log

_GLOG_MINLOGLEVEL = "_ZN3fLI17FLAGS_minloglevelE"  # google::FLAGS_minloglevel (int32)


def _glog_minloglevel():
    """glog's FLAGS_minloglevel of the libglog Caffe loaded, as a ctypes int (None if unknown)."""
    for candidate in ("libglog.so.1", "libglog.so.0", ctypes.util.find_library("glog")):
        if not candidate:
            continue
        try:
            return ctypes.c_int32.in_dll(ctypes.CDLL(candidate), _GLOG_MINLOGLEVEL)
        except (OSError, ValueError):
            continue
    return None


def set_verbose(verbose=True):
    """Show Caffe's own INFO log (verbose) or only its errors (quiet, the default).

    Returns True when the level could be changed in the running process.
    """
    level = 0 if verbose else 2
    os.environ["GLOG_minloglevel"] = str(level)
    flag = _glog_minloglevel()
    if flag is None:
        return False
    flag.value = level
    return True


if _CAFFE_WAS_IMPORTED and not _USER_LOG_LEVEL:
    set_verbose(False)  # caffe came in before us: quiet it now


# ---------------------------------------------------------------- GPU

def _cudart():
    """The CUDA runtime library this process loaded with Caffe (None: a CPU_ONLY Caffe), or ""
    when that cannot be known (not Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = [line.split()[-1] for line in maps if "libcudart" in line]
    except OSError:
        return ""
    return paths[0] if paths else None


def has_cuda():
    """Whether this Caffe was built with CUDA (its library loaded the CUDA runtime). A CPU_ONLY
    Caffe aborts the process on the first GPU call."""
    return _cudart() is not None


# Run in a child process: a broken driver can hang or kill the process that asks, and Caffe
# itself would abort in a CHECK. Prints "ok" or the reason the device cannot be used.
_GPU_PROBE = """
import ctypes, sys
cudart, gpu = ctypes.CDLL(sys.argv[1]), int(sys.argv[2])
cudart.cudaGetErrorString.restype = ctypes.c_char_p
def fail(err):
    sys.exit(cudart.cudaGetErrorString(err).decode(errors="replace"))
count = ctypes.c_int(0)
err = cudart.cudaGetDeviceCount(ctypes.byref(count))
if err:
    fail(err)
if not 0 <= gpu < count.value:
    sys.exit("this machine has %d CUDA device(s)" % count.value)
err = cudart.cudaSetDevice(gpu) or cudart.cudaFree(None)  # cudaFree(0) creates the context
if err:
    fail(err)
"""
_probed = {}


def gpu_problem(gpu):
    """Why CUDA device `gpu` cannot be used by this Caffe, or None when it can."""
    import subprocess  # noqa: PLC0415

    gpu = int(gpu)
    cudart = _cudart()
    if cudart is None:
        return "this Caffe is built CPU_ONLY"
    if not cudart or gpu in _probed:  # unknown platform: let Caffe decide
        return _probed.get(gpu)
    try:
        done = subprocess.run([sys.executable, "-c", _GPU_PROBE, cudart, str(gpu)],
                              capture_output=True, text=True, timeout=120, check=False)
        lines = done.stderr.strip().splitlines()
        problem = None if done.returncode == 0 else (
            lines[-1] if lines else f"the CUDA probe ended with status {done.returncode}")
    except subprocess.TimeoutExpired:
        problem = "the CUDA probe did not answer within 120 s (a hung driver?)"
    _probed[gpu] = problem
    return problem


def check_device(gpu):
    """Raise BackendUnavailable unless GPU `gpu` can be used (None: the CPU, always fine)."""
    if gpu is None:
        return
    problem = gpu_problem(gpu)
    if problem:
        from . import BackendUnavailable  # noqa: PLC0415

        fix = ("build Caffe with CUDA (scripts/build_caffe.sh --cuda) or use --backend torch"
               if not has_cuda() else "use a machine with a CUDA GPU and driver 580 or newer")
        raise BackendUnavailable(f"GPU {gpu} cannot be used by Caffe ({_caffe.__file__}): "
                                 f"{problem}; train on the CPU (no --gpu), or {fix}")


_device = {"id": 0}  # pycaffe's device in GPU mode (Caffe's default: 0)


def set_mode_gpu():
    """pycaffe's set_mode_gpu, after checking that the current device can be used (Caffe would
    abort the process on the first GPU call)."""
    check_device(_device["id"])
    _caffe.set_mode_gpu()


def set_device(device_id):
    """pycaffe's set_device, after checking that the device can be used."""
    check_device(int(device_id))
    _device["id"] = int(device_id)
    _caffe.set_device(int(device_id))


# ---------------------------------------------------------------- validation

def _where(path):
    path = Path(path)
    return f"{path}" if path.is_absolute() else f"{path} (relative to {os.getcwd()})"


def _first_record(source, backend, culprit):
    path = Path(source)
    if not path.is_dir():
        raise NetValidationError(f"{culprit}: database {_where(path)} does not exist")
    declared = "lmdb" if backend == pb.DataParameter.LMDB else "leveldb"
    try:
        found = detect_backend(path)
    except DatabaseError as err:
        raise NetValidationError(f"{culprit}: {err}") from None
    if found != declared:
        raise NetValidationError(f"{culprit}: data_param says backend {declared.upper()} but "
                                 f"{path} is a {found.upper()} database")
    records = open_db(path, found)
    try:
        key, datum = next(records)
    except StopIteration:
        raise NetValidationError(f"{culprit}: database {path} holds no records") from None
    except DatabaseError as err:
        hint = " (is it open in another process?)" if "lock" in str(err).lower() else ""
        raise NetValidationError(f"{culprit}: {err}{hint}") from None
    finally:
        records.close()
    return datum


def _check_transform(layer, shape, culprit):
    """Caffe's DataTransformer checks (rules.transform) for records of `shape` (C, H, W)."""
    tp = layer.transform_param
    mean_shape = None
    try:
        check_param(tp, culprit)
        if tp.HasField("mean_file"):
            mean_path = Path(tp.mean_file)
            if not mean_path.is_file():
                raise NetValidationError(f"{culprit}: mean_file {_where(mean_path)} does not "
                                         f"exist")
            try:
                mean_shape = proto.read_mean(mean_path).shape
            except proto.ProtoError as err:
                raise NetValidationError(f"{culprit}: mean_file: {err}") from None
        transformed_shape(shape, tp.crop_size, mean_shape, len(tp.mean_value), culprit,
                          mean_name=f"mean_file {tp.mean_file}")
    except TransformError as err:
        raise NetValidationError(str(err)) from None


def _check_data_layer(layer, culprit, can_decode):
    dp = layer.data_param
    if not dp.source:
        raise NetValidationError(f"{culprit}: data_param has no source")
    if dp.batch_size < 1:
        raise NetValidationError(f"{culprit}: data_param batch_size must be >= 1, "
                                 f"got {dp.batch_size}")
    datum = _first_record(dp.source, dp.backend, culprit)
    if datum.encoded and not can_decode:
        raise NetValidationError(f"{culprit}: {dp.source} holds encoded (PNG/JPEG) records and "
                                 f"this Caffe is built without OpenCV; prepare the data with raw "
                                 f"records (prepare.py --encoding raw)")
    if datum.encoded:
        shape = decode_datum(datum).shape
    else:
        shape = (datum.channels, datum.height, datum.width)
        expected = datum.channels * datum.height * datum.width
        size = len(datum.data) or len(datum.float_data)
        if size != expected:
            raise NetValidationError(f"{culprit}: the first record of {dp.source} holds {size} "
                                     f"values for {datum.channels}x{datum.height}x{datum.width}")
    _check_transform(layer, shape, culprit)
    crop = layer.transform_param.crop_size
    tops = [(dp.batch_size, shape[0], crop or shape[1], crop or shape[2]), (dp.batch_size,)]
    return tops[:len(layer.top)]


def _check_hdf5_layer(layer, culprit):
    source = Path(layer.hdf5_data_param.source)
    if not source.is_file():
        raise NetValidationError(f"{culprit}: HDF5 file list {_where(source)} does not exist")
    files = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    if not files:
        raise NetValidationError(f"{culprit}: HDF5 file list {source} is empty")
    for name_ in files:
        if not Path(name_).is_file():
            raise NetValidationError(f"{culprit}: {source} lists {_where(name_)}, which does "
                                     f"not exist")
    import h5py  # noqa: PLC0415

    batch = layer.hdf5_data_param.batch_size
    with h5py.File(files[0], "r") as f:
        shapes = []
        for top in layer.top:
            if top not in f:
                raise NetValidationError(f"{culprit}: {files[0]} has no dataset '{top}'")
            shapes.append((batch,) + tuple(f[top].shape[1:]))
    return shapes


def _shadow_net(net, input_shapes):
    """A copy of `net` whose data layers are Input layers of their records' shapes (batch 1):
    building it reads nothing, so only the net itself can make Caffe abort."""
    shadow = pb.NetParameter()
    shadow.CopyFrom(net)
    del shadow.layer[:]
    for layer in net.layer:
        if layer.name in input_shapes:
            stand_in = shadow.layer.add(name=layer.name, type="Input")
            stand_in.top.extend(layer.top)
            for shape in input_shapes[layer.name]:
                stand_in.input_param.shape.add().dim.extend((1,) + tuple(shape[1:]))
        else:
            shadow.layer.add().CopyFrom(layer)
    return shadow


_PROBE = """
import json, sys
import caffe
net = caffe.Net(sys.argv[1], caffe.TRAIN if sys.argv[2] == "0" else caffe.TEST)
print(json.dumps({name: [list(b.data.shape) for b in blobs] for name, blobs in net.params.items()}))
"""


def probe_net(net, phase, source, timeout=600):
    """{layer: [param shape, ...]} of `net`, learned by building it with real Caffe in a child
    process: an abort there (a failed CHECK) becomes a NetValidationError with Caffe's reason."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    fd, tmp = tempfile.mkstemp(suffix=".prototxt", prefix="dlbhc-probe-")
    os.close(fd)
    try:
        proto.write_text(net, tmp)
        env = dict(os.environ, GLOG_minloglevel="2")
        done = subprocess.run([sys.executable, "-c", _PROBE, tmp, str(int(phase))],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise NetValidationError(f"{source}: real Caffe did not build the net within "
                                 f"{timeout} s") from None
    finally:
        os.unlink(tmp)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line[:2] in {f"F{d}" for d in "0123456789"}]
        reason = (fatal or lines or [f"exit status {done.returncode}"])[-1]
        reason = reason.split("] ", 1)[-1].strip()
        raise NetValidationError(f"{source}: real Caffe refuses the net: {reason}")
    return {name: [tuple(s) for s in shapes]
            for name, shapes in json.loads(done.stdout.splitlines()[-1]).items()}


def _param_shapes(net, phase, input_shapes, source):
    """{layer: [shape, ...]} of `net`'s learnable blobs, as Caffe sets them up, checking every
    layer with the engine-free rules first; layers without a rule are settled by building the net (data layers as Input layers) in a child process."""
    try:
        shapes = check_net(net, source, data_shapes=input_shapes)
    except RuleError as err:
        raise NetValidationError(str(err)) from None
    if not shapes.undecided:
        return shapes.params
    return probe_net(_shadow_net(net, input_shapes), phase, source)


_NEEDS = {"ImageData": "Caffe built with OpenCV (USE_OPENCV := 1)",
          "WindowData": "Caffe built with OpenCV (USE_OPENCV := 1)",
          "Python": "Caffe built with WITH_PYTHON_LAYER := 1"}


def validate_net(prototxt, phase="TRAIN", weights=None, source=None):
    """Check net `prototxt` (a path or a NetParameter) in `phase` (a phase, or a whole
    pb.NetState as a solver merges it) as Caffe would build it.

    Checks, each failure a NetValidationError naming the net, the layer and the file:
    the prototxt exists and parses; every layer type is in this Caffe build; each Data layer's
    database exists, matches its declared backend and holds records that Caffe can read
    (the first record is read); crop_size fits the records; the mean_file exists and has the
    records' size (mean_value: one, or one a channel); HDF5Data file lists exist; every layer's
    bottoms, tops, parameters and shapes pass Caffe's rules (`rules.validate.check_net`; layers
    without a rule are built in a child process); and, with
    `weights`, the caffemodel exists and every layer it shares with the net by name has blobs of
    the net's shapes (Caffe's CopyTrainedLayersFrom rule). Relative paths are read against the
    working directory, as Caffe reads them.

    Returns the net filtered to `phase` (a NetParameter) and, with weights, the WeightPlan:
    (net, plan) -- plan is None without weights. `source` names the net in messages (default:
    the path).
    """
    state = phase if isinstance(phase, pb.NetState) else pb.NetState(phase=phase_value(phase))
    phase = state.phase
    if isinstance(prototxt, pb.NetParameter):
        source, net = source or "<NetParameter>", proto.upgrade_net(prototxt)
    else:
        source = source or str(prototxt)
        if not Path(prototxt).is_file():
            raise NetValidationError(f"{_where(prototxt)}: no such net definition")
        try:
            net = proto.read_net(prototxt)
        except proto.ProtoError as err:
            raise NetValidationError(str(err)) from None
    try:
        net = filter_net(net, state)
    except proto.ProtoError as err:
        raise NetValidationError(f"{source}: {err}") from None
    known = set(layer_type_list())
    can_decode = "ImageData" in known  # the OpenCV layers exist only when Caffe can decode
    input_shapes = {}
    for layer in net.layer:
        culprit = f"{source}: layer '{layer.name}' ({layer.type})"
        if layer.type not in known:
            need = _NEEDS.get(layer.type)
            raise NetValidationError(f"{culprit}: this Caffe build has no layer type "
                                     f"'{layer.type}'" + (f"; it needs {need}" if need else ""))
        if layer.type == "Data":
            input_shapes[layer.name] = _check_data_layer(layer, culprit, can_decode)
        elif layer.type == "HDF5Data":
            input_shapes[layer.name] = _check_hdf5_layer(layer, culprit)
        elif layer.type == "MemoryData":
            mp = layer.memory_data_param
            input_shapes[layer.name] = [(mp.batch_size, mp.channels, mp.height, mp.width),
                                        (mp.batch_size,)][:len(layer.top)]
    shapes = _param_shapes(net, phase, input_shapes, source)
    if weights is None:
        return net, None
    if not Path(weights).is_file():
        raise NetValidationError(f"{_where(weights)}: no such weights file")
    try:
        plan = plan_weight_copy(shapes, weights)
    except (WeightsError, proto.ProtoError) as err:
        raise NetValidationError(f"{source}: {err}") from None
    return net, plan


__all__ = [
    "name", "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "get_solver", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu",
    "set_device", "set_random_seed", "layer_type_list", "set_verbose", "validate_net",
    "NetValidationError", "has_cuda", "check_device", "gpu_problem",
]

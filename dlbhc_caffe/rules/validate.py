"""What must hold before real Caffe sees a net, a model or a solver state: Caffe aborts the
whole process on a failed CHECK, so each check here turns such a file into a one-line
`RuleError` naming the file and the layer, blob or field.

- `check_net(net, source)`: Net::Init's walk with the engine-free rules of `rules.shapes`: every
  bottom exists, no top is produced twice, each layer's parameters and shapes are ones Caffe
  accepts, ParamSpecs, loss weights and propagate_down come in the right numbers. Returns the
  blob and learnable-param shapes, and the layers no rule could decide (the caller tries those
  in a child process, where an abort is only a failed child).
- `check_file_writers(net, source, allow)`: the policy for nets loaded to encode or search:
  layers that write files when the net runs (HDF5Output truncates the file it names when Caffe
  builds the net; a Python layer runs any code) are refused unless the user names them.
- `check_beside(anchor, paths, what)`: a file named inside another file (the model an index
  recorded) is used only when it sits beside that file, so a crafted file cannot make a tool load
  or write anything elsewhere.

>>> from dlbhc_caffe.proto import parse_text, pb
>>> net = parse_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 '
...                  'dim: 5 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
...                  'inner_product_param { num_output: 3 } }', pb.NetParameter())
>>> shapes = check_net(net, "toy.prototxt")
>>> shapes.blobs["y"], shapes.params["ip"]
((2, 3), [(3, 5), (3,)])
>>> net.layer[1].bottom[0] = "z"
>>> check_net(net, "toy.prototxt")
Traceback (most recent call last):
...
dlbhc_caffe.rules.validate.RuleError: toy.prototxt: layer 'ip' (InnerProduct): unknown bottom blob 'z' (bottom index 0)
"""
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.dbread import check_datum, check_records, open_db
from ..errors import DlbhcError
from ..proto import ProtoError, filter_net
from .shapes import ShapeError, UnknownShapeRule, layer_shapes

# Layers that read only their own blob (Caffe refuses them in place).
_NOT_IN_PLACE = {"Flatten", "Reshape", "Split", "AbsVal"}
# Layers that write files, or run arbitrary code, when a net is built or run.
# The flag that lets such layers through, by layer name or type (tools add it with the model flags).
ALLOW_LAYER_FLAG = "--allow-layer"

FILE_WRITERS = {"HDF5Output": "writes the HDF5 file it names (truncating it when the net is built)",
                "Python": "runs Python code from the module it names"}


class RuleError(DlbhcError):
    """A net, model or state Caffe would refuse or abort on; names the file and the culprit."""


@dataclass
class NetShapes:
    """What `check_net` learned: blob shapes, learnable-param shapes by layer (as pycaffe's
    `net.params`: only layers with blobs), and the layers no rule decided (name, type)."""
    blobs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    undecided: list = field(default_factory=list)


def _culprit(source, layer):
    return f"{source}: layer '{layer.name}' ({layer.type})"


def _check_counts(layer, num_params, culprit):
    if len(layer.loss_weight) and len(layer.loss_weight) != len(layer.top):
        raise RuleError(f"{culprit}: loss_weight must be given once per top ({len(layer.top)}) "
                        f"or not at all, got {len(layer.loss_weight)}")
    if len(layer.propagate_down) and len(layer.propagate_down) != len(layer.bottom):
        raise RuleError(f"{culprit}: propagate_down must be given once per bottom "
                        f"({len(layer.bottom)}) or not at all, got {len(layer.propagate_down)}")
    if num_params is not None and len(layer.param) > num_params:
        raise RuleError(f"{culprit}: {len(layer.param)} param specs for a layer with "
                        f"{num_params} learnable blob(s)")


def check_net(net, source="<net>", data_shapes=None):
    """Check a NetParameter already filtered to one phase (see `proto.filter_net`) as Caffe's
    Net::Init would, without Caffe. Returns NetShapes; raises RuleError.

    data_shapes: {layer name: [top shape, ...]} of layers whose tops come from outside the net
    (Data layers: the records' shape), used instead of a rule.
    """
    data_shapes = data_shapes or {}
    result = NetShapes()
    unknown = set()  # blobs made by undecided layers
    uses = {}  # name -> consumers of its latest version
    for layer in net.layer:
        culprit = _culprit(source, layer)
        for j, name in enumerate(layer.bottom):
            if name not in result.blobs and name not in unknown:
                raise RuleError(f"{culprit}: unknown bottom blob '{name}' (bottom index {j})")
            uses[name] = uses.get(name, 0) + 1
        for j, name in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == name
            if in_place and layer.type in _NOT_IN_PLACE:
                raise RuleError(f"{culprit}: does not allow in-place computation (top '{name}')")
            if in_place and uses[name] > 1:
                # Caffe splits a blob that feeds several bottoms, renaming them: the top is then
                # no longer in place but a second producer of the name.
                raise RuleError(f"{culprit}: computes '{name}' in place, but '{name}' also feeds "
                                f"another bottom ({uses[name]} in all): top blob '{name}' "
                                f"produced by multiple sources")
            if (name in result.blobs or name in unknown) and not in_place:
                raise RuleError(f"{culprit}: top blob '{name}' produced by multiple sources")
        for name in layer.top:
            uses[name] = 0
        bottoms = [result.blobs.get(name) for name in layer.bottom]
        try:
            if layer.name in data_shapes:
                tops, params = [tuple(s) for s in data_shapes[layer.name]], []
            elif any(b is None for b in bottoms):
                raise UnknownShapeRule("a bottom comes from an undecided layer")
            else:
                tops, params = layer_shapes(layer, bottoms)
        except UnknownShapeRule:
            result.undecided.append((layer.name, layer.type))
            unknown.update(layer.top)
            _check_counts(layer, None, culprit)
            continue
        except ShapeError as err:
            raise RuleError(f"{culprit}: {err}") from None
        _check_counts(layer, len(params), culprit)
        for name, shape in zip(layer.top, tops):
            result.blobs[name] = shape
            unknown.discard(name)
        if params:
            result.params[layer.name] = params
    return result


def check_file_writers(net, source="<net>", allow=()):
    """Refuse layers that write files or run code (FILE_WRITERS) unless `allow` names them (by
    layer name or type): a net loaded to encode or search must not touch anything else."""
    allow = set(allow or ())
    for layer in net.layer:
        if layer.type == "HDF5Output":  # Caffe's writes its datasets once: a 2nd forward aborts
            raise RuleError(f"{_culprit(source, layer)}: {FILE_WRITERS[layer.type]} "
                            f"('{layer.hdf5_output_param.file_name}'), and real Caffe runs it "
                            f"for one forward only (the next aborts): remove it to encode")
        if layer.type != "Python":
            continue
        module = layer.python_param.module
        if not {layer.name, layer.type} & allow:
            raise RuleError(f"{_culprit(source, layer)}: {FILE_WRITERS[layer.type]} (module "
                            f"'{module}'); refused for a net loaded to encode or search: remove "
                            f"the layer, or allow it by name ({ALLOW_LAYER_FLAG} {layer.name})")
        # found, not imported (that runs it): real Caffe reports a missing one only as a
        # Boost.Python SystemError that names nothing
        if not module or importlib.util.find_spec(module.split(".")[0]) is None:
            raise RuleError(f"{_culprit(source, layer)}: python_param module '{module}' is not "
                            f"found on the Python path (PYTHONPATH)")


def check_deploy(net, source="<net>", allow_layers=()):
    """`check_net` and `check_file_writers` for a net loaded to encode or search (its TEST
    phase), whichever engine runs it. Returns NetShapes."""
    try:
        net = filter_net(net, "TEST")
    except ProtoError as err:
        raise RuleError(f"{source}: {err}") from None
    check_file_writers(net, source, allow_layers)
    return check_net(net, source)


def _label_classes(net, blobs, label):
    """The number of classes a loss or accuracy layer compares blob `label` with (None)."""
    for layer in net.layer:
        if layer.type in ("SoftmaxWithLoss", "Accuracy") and list(layer.bottom[1:2]) == [label]:
            axis = (layer.softmax_param if layer.type == "SoftmaxWithLoss"
                    else layer.accuracy_param).axis
            scores = blobs.get(layer.bottom[0])
            if scores and -len(scores) <= axis < len(scores):
                return scores[axis]
    return None


def check_training_data(net, source="<net>"):
    """Read every record of the net's Data layers (a net filtered to one phase) before it
    trains: each a Datum whose bytes fit its shape, one shape per database, labels within the
    classes of the loss or accuracy layer that reads them. Caffe checks only the first record's
    shape and never a label (one past the classes reads outside the scores). Raises RuleError
    naming the layer, the database and the key."""
    data_shapes, layers = {}, [layer for layer in net.layer if layer.type == "Data"]
    for layer in layers:
        culprit = _culprit(source, layer)
        records = open_db(layer.data_param.source)
        try:
            key, datum = next(records, (None, None))
            shape = datum is not None and check_datum(datum, f"{layer.data_param.source}: "
                                                             f"record {key}")
        except DlbhcError as err:
            raise RuleError(f"{culprit}: {err}") from None
        finally:
            records.close()
        if shape:
            crop, batch = layer.transform_param.crop_size, layer.data_param.batch_size
            data_shapes[layer.name] = [(batch, shape[0], crop or shape[1], crop or shape[2]),
                                       (batch,)][:len(layer.top)]
    blobs = check_net(net, source, data_shapes).blobs if len(data_shapes) == len(layers) else {}
    for layer in layers:
        classes = _label_classes(net, blobs, layer.top[1]) if len(layer.top) > 1 else None
        try:
            check_records(layer.data_param.source, None, classes)
        except DlbhcError as err:
            raise RuleError(f"{_culprit(source, layer)}: {err}") from None


def check_beside(anchor, paths, what="file"):
    """Raise RuleError unless every path in `paths` lies in the folder of `anchor` (or below it),
    resolved with symbolic links followed. Returns the resolved paths."""
    folder = Path(anchor).resolve().parent
    resolved = []
    for path in paths:
        real = Path(os.path.realpath(folder / path))
        if folder != real and folder not in real.parents:
            raise RuleError(f"{anchor}: the {what} it records, {path}, is not beside it (in "
                            f"{folder}); name the model on the command line instead")
        resolved.append(real)
    return resolved

"""Upgrade V0 and V1 nets, legacy inputs and old solvers to Caffe's current format.

The rules are Caffe's own (src/caffe/util/upgrade_proto.cpp), applied in its order:
V0 -> V1 (fold `padding` layers into the next convolution or pooling, flat fields into their
layer parameters), V1 data-layer transformation fields -> transform_param, V1 -> current (enum
types -> type strings, blobs_lr / weight_decay -> ParamSpec lr_mult / decay_mult), net-level
input / input_dim / input_shape -> an Input layer, BatchNorm's obsolete param specs dropped;
for solvers, the solver_type enum -> the type string (UpgradeSolverType). The tests hold the
results against Caffe's upgrade_net_proto_text and upgrade_solver_proto_text.
"""
import warnings

from .io import ProtoError, parse_text
from . import dlbhc_caffe_pb2 as pb

V1 = pb.V1LayerParameter

# V0 type strings -> V1 enum values.
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V1 enum values -> current type strings.
V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# Layer types of Caffe 1.0's registry (CPU build); an unknown type is an error naming the layer.
KNOWN_LAYER_TYPES = frozenset(t for t in V1_TYPES.values() if t) | {
    "BatchNorm", "Bias", "Crop", "ELU", "Embed", "Filter", "Input", "Log", "LSTM", "Parameter",
    "PReLU", "Python", "Recurrent", "RNN", "Reduction", "Reshape", "Scale", "SPP", "Tile",
}

# Sub-messages copied as they are from a V1 layer to a current one.
_V1_PARAM_FIELDS = [
    f.name for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type is not None
]

SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


class UpgradeWarning(UserWarning):
    """A legacy field that Caffe's upgrade drops (with a logged error) rather than rejects."""


def _fail(layer_name, message):
    raise ProtoError(f"layer '{layer_name}': {message}")


# ---------------------------------------------------------------- V0 -> V1

def _fold_padding_layers(net):
    """Caffe's UpgradeV0PaddingLayers: a `padding` layer's pad moves into its consumer."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top = {name: None for name in net.input}
    for connection in net.layers:
        layer = connection.layer
        if layer.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                _fail(layer.name, f"unknown bottom blob '{blob}'")
            source = last_top[blob]
            if source is None or source.layer.type != "padding":
                continue
            if layer.type not in ("conv", "pool"):
                _fail(layer.name, f"a padding layer feeds a '{layer.type}' layer; Caffe allows "
                                  "only conv and pool")
            if len(connection.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                _fail(layer.name, "a padding layer must have one bottom and one top, and feed a "
                                  "layer with one bottom")
            if layer.pad != 0:
                _fail(layer.name, "has its own pad and a padding layer before it")
            upgraded = out.layers[-1]
            upgraded.layer.pad = source.layer.pad
            upgraded.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_top[blob] = connection
    return out


def _set_or_append(param, field, value):
    """Convolution's geometry fields are repeated, Pooling's single (a dropped field lands in a
    throw-away Convolution parameter, so the kind of layer cannot decide)."""
    descriptor = param.DESCRIPTOR.fields_by_name[field]
    if descriptor.label == descriptor.LABEL_REPEATED:
        getattr(param, field).append(value)
    else:
        setattr(param, field, value)


def _v0_to_v1_layer(connection):
    """Caffe's UpgradeV0LayerParameter for one `layers { layer { ... } }` entry."""
    v0 = connection.layer
    v1 = V1()
    v1.bottom.extend(connection.bottom)
    v1.top.extend(connection.top)
    if not v0.HasField("type"):
        return v1
    name, kind = v0.name, v0.type
    if v0.HasField("name"):
        v1.name = name
    if kind not in V0_TYPES:
        _fail(name, f"unknown V0 layer type '{kind}'")
    v1.type = V0_TYPES[kind]
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)

    def target(field, owners):
        if kind not in owners:
            # Caffe logs this, drops the field and goes on ("continuing anyway").
            warnings.warn(f"layer '{name}': V0 field '{field}' has no meaning in a '{kind}' "
                          "layer; dropped, as Caffe's upgrade does", UpgradeWarning, stacklevel=3)
            return getattr(V1(), next(iter(owners.values())))
        return getattr(v1, owners[kind])

    conv_ip = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
    conv_pool = {"conv": "convolution_param", "pool": "pooling_param"}
    sources = {"data": "data_param", "hdf5_data": "hdf5_data_param",
               "images": "image_data_param", "window_data": "window_data_param"}
    if v0.HasField("num_output"):
        target("num_output", conv_ip).num_output = v0.num_output
    if v0.HasField("biasterm"):
        target("biasterm", conv_ip).bias_term = v0.biasterm
    for filler in ("weight_filler", "bias_filler"):
        if v0.HasField(filler):
            getattr(target(filler, conv_ip), filler).CopyFrom(getattr(v0, filler))
    if v0.HasField("pad"):
        _set_or_append(target("pad", conv_pool), "pad", v0.pad)
    if v0.HasField("kernelsize"):
        _set_or_append(target("kernelsize", conv_pool), "kernel_size", v0.kernelsize)
    if v0.HasField("group"):
        target("group", {"conv": "convolution_param"}).group = v0.group
    if v0.HasField("stride"):
        _set_or_append(target("stride", conv_pool), "stride", v0.stride)
    if v0.HasField("pool"):
        target("pool", {"pool": "pooling_param"}).pool = v0.pool
    if v0.HasField("dropout_ratio"):
        target("dropout_ratio", {"dropout": "dropout_param"}).dropout_ratio = v0.dropout_ratio
    for field in ("local_size", "alpha", "beta", "k"):
        if v0.HasField(field):
            setattr(target(field, {"lrn": "lrn_param"}), field, getattr(v0, field))
    if v0.HasField("source"):
        target("source", sources).source = v0.source
    if v0.HasField("scale"):
        v1.transform_param.scale = v0.scale
    if v0.HasField("meanfile"):
        v1.transform_param.mean_file = v0.meanfile
    if v0.HasField("batchsize"):
        target("batchsize", sources).batch_size = v0.batchsize
    if v0.HasField("cropsize"):
        v1.transform_param.crop_size = v0.cropsize
    if v0.HasField("mirror"):
        v1.transform_param.mirror = v0.mirror
    if v0.HasField("rand_skip"):
        target("rand_skip", {"data": "data_param", "images": "image_data_param"}).rand_skip = \
            v0.rand_skip
    if v0.HasField("shuffle_images"):
        target("shuffle_images", {"images": "image_data_param"}).shuffle = v0.shuffle_images
    for field in ("new_height", "new_width"):
        if v0.HasField(field):
            setattr(target(field, {"images": "image_data_param"}), field, getattr(v0, field))
    if v0.HasField("concat_dim"):
        target("concat_dim", {"concat": "concat_param"}).concat_dim = v0.concat_dim
    window = {"window_data": "window_data_param"}
    for v0_field, v1_field in (("det_fg_threshold", "fg_threshold"),
                               ("det_bg_threshold", "bg_threshold"),
                               ("det_fg_fraction", "fg_fraction"),
                               ("det_context_pad", "context_pad"),
                               ("det_crop_mode", "crop_mode")):
        if v0.HasField(v0_field):
            setattr(target(v0_field, window), v1_field, getattr(v0, v0_field))
    if v0.HasField("hdf5_output_param"):
        target("hdf5_output_param", {"hdf5_output": "hdf5_output_param"}).CopyFrom(
            v0.hdf5_output_param)
    return v1


def upgrade_v0_net(net):
    """A V0 net (`layers { layer { ... } }`) as a V1 net."""
    padded = _fold_padding_layers(net)
    out = pb.NetParameter()
    out.CopyFrom(padded)
    del out.layers[:]
    for connection in padded.layers:
        out.layers.add().CopyFrom(_v0_to_v1_layer(connection))
    return out


# ---------------------------------------------------------------- V1 -> current

def _upgrade_data_transformation(net):
    """Caffe's UpgradeNetDataTransformation: V1 data fields move to transform_param."""
    for layer in net.layers:
        owner = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                 V1.WINDOW_DATA: "window_data_param"}.get(layer.type)
        if owner is None or not layer.HasField(owner):
            continue
        param = getattr(layer, owner)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


def _v1_to_current_layer(v1):
    if v1.HasField("layer"):
        _fail(v1.name, "a V0 layer inside a V1 net")
    layer = pb.LayerParameter()
    layer.name = v1.name
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        if v1.type not in V1_TYPES:
            _fail(v1.name, f"unknown V1 layer type {v1.type}")
        layer.type = V1_TYPES[v1.type]
    layer.blobs.extend(v1.blobs)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in _V1_PARAM_FIELDS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    return layer


def upgrade_v1_net(net):
    """A V1 net (`layers { type: CONVOLUTION ... }`) in the current format."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    _upgrade_data_transformation(out)
    v1_layers = list(out.layers)
    del out.layers[:]
    if len(out.layer):
        raise ProtoError("the net has both V1 `layers` and current `layer` entries")
    for v1 in v1_layers:
        out.layer.add().CopyFrom(_v1_to_current_layer(v1))
    return out


# ---------------------------------------------------------------- inputs, BatchNorm

def _upgrade_input(net):
    """Caffe's UpgradeNetInput: net-level inputs become an Input layer, placed first."""
    if not len(net.input):
        return
    use_shape = len(net.input_shape) > 0
    if not use_shape and len(net.input_dim) != 4 * len(net.input):
        raise ProtoError(f"net '{net.name}': {len(net.input)} input(s) need "
                         f"{4 * len(net.input)} input_dim values, found {len(net.input_dim)}")
    layer = pb.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if use_shape:
            shape.CopyFrom(net.input_shape[i])
        else:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    del net.layer[:]
    net.layer.extend(layers)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def _upgrade_batch_norm(net):
    """Caffe's UpgradeNetBatchNorm: BatchNorm's three zero-lr param specs are obsolete."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            del layer.param[:]


def net_needs_upgrade(net):
    """True when `net` uses any legacy form Caffe would upgrade."""
    return bool(len(net.layers) or len(net.input)
                or any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer))


def upgrade_net(net, source="<net>"):
    """`net` (any generation) in the current format; a new message, the input is unchanged.

    Raises ProtoError naming `source` and the layer when a rule of Caffe's upgrade fails or a
    layer type is unknown.
    """
    try:
        out = pb.NetParameter()
        out.CopyFrom(net)
        if any(l.HasField("layer") for l in out.layers):
            out = upgrade_v0_net(out)
        if len(out.layers):
            out = upgrade_v1_net(out)
        _upgrade_input(out)
        _upgrade_batch_norm(out)
        check_layer_types(out)
    except ProtoError as err:
        raise ProtoError(f"{source}: {err}") from None
    return out


def check_layer_types(net, known=KNOWN_LAYER_TYPES):
    """Raise ProtoError naming the first layer whose type Caffe does not know."""
    for layer in net.layer:
        if layer.type not in known:
            _fail(layer.name, f"unknown layer type '{layer.type}'")


def solver_needs_upgrade(solver):
    """Caffe's SolverNeedsTypeUpgrade: the deprecated solver_type enum is set."""
    return solver.HasField("solver_type")


def upgrade_solver(solver, source="<solver>"):
    """Caffe's UpgradeSolverType: the deprecated solver_type enum becomes the `type` string.

    As in Caffe, giving both is an error (Caffe aborts: "old solver_type field (enum) and new
    type field (string) cannot be both specified"), even when they agree.
    """
    out = pb.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            name = pb.SolverParameter.SolverType.Name(out.solver_type)
            raise ProtoError(f"{source}: solver_type: {name} and type: \"{out.type}\" are both "
                             f"given; keep only type: \"{SOLVER_TYPES[out.solver_type]}\" (Caffe "
                             f"refuses both)")
        out.type = SOLVER_TYPES[out.solver_type]
        out.ClearField("solver_type")
    return out


def _field_names(message_type):
    return {f.name for f in message_type.DESCRIPTOR.fields}


def text_kind(text, path="<string>"):
    """"net" or "solver": what a prototxt's text is, told by its content (Caffe's tools are told
    by their name). A net parses as a NetParameter; a solver as a SolverParameter. Raises the
    ProtoError of the kind the first unknown field name points to when it is neither.

    >>> text_kind('layer { name: "a" type: "ReLU" }'), text_kind('net: "n.prototxt" base_lr: 1')
    ('net', 'solver')
    """
    errors = {}
    for kind, message_type in (("net", pb.NetParameter), ("solver", pb.SolverParameter)):
        try:
            parse_text(text, message_type(), path)
            return kind
        except ProtoError as err:
            errors[kind] = err
    net_only = _field_names(pb.NetParameter) - _field_names(pb.SolverParameter)
    solver_only = _field_names(pb.SolverParameter) - _field_names(pb.NetParameter)
    for word in (w.rstrip(":{") for w in text.split()):
        if word in solver_only:
            raise errors["solver"]
        if word in net_only:
            break
    raise errors["net"]

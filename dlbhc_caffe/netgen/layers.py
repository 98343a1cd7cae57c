"""Builders for the LayerParameter messages the generators use.

Each builder sets only the fields it is given (None = leave unset), so a generated layer equals,
message for message, the same layer of the original prototxt after Caffe's upgrade: the
original's conv1 has no `pad` field, so ours has none either, rather than `pad: 0`.

>>> from dlbhc_caffe.netgen import layers
>>> layers.relu("relu7", "fc7").top
['fc7']
"""
from ..proto import pb

PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}
BACKENDS = {"leveldb": pb.DataParameter.LEVELDB, "lmdb": pb.DataParameter.LMDB}


def gaussian(std):
    """A gaussian FillerParameter (mean 0)."""
    return pb.FillerParameter(type="gaussian", std=std)


def constant(value):
    """A constant FillerParameter; the value is written even when 0, as the original did."""
    return pb.FillerParameter(type="constant", value=value)


def xavier():
    """A xavier FillerParameter (Caffe's default variance_norm FAN_IN)."""
    return pb.FillerParameter(type="xavier")


def param_specs(lr_mult, decay_mult):
    """ParamSpec messages for a layer's weights and bias, e.g. lr (1, 2) and decay (1, 0)."""
    return [pb.ParamSpec(lr_mult=lr, decay_mult=decay) for lr, decay in zip(lr_mult, decay_mult)]


def _layer(name, kind, bottom=(), top=(), phase=None):
    layer = pb.LayerParameter(name=name, type=kind)
    layer.bottom.extend([bottom] if isinstance(bottom, str) else bottom)
    layer.top.extend([top] if isinstance(top, str) else top)
    if phase is not None:
        layer.include.add(phase=PHASES[phase])
    return layer


def _set(message, **fields):
    for field, value in fields.items():
        if value is None:
            continue
        target = getattr(message, field)
        if isinstance(value, pb.FillerParameter):
            target.CopyFrom(value)
        elif hasattr(target, "append"):
            target.append(value)
        else:
            setattr(message, field, value)


def data(source, batch_size, *, phase=None, backend="leveldb", crop=None, mean_file=None,
         mean_value=None, mirror=None, scale=None, name="data", tops=("data", "label")):
    """A Data layer reading Datum records from a LevelDB or LMDB at `source`."""
    layer = _layer(name, "Data", top=tops, phase=phase)
    transform = layer.transform_param
    _set(transform, scale=scale, mirror=mirror, crop_size=crop, mean_file=mean_file)
    if mean_value is not None:
        transform.mean_value.extend(mean_value)
    layer.data_param.source = str(source)
    layer.data_param.batch_size = batch_size
    layer.data_param.backend = BACKENDS[backend]
    return layer


def input(shape, *, name="input", top="data"):  # noqa: A001 (Caffe's layer type name)
    """An Input layer of `shape` (N, C, H, W); named "input" as Caffe's upgrade names it."""
    layer = _layer(name, "Input", top=top)
    layer.input_param.shape.add().dim.extend(int(d) for d in shape)
    return layer


def convolution(name, bottom, num_output, kernel, *, stride=None, pad=None, group=None,
                weight_filler=None, bias_filler=None, lr_mult=None, decay_mult=None, top=None):
    """A Convolution layer; lr_mult / decay_mult are (weights, bias) pairs."""
    layer = _layer(name, "Convolution", bottom, top or name)
    if lr_mult is not None:
        layer.param.extend(param_specs(lr_mult, decay_mult))
    _set(layer.convolution_param, num_output=num_output, pad=pad, kernel_size=kernel,
         group=group, stride=stride, weight_filler=weight_filler, bias_filler=bias_filler)
    return layer


def inner_product(name, bottom, num_output, *, weight_filler=None, bias_filler=None,
                  lr_mult=None, decay_mult=None, top=None):
    """An InnerProduct (fully connected) layer."""
    layer = _layer(name, "InnerProduct", bottom, top or name)
    if lr_mult is not None:
        layer.param.extend(param_specs(lr_mult, decay_mult))
    _set(layer.inner_product_param, num_output=num_output, weight_filler=weight_filler,
         bias_filler=bias_filler)
    return layer


def pooling(name, bottom, kernel, stride, *, pool="MAX", top=None):
    """A Pooling layer (MAX or AVE), Caffe's ceil-mode output size."""
    layer = _layer(name, "Pooling", bottom, top or name)
    param = layer.pooling_param
    param.pool = pb.PoolingParameter.PoolMethod.Value(pool)
    param.kernel_size = kernel
    param.stride = stride
    return layer


def lrn(name, bottom, local_size, alpha, beta, *, top=None):
    """A cross-channel LRN layer."""
    layer = _layer(name, "LRN", bottom, top or name)
    _set(layer.lrn_param, local_size=local_size, alpha=alpha, beta=beta)
    return layer


def relu(name, blob):
    """A ReLU that runs in place on `blob`."""
    return _layer(name, "ReLU", blob, blob)


def dropout(name, blob, ratio):
    """A Dropout that runs in place on `blob` (identity in the TEST phase)."""
    layer = _layer(name, "Dropout", blob, blob)
    layer.dropout_param.dropout_ratio = ratio
    return layer


def sigmoid(name, bottom, top=None):
    """A Sigmoid layer (the latent layer's activation)."""
    return _layer(name, "Sigmoid", bottom, top or name)


def softmax_loss(name, bottom, label="label", top="loss"):
    """A SoftmaxWithLoss layer."""
    return _layer(name, "SoftmaxWithLoss", [bottom, label], top)


def accuracy(name, bottom, label="label", top="accuracy", phase="TEST"):
    """An Accuracy layer, by default only in the TEST phase."""
    return _layer(name, "Accuracy", [bottom, label], top, phase=phase)


def strip_training_fields(layer):
    """A copy of `layer` without what only training reads: ParamSpecs and fillers."""
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    del out.param[:]
    for field in ("convolution_param", "inner_product_param"):
        if out.HasField(field):
            getattr(out, field).ClearField("weight_filler")
            getattr(out, field).ClearField("bias_filler")
    return out

"""pycaffe's net specification: write a net as Python calls, get its NetParameter.

    n = NetSpec()
    n.data = layers.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = layers.Convolution(n.data, num_output=4, kernel_size=3)
    n.relu = layers.ReLU(n.conv, in_place=True)
    net_param = n.to_proto()

As in Caffe: `layers.<Type>(*bottoms, **fields)` makes a layer of that type; `ntop` sets the number
of tops (0 returns the layer itself, 1 its top, more a tuple), `in_place=True` reuses the bottoms
as tops; a keyword is a field of the type's own parameter message (`num_output` goes into
`convolution_param`) unless it ends in "param" or the message lacks it, then it is a field of the
LayerParameter (`loss_weight`, `include`, `transform_param`). Lists fill repeated fields (a dict
per message), dicts fill messages, a single value given to a repeated field is a list of one.
Layers and tops unnamed by the NetSpec are named <Type><n>. `params.<Type>.<CONSTANT>` reads
enum values (`params.Pooling.MAX`).

>>> n = NetSpec()
>>> n.data = layers.Input(shape=dict(dim=[1, 2]))
>>> n.ip = layers.InnerProduct(n.data, num_output=3)
>>> [(l.name, l.type, l.inner_product_param.num_output) for l in n.to_proto().layer][1]
('ip', 'InnerProduct', 3)
"""
from collections import Counter, OrderedDict

from ...proto import pb

# Layer types that read another type's parameter message.
_SHARED_PARAMS = {"Deconvolution": "convolution", "Im2col": "convolution"}


def _param_names():
    """{message name without "Parameter": LayerParameter field without "_param"}."""
    names = {}
    for field in pb.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            names[field.message_type.name[:-len("Parameter")]] = field.name[:-len("_param")]
    for type_name, shared in _SHARED_PARAMS.items():
        names.setdefault(type_name, shared)
    return names


PARAM_NAMES = _param_names()


def assign_proto(proto, name, value):
    """Set field `name` of `proto` from a Python value (lists, dicts, scalars; recursive)."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, sub in item.items():
                    assign_proto(message, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer (the n-th top of `fn`)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """The NetParameter of every layer this top needs."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its input Tops and its parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is "
                                f"{type(value)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _auto_name(self, key, type_name, names, autonames):
        if key not in names:
            autonames[type_name] += 1
            names[key] = f"{type_name}{autonames[type_name]}"
        return names[key]

    def _get_name(self, names, autonames):
        # A layer is named after its first top (a NetSpec attribute name, or an automatic one).
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        return self._auto_name(self, self.type_name, names, autonames)

    def _get_top_name(self, top, names, autonames):
        return self._auto_name(top, top.fn.type_name, names, autonames)

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = pb.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        own = PARAM_NAMES.get(self.type_name)
        for key, value in self.params.items():
            if not key.endswith("param") and own is not None and \
                    key in getattr(layer, own + "_param").DESCRIPTOR.fields_by_name:
                assign_proto(getattr(layer, own + "_param"), key, value)
            else:
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops):
    """The NetParameter holding every layer needed to compute `tops`."""
    layers, autonames = OrderedDict(), Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (or items) name the blobs and layers of `to_proto()`."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def to_proto(self):
        names = {top: name for name, top in self.tops.items()}
        layers, autonames = OrderedDict(), Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = pb.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.<Type>(*bottoms, **params)`: a Top, a tuple of Tops, or (ntop=0) the layer."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*inputs, **params):
            fn = Function(type_name, inputs, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return make


class Parameters:
    """`params.<Type>.<NAME>`: the enum value NAME of <Type>Parameter."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = getattr(pb, type_name + "Parameter")

        class _Values:
            def __getattr__(self, name):
                return getattr(message, name)
        return _Values()


layers = Layers()
params = Parameters()

__all__ = ["NetSpec", "layers", "params", "to_proto", "Top", "Function", "assign_proto"]

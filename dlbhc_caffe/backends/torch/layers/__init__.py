"""The layer registry: one class per Caffe layer type, found by its type string.

>>> [name in LAYERS for name in ("Convolution", "InnerProduct", "SoftmaxWithLoss")]
[True, True, True]
"""
LAYERS = {}


def register(type_name):
    """Class decorator: make the class the implementation of Caffe layer type `type_name`.
    A type registered twice is an error (Caffe's LayerRegistry aborts on it)."""
    def decorate(cls):
        if type_name in LAYERS:
            from .base import LayerError  # noqa: PLC0415

            raise LayerError(f"layer type '{type_name}' already registered (by "
                             f"{LAYERS[type_name].__module__}.{LAYERS[type_name].__name__})")
        cls.type = type_name
        LAYERS[type_name] = cls
        return cls
    return decorate


def layer_class(type_name, layer_name="?"):
    from .base import LayerError  # noqa: PLC0415

    try:
        return LAYERS[type_name]
    except KeyError:
        raise LayerError(f"layer '{layer_name}': type '{type_name}' is not implemented by the "
                         f"torch backend (it has: {', '.join(sorted(LAYERS))})") from None


def layer_type_list():
    """The layer types this backend runs (pycaffe's `layer_type_list`)."""
    return sorted(LAYERS)


from . import (array, common, data_layers, loss, losses, neuron, normalization, python,  # noqa: E402,F401
               vision)

__all__ = ["LAYERS", "register", "layer_class", "layer_type_list"]

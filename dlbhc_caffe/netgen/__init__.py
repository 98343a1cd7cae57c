"""Net generation: KevinNet (and the small net) train_val, deploy and solver prototxt.

A net is a base (CaffeNet's conv1 .. fc7, or the small net's) "hashified" with the paper's head:
fc8_kevin (bits) -> fc8_kevin_encode (Sigmoid) -> fc8_pascal (classes) -> SoftmaxWithLoss.

    kevinnet.train_val_net / deploy_net   the generator functions (NetParameter messages)
    small.train_val_net / deploy_net      the same for the small 32x32 net
    caffenet.caffenet_layers              CaffeNet's layers as data
    solver.make_solver                    the SolverParameter
    plan_net / plan_solver                validated NetSpec / SolverSpec from a dataset and choices
    net_files / write_net_files           the three files of a run folder
    reference_files / write_reference     the committed prototxt/cifar10_48 files

>>> from dlbhc_caffe import netgen
>>> spec = netgen.NetSpec(bits=12)
>>> spec.deploy().layer[-2].inner_product_param.num_output
12
"""
from . import caffenet, kevinnet, layers, small, solver
from .caffenet import caffenet_layers
from .kevinnet import CLASSIFIER, ENCODE, LATENT, MAX_BITS, PAPER_BITS, check_bits
from .shapes import blob_shapes
from .solver import make_solver
from .spec import (NET_FILES, NETS, REFERENCE_DIR, DatasetInputs, NetSpec, NetSpecError,
                   SolverSpec, dataset_inputs, net_files, plan_net, plan_solver, reference_files,
                   reference_spec, write_net_files, write_reference)

__all__ = [
    "caffenet", "kevinnet", "layers", "small", "solver", "caffenet_layers", "make_solver",
    "blob_shapes", "check_bits", "LATENT", "ENCODE", "CLASSIFIER", "PAPER_BITS", "MAX_BITS",
    "NETS", "NET_FILES", "REFERENCE_DIR", "DatasetInputs", "NetSpec", "NetSpecError",
    "SolverSpec", "dataset_inputs", "plan_net", "plan_solver", "net_files", "write_net_files",
    "reference_files", "reference_spec", "write_reference",
]

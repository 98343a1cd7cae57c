"""Our schema (dlbhc_caffe/proto/dlbhc_caffe.proto) against real Caffe's caffe_pb2.

Files are interchangeable only if every message we define has, field for field, the same number,
label, type and default as Caffe's; and the committed generated module must be what protoc makes
of the committed .proto.
"""
import shutil
import subprocess

import numpy as np
import pytest
from conftest import unavailable
from google.protobuf import descriptor_pb2

from dlbhc_caffe.proto import dlbhc_caffe_pb2 as ours

PROTO_DIR = "dlbhc_caffe/proto"


def _messages(file_descriptor):
    """Every message of a file, nested ones included, by name relative to the package."""
    found = {}

    def walk(desc, prefix):
        for name, msg in desc.message_types_by_name.items() if prefix == "" else \
                desc.nested_types_by_name.items():
            found[prefix + name] = msg
            walk(msg, prefix + name + ".")

    walk(file_descriptor, "")
    return found


def _field_signature(field):
    enum_values = None
    if field.enum_type is not None:
        enum_values = sorted((v.name, v.number) for v in field.enum_type.values)
    default = field.default_value if field.has_default_value else None
    return (field.number, field.label, field.type, default, enum_values)


# Where the Caffe we build (BVLC 1.0 as packaged by brocolli-caffe 9.0.2) and BVLC's master
# schema differ, we follow master; neither difference changes what a file means.
KNOWN_DIFFERENCES = {
    # The fork gives these a default of 1; Caffe reads them only when they are set.
    "ConvolutionParameter.stride_h", "ConvolutionParameter.stride_w",
    # Added to BVLC after 1.0; a file that sets it does not load in 1.0.
    "InfogainLossParameter.axis",
}


# Extras of the brocolli-caffe fork (SSD and others) that BVLC Caffe does not have.
FORK_ONLY_FIELDS = {
    "V1LayerParameter": {"batch_norm_param", "bn_param"},
    "TransformationParameter": {"crop_h", "crop_w", "emit_constraint", "noise_param",
                                "old_resize_param"},
    "BatchNormParameter": {"bias_filler", "do_all_reduce", "use_alpha_beta", "weight_filler"},
    "ConvolutionParameter": {"height_group", "width_group"},
    "PoolingParameter": {"ceil_mode"},
}


def test_every_message_and_field_matches_real_caffe(caffe_pb2):
    theirs = _messages(caffe_pb2.DESCRIPTOR)
    checked = 0
    for name, msg in _messages(ours.DESCRIPTOR).items():
        assert name in theirs, f"message {name} is not in Caffe's schema"
        their_fields = theirs[name].fields_by_name
        for field in msg.fields:
            if f"{name}.{field.name}" in KNOWN_DIFFERENCES:
                continue
            assert field.name in their_fields, f"{name}.{field.name} is not in Caffe's schema"
            assert _field_signature(field) == _field_signature(their_fields[field.name]), \
                f"{name}.{field.name} differs from Caffe's"
            checked += 1
    # The messages the issue names, and all their fields, must be there (not a thin subset).
    for name in ("NetParameter", "LayerParameter", "V1LayerParameter", "V0LayerParameter",
                 "SolverParameter", "SolverState", "Datum", "BlobProto", "BlobShape",
                 "BlobProtoVector", "TransformationParameter", "ParamSpec", "FillerParameter",
                 "ConvolutionParameter", "PoolingParameter", "LRNParameter", "DataParameter"):
        mine = ours.DESCRIPTOR.message_types_by_name[name]
        missing = set(theirs[name].fields_by_name) - set(mine.fields_by_name)
        # LayerParameter and SolverParameter: the layer types and options of detection and
        # recurrent forks are deliberately absent; so are the fork's V1 batch-norm fields.
        if name not in ("LayerParameter", "SolverParameter"):
            missing -= FORK_ONLY_FIELDS.get(name, set())
            assert not missing, f"{name} lacks Caffe's fields {sorted(missing)}"
    assert checked > 390


def _normalize(message):
    """Drop what differs only in spelling: json_name, and float defaults' decimal digits."""
    for field in message.field:
        field.ClearField("json_name")
        if field.type == field.TYPE_FLOAT and field.HasField("default_value"):
            field.default_value = repr(float(np.float32(field.default_value)))
    for nested in message.nested_type:
        _normalize(nested)


def test_enum_phase_matches(caffe_pb2):
    assert ours.TRAIN == caffe_pb2.TRAIN and ours.TEST == caffe_pb2.TEST


def test_committed_module_is_what_protoc_generates(tmp_path):
    protoc = shutil.which("protoc")
    if protoc is None:
        unavailable("protoc not installed (make setup installs protobuf-compiler)")
    out = tmp_path / "set.pb"
    subprocess.run([protoc, f"--proto_path={PROTO_DIR}", f"--descriptor_set_out={out}",
                    "dlbhc_caffe.proto"], check=True)
    generated = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(ours.DESCRIPTOR.serialized_pb)
    for message in list(generated.message_type) + list(committed.message_type):
        _normalize(message)
    assert generated == committed, ("dlbhc_caffe_pb2.py is stale: run "
                                    "`protoc --python_out=. dlbhc_caffe.proto` in " + PROTO_DIR)


def test_binary_files_cross_both_schemas(caffe_pb2):
    """A message written with our schema reads with Caffe's, and back, field for field."""
    from dlbhc_caffe import proto

    layer = ours.LayerParameter(name="fc8_kevin", type="InnerProduct", bottom=["fc7"],
                                top=["fc8_kevin"])
    layer.param.add(lr_mult=1, decay_mult=1)
    layer.inner_product_param.num_output = 48
    layer.inner_product_param.weight_filler.type = "gaussian"
    layer.inner_product_param.weight_filler.std = 0.005
    layer.blobs.add().CopyFrom(proto.array_to_blob([[1.5, -2.0]]))
    data = layer.SerializeToString()
    theirs = caffe_pb2.LayerParameter.FromString(data)
    assert theirs.inner_product_param.weight_filler.std == pytest.approx(0.005)
    assert list(theirs.blobs[0].shape.dim) == [1, 2]
    assert ours.LayerParameter.FromString(theirs.SerializeToString()) == layer

"""Net params to and from files, as Caffe's Net does: CopyTrainedLayersFrom (binary
NetParameter whatever the file is called; HDF5 when the name ends in ".h5"), ToProto / save,
ToHDF5 / save_hdf5, and ShareTrainedLayersWith.

The HDF5 layout is Caffe's: group "data" holds one group per layer (every layer, in order) with a
float32 dataset "0", "1", ... per param blob (only blobs the layer owns, not shared ones); with
write_diff, group "diff" holds the diffs alike.
"""
import numpy as np
import torch

from ...errors import DlbhcError
from ...proto import ProtoError, pb, read_binary, upgrade_net, write_binary
from .blob import decode_blob, proto_shape, shapes_match


class NetError(DlbhcError):
    """A net Caffe would refuse to build or run; the message names the layer or blob."""


class WeightsMixin:
    """copy_from, load_hdf5, save, save_hdf5, to_proto, share_with."""

    def copy_from(self, path):
        """Copy params from a caffemodel, layer by layer by name (Caffe's CopyTrainedLayersFrom);
        layers the file lacks keep theirs, layers only the file has are ignored. The file is read
        as a binary NetParameter whatever its name, except a name ending in ".h5" (HDF5)."""
        if str(path).endswith(".h5"):
            self.load_hdf5(path)
            return
        try:
            source = upgrade_net(read_binary(path, pb.NetParameter), source=str(path))
        except ProtoError as err:
            raise NetError(str(err)) from None
        self.copy_from_param(source, str(path))

    def copy_from_param(self, source, where="<NetParameter>"):
        index = {name: i for i, name in enumerate(self._layer_names)}
        for src in source.layer:
            if src.name not in index:
                continue
            target = self.layers[index[src.name]].blobs
            if len(target) != len(src.blobs):
                raise NetError(f"{where}: incompatible number of blobs for layer '{src.name}': "
                               f"the file has {len(src.blobs)}, the net {len(target)}")
            for j, (blob, proto) in enumerate(zip(target, src.blobs)):
                if not shapes_match(blob.shape, proto):
                    raise NetError(
                        f"{where}: cannot copy param {j} weights from layer '{src.name}'; shape "
                        f"mismatch. Source param shape is {proto_shape(proto)[0]}; target param "
                        f"shape is {blob.shape}. To learn this layer's parameters from scratch "
                        "rather than copying from a saved net, rename the layer.")
                blob.copy_(torch.from_numpy(decode_blob(proto).reshape(blob.shape)))

    def share_with(self, other):
        """Use `other`'s param values (same memory) for the layers both nets have by name
        (Caffe's ShareTrainedLayersWith: data shared, diffs kept apart)."""
        mine = self.layer_dict
        for name, layer in zip(other._layer_names, other.layers):
            if name not in mine:
                continue
            target = mine[name].blobs
            if len(target) != len(layer.blobs):
                raise NetError(f"incompatible number of blobs for layer '{name}'")
            for j, (blob, source) in enumerate(zip(target, layer.blobs)):
                if blob.shape != source.shape:
                    raise NetError(f"cannot share param {j} of layer '{name}': shapes "
                                   f"{source.shape} and {blob.shape} differ")
                blob.share_data(source)

    def to_proto(self, write_diff=False):
        """The net with its params as a NetParameter (Caffe's Net::ToProto)."""
        out = pb.NetParameter(name=self.name)
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                lp.blobs.add().MergeFromString(blob.to_proto_bytes(write_diff))
        return out

    def save(self, path, write_diff=False):
        """Write the net and its params as a binary .caffemodel that real Caffe loads."""
        write_binary(self.to_proto(write_diff), path)


    def _owned(self):
        """{(layer index, blob index)} of the param blobs a layer owns (not shared from another
        layer's named param)."""
        seen, owned = set(), set()
        for i, layer in enumerate(self.layers):
            for j, blob in enumerate(layer.blobs):
                if id(blob) not in seen:
                    seen.add(id(blob))
                    owned.add((i, j))
        return owned

    def save_hdf5(self, path, write_diff=False):
        """Write the params as HDF5 in Caffe's layout (Net::ToHDF5)."""
        import h5py  # noqa: PLC0415 - only HDF5 users pay for it

        owned = self._owned()
        with h5py.File(path, "w") as out:
            sides = [("data", out.create_group("data"))]
            if write_diff:
                sides.append(("diff", out.create_group("diff")))
            for i, (name, layer) in enumerate(zip(self._layer_names, self.layers)):
                groups = [(side, group.create_group(name)) for side, group in sides]
                for j, blob in enumerate(layer.blobs):
                    for side, group in groups:
                        if side == "diff" or (i, j) in owned:
                            group.create_dataset(str(j), data=np.asarray(
                                getattr(blob, side), dtype=np.float32))

    def load_hdf5(self, path):
        """Copy params from an HDF5 file in Caffe's layout, by layer name (Caffe's
        CopyTrainedLayersFromHDF5): a shared param may be missing from the file."""
        import h5py  # noqa: PLC0415

        index = {name: i for i, name in enumerate(self._layer_names)}
        owned = self._owned()
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise NetError(f"{path}: cannot read as HDF5 weights ({err})") from None
        with handle:
            if "data" not in handle:
                raise NetError(f"{path}: no 'data' group: not a Caffe HDF5 weights file")
            for name, group in handle["data"].items():
                if name not in index:
                    continue
                i = index[name]
                target = self.layers[i].blobs
                if len(group) > len(target):
                    raise NetError(f"{path}: incompatible number of blobs for layer '{name}': "
                                   f"the file has {len(group)}, the net {len(target)}")
                for j, blob in enumerate(target):
                    if str(j) not in group:
                        if (i, j) in owned:
                            raise NetError(f"{path}: incompatible number of blobs for layer "
                                           f"'{name}': param {j} is missing")
                        continue
                    values = np.asarray(group[str(j)], dtype=np.float32)
                    if values.shape != blob.shape:
                        raise NetError(f"{path}: layer '{name}' param {j} has shape "
                                       f"{values.shape} in the file, {blob.shape} in the net")
                    blob.copy_(torch.from_numpy(values))

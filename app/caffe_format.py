"""Reading Caffe's .caffemodel (and .binaryproto mean) files through the `protobuf` package.

A .caffemodel is a serialized caffe.NetParameter (src/caffe/proto/caffe.proto). There is no protoc
here to compile that .proto, so the few messages and fields an import needs are declared below in
Python (a FileDescriptorProto built field by field) and protobuf's own parser builds message
classes from them. The wire format needs no more: fields this schema leaves out are skipped as
unknown fields, and field numbers are all that is on the wire. The parser is protobuf's (upb, in
C): a 230 MB bvlc_alexnet.caffemodel parses in a fraction of a second, and each packed float blob
turns into a NumPy array in one copy.

Both generations of layer message are read:
- `layer` (LayerParameter, NetParameter field 100; Caffe since 2015): the type is a string,
  "Convolution", "LRN", ...;
- `layers` (V1LayerParameter, field 2; older models, bvlc_alexnet among them): the type is an
  enum, mapped to the same strings through V1_TYPES.
Blobs carry `shape` (BlobShape) or, in older files, num/channels/height/width.
The still older V0 layers (V1LayerParameter.layer, field 1) are refused: Caffe's
upgrade_net_proto_binary tool converts them.

The parser makes an object of every entry: a few hundred bytes for an empty layer or blob of 2 or
3 bytes in the file, so 22 MB of empty layers took 1.9 GB and 20 s. Before it runs, the net's
layout is read from the wire format, tags and lengths only (check_layout): a file with more
layers, or more entries in its layers, blobs and settings, than a Caffe model has is refused there.
"""
import math
from collections import namedtuple

import numpy as np

from alexnet.app.errors import UserError, one_line

MAX_NET_BYTES = 2 << 30        # protobuf parses at most 2 GB; bvlc_alexnet.caffemodel is 233 MB
MAX_MEAN_BYTES = 64 << 20      # a mean image: imagenet_mean.binaryproto (3x256x256 floats) is 786 KB
# The layout no Caffe model has, refused before the parse (check_layout). bvlc_alexnet has about 25
# layers; the deepest published Caffe models a few hundred (ResNet-152's deploy net, with its
# BatchNorm and Scale layers: about 670) to well over a thousand (DenseNet-264). A layer holds a
# handful of entries (name, type, its bottoms and tops, parameters, 1 to 3 blobs), a blob a few
# more (its shape's 1 to 4 dims, its numbers: Caffe's caffe.proto packs them, so all of them are
# one entry); a whole net some tens of thousands. At these caps the parser's objects take tens of
# MB (an empty blob, 2 bytes in the file, becomes ~450 bytes of objects and array), whatever the
# file; what it does not count (names, numbers, fields it skips) it keeps in about the bytes they
# take in the file.
MAX_LAYERS = 10_000
MAX_ENTRIES = 100_000          # fields of the net, its layers, their blobs, shapes and convolution settings
MAX_BLOB_AXES = 32             # Caffe's kMaxBlobAxes

# message -> [(field, number, type, label, default)]; type is a scalar name or another message
_OPT, _REP = "optional", "repeated"
SCHEMA = {
    "BlobShape": [("dim", 1, "int64", _REP, None)],
    # num/channels/height/width were int32 in old Caffe, int64 in some forks: the same varints
    "BlobProto": [("num", 1, "int64", _OPT, None), ("channels", 2, "int64", _OPT, None),
                  ("height", 3, "int64", _OPT, None), ("width", 4, "int64", _OPT, None),
                  ("data", 5, "float", _REP, None), ("shape", 7, "BlobShape", _OPT, None),
                  ("double_data", 8, "double", _REP, None)],
    # pad, kernel_size and stride were optional before N-d convolution made them repeated
    "ConvolutionParameter": [("num_output", 1, "uint32", _OPT, None), ("bias_term", 2, "bool", _OPT, True),
                             ("pad", 3, "uint32", _REP, None), ("kernel_size", 4, "uint32", _REP, None),
                             ("group", 5, "uint32", _OPT, 1), ("stride", 6, "uint32", _REP, None),
                             ("pad_h", 9, "uint32", _OPT, None), ("pad_w", 10, "uint32", _OPT, None),
                             ("kernel_h", 11, "uint32", _OPT, None), ("kernel_w", 12, "uint32", _OPT, None),
                             ("stride_h", 13, "uint32", _OPT, None), ("stride_w", 14, "uint32", _OPT, None)],
    # pool: the PoolMethod enum (MAX 0, AVE 1, STOCHASTIC 2) read as its number
    "PoolingParameter": [("pool", 1, "int32", _OPT, 0), ("kernel_size", 2, "uint32", _OPT, None),
                         ("stride", 3, "uint32", _OPT, 1), ("pad", 4, "uint32", _OPT, 0),
                         ("kernel_h", 5, "uint32", _OPT, None), ("kernel_w", 6, "uint32", _OPT, None),
                         ("stride_h", 7, "uint32", _OPT, None), ("stride_w", 8, "uint32", _OPT, None),
                         ("pad_h", 9, "uint32", _OPT, None), ("pad_w", 10, "uint32", _OPT, None),
                         ("global_pooling", 12, "bool", _OPT, False)],
    # norm_region: ACROSS_CHANNELS 0, WITHIN_CHANNEL 1. Caffe's defaults: alpha 1, k 1.
    "LRNParameter": [("local_size", 1, "uint32", _OPT, 5), ("alpha", 2, "float", _OPT, 1.0),
                     ("beta", 3, "float", _OPT, 0.75), ("norm_region", 4, "int32", _OPT, 0),
                     ("k", 5, "float", _OPT, 1.0)],
    "LayerParameter": [("name", 1, "string", _OPT, None), ("type", 2, "string", _OPT, None),
                       ("bottom", 3, "string", _REP, None), ("top", 4, "string", _REP, None),
                       ("blobs", 7, "BlobProto", _REP, None),
                       ("convolution_param", 106, "ConvolutionParameter", _OPT, None),
                       ("lrn_param", 118, "LRNParameter", _OPT, None),
                       ("pooling_param", 121, "PoolingParameter", _OPT, None)],
    # type: the LayerType enum read as its number (V1_TYPES); `layer`: a V0 layer, only detected
    "V1LayerParameter": [("layer", 1, "bytes", _OPT, None), ("bottom", 2, "string", _REP, None),
                         ("top", 3, "string", _REP, None), ("name", 4, "string", _OPT, None),
                         ("type", 5, "int32", _OPT, None), ("blobs", 6, "BlobProto", _REP, None),
                         ("convolution_param", 10, "ConvolutionParameter", _OPT, None),
                         ("lrn_param", 18, "LRNParameter", _OPT, None),
                         ("pooling_param", 19, "PoolingParameter", _OPT, None)],
    "NetParameter": [("name", 1, "string", _OPT, None), ("layers", 2, "V1LayerParameter", _REP, None),
                     ("layer", 100, "LayerParameter", _REP, None)],
}

# V1LayerParameter.LayerType -> the type strings of LayerParameter (caffe.proto's UpgradeV1LayerType)
V1_TYPES = {0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
            7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData",
            13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
            18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH",
            24: "WindowData", 25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
            29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
            35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution"}

# One layer of a Caffe net, whichever message it came from: params holds the (possibly default)
# convolution_param, lrn_param or pooling_param message of the layer, else None.
CaffeLayer = namedtuple("CaffeLayer", "name type blobs params")

_messages = None


def messages():
    """{message name: class} for SCHEMA, built once (the tests write .caffemodel files with them)."""
    global _messages
    if _messages is None:
        try:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        except ImportError:
            raise UserError("reading Caffe files needs the protobuf package: pip install protobuf "
                            "(or pip install -e '.[caffe]')") from None
        F = descriptor_pb2.FieldDescriptorProto
        scalars = {"int32": F.TYPE_INT32, "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "float": F.TYPE_FLOAT,
                   "double": F.TYPE_DOUBLE, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES}
        # a package of our own, so that these classes never meet a real caffe.proto in the pool
        proto = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe_subset.proto", package="alexnet_caffe",
                                                   syntax="proto2")
        for message, fields in SCHEMA.items():
            m = proto.message_type.add(name=message)
            for name, number, kind, label, default in fields:
                f = m.field.add(name=name, number=number,
                                label=F.LABEL_REPEATED if label == _REP else F.LABEL_OPTIONAL)
                if kind in scalars:
                    f.type = scalars[kind]
                else:
                    f.type, f.type_name = F.TYPE_MESSAGE, f".alexnet_caffe.{kind}"
                if default is not None:
                    f.default_value = str(default).lower() if kind == "bool" else repr(default)
                if label == _REP and kind in ("float", "double", "int64"):
                    f.options.packed = True             # as caffe.proto declares blob data and dims
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _messages = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"alexnet_caffe.{name}"))
                     for name in SCHEMA}
    return _messages


def _parse(path, message, limit, what):
    """The `message` in file `path`, read whole (refused above `limit` bytes, or when it is not a
    regular file: /dev/zero would be read for ever) and its layout checked (check_layout); `what`
    names the file in errors."""
    msg = messages()[message]()                    # first: says what to install when protobuf is missing
    from google.protobuf.message import DecodeError

    from alexnet.app.files import read_capped

    raw = read_capped(path, limit, what)
    check_layout(raw, path, message)
    try:
        msg.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} is truncated or not a Caffe {message} file ({one_line(e)})") from None
    return msg


def _varint(raw, pos, end):
    """The varint at raw[pos:end] and the position after it."""
    value = shift = 0
    while shift < 64:
        if pos >= end:
            raise ValueError("a varint runs past the end of its message")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("a varint of over 10 bytes")


def _fields(raw, pos, end):
    """(field number, wire type, start, end of its value) for each field of the message in
    raw[pos:end]: tags and lengths only, nothing copied."""
    while pos < end:
        key, pos = _varint(raw, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            after = _varint(raw, pos, end)[1]
        elif wire == 2:
            length, pos = _varint(raw, pos, end)
            after = pos + length
        elif wire in (1, 5):
            after = pos + (8 if wire == 1 else 4)
        else:                   # 3, 4: groups, which no Caffe message has; 6, 7: none at all
            raise ValueError(f"field {number} has wire type {wire}")
        if number == 0 or after > end:
            raise ValueError("a field runs past the end of its message" if number else "a field numbered 0")
        yield number, wire, pos, after
        pos = after


# What check_layout counts: the fields of a message, and of those of its fields that are messages
# in this table (field number -> their own table): NetParameter's layers (V1 `layers` 2, `layer`
# 100), their blobs (6, 7) and convolution_param (10, 106), a blob's shape (7). Every repeated field
# of SCHEMA is in there; the integers of one (_INTS: a shape's dims, a convolution's pad,
# kernel_size and stride) count one each, packed or not: a byte in the file, 8 once parsed.
_INTS = "integers"
_BLOB_LAYOUT = {7: {1: _INTS}}
_CONV_LAYOUT = {3: _INTS, 4: _INTS, 6: _INTS}
_NET_LAYOUT = {2: {6: _BLOB_LAYOUT, 10: _CONV_LAYOUT}, 100: {7: _BLOB_LAYOUT, 106: _CONV_LAYOUT}}
_HIGH_BYTES = bytes(range(0x80, 0x100))


def _count(raw, start, end, layout, tally):
    """tally(n) for the fields of the message in raw[start:end] and, recursively, of the messages
    `layout` names; packed integers count one per varint (each ends in a byte below 0x80)."""
    for number, wire, inner_start, inner_end in _fields(raw, start, end):
        inner = layout.get(number) if wire == 2 else None
        if inner is _INTS:
            tally(len(raw[inner_start:inner_end].translate(None, _HIGH_BYTES)))
        else:
            tally(1)
            if inner is not None:
                _count(raw, inner_start, inner_end, inner, tally)


def check_layout(raw, path, message="NetParameter"):
    """Refuse a serialized NetParameter (or BlobProto) with more entries (MAX_ENTRIES) or layers
    (MAX_LAYERS) than a Caffe model has, reading tags and lengths only: before the parser makes
    an object of each."""
    entries = 0

    def tally(n):
        nonlocal entries
        entries += n
        if entries > MAX_ENTRIES:
            raise UserError(f"{path} holds over {MAX_ENTRIES:,} entries (layers, their blobs and settings), more "
                            f"than a Caffe model has (Caffe writes a blob's numbers packed, as one): not a Caffe file")

    try:
        if message != "NetParameter":
            _count(raw, 0, len(raw), _BLOB_LAYOUT, tally)
            return
        layers = 0
        for number, wire, start, end in _fields(raw, 0, len(raw)):
            tally(1)
            if number in _NET_LAYOUT and wire == 2:
                layers += 1
                if layers > MAX_LAYERS:
                    raise UserError(f"{path} holds over {MAX_LAYERS:,} layers, more than any Caffe network has "
                                    f"(AlexNet has about 25): not a Caffe model")
                _count(raw, start, end, _NET_LAYOUT[number], tally)
    except ValueError as e:
        raise UserError(f"{path} is truncated or not a Caffe {message} file ({e})") from None


def blob_array(blob, what):
    """A BlobProto as a float32 NumPy array of its shape (BlobShape, else the legacy 4-d dims)."""
    data = np.array(blob.data, np.float32) if len(blob.data) else np.array(blob.double_data, np.float32)
    if blob.HasField("shape"):
        if len(blob.shape.dim) > MAX_BLOB_AXES:       # before a tuple is made of millions of them
            raise UserError(f"{what}: its shape has {len(blob.shape.dim):,} axes, more than Caffe's "
                            f"{MAX_BLOB_AXES}")
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    # math.prod in Python integers: NumPy's prod of (2^32, 2^32) wraps round to 0, "the size" of no data
    if any(d < 0 for d in shape) or math.prod(shape) != data.size:
        raise UserError(f"{what}: its shape {shape} does not hold its {data.size} numbers (a truncated file?)")
    return data.reshape(shape)


def read_net(path):
    """The layers of a .caffemodel, in file order, as CaffeLayer tuples with NumPy blobs."""
    net = _parse(path, "NetParameter", MAX_NET_BYTES, "Caffe model")
    if len(net.layer) and len(net.layers):
        raise UserError(f"{path} mixes Caffe's two layer formats (layer and layers); Caffe would refuse it too")
    layers = []
    for layer in net.layer:
        layers.append(_layer(layer, layer.type))
    for layer in net.layers:
        if layer.HasField("layer"):
            raise UserError(f"{path} is in Caffe's V0 format; convert it with Caffe's upgrade_net_proto_binary")
        layers.append(_layer(layer, V1_TYPES.get(layer.type, f"V1 layer type {layer.type}")))
    if not layers:
        raise UserError(f"{path} holds no Caffe layers: not a .caffemodel (or an empty one)")
    return layers


def _layer(layer, kind):
    params = {"Convolution": "convolution_param", "LRN": "lrn_param", "Pooling": "pooling_param"}.get(kind)
    blobs = [blob_array(b, f"blob {i} of layer {layer.name}") for i, b in enumerate(layer.blobs)]
    return CaffeLayer(layer.name, kind, blobs, getattr(layer, params) if params else None)


def read_mean(path):
    """A .binaryproto mean image (Caffe's imagenet_mean.binaryproto: one BlobProto, 1x3xHxW, BGR)
    as float32 (H, W, 3) in RGB order, the per-pixel mean layout of our checkpoints."""
    from alexnet.app.preprocess import Preprocessing

    blob = blob_array(_parse(path, "BlobProto", MAX_MEAN_BYTES, "mean file"), f"mean file {path}")
    if blob.ndim == 4 and blob.shape[0] == 1:
        blob = blob[0]
    if blob.ndim != 3 or blob.shape[0] != 3:
        raise UserError(f"mean file {path} holds an array of shape {blob.shape}, not a 3-channel image")
    mean = np.ascontiguousarray(blob[::-1].transpose(1, 2, 0))        # BGR (3, H, W) -> RGB (H, W, 3)
    Preprocessing.check_mean(mean, f"mean file {path}")
    return mean

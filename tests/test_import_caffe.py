"""`alexnet import` of Caffe's bvlc_alexnet: .caffemodel files written here in both layer formats.

The files are NetParameter messages encoded with app/caffe_format.py's own schema (protobuf's
encoder: the same wire format Caffe writes), holding bvlc_alexnet's layer sequence and shapes with
known random weights. An import must return exactly those arrays after the documented changes
(BGR -> RGB in conv1; an LRN that differs from ours folded into the convolutions around it), and
the imported checkpoint must compute what Caffe's net computes (checked against the same net in
PyTorch, whose LRN has Caffe's alpha convention).
"""
import math

import numpy as np
import pytest

from conftest import max_rel_diff, run_limited
from alexnet.app import caffe_format, checkpoint, weights
from alexnet.app.cli import main
from alexnet.app.import_cli import import_weights
from alexnet.models.alexnet import AlexNet

pytest.importorskip("google.protobuf", reason="the Caffe importer needs protobuf (pip install -e '.[caffe]')")

CLASSES = 10
# bvlc_alexnet's layers: (name, type, V1 type number, blob shapes or None, parameters)
CONV = {"conv1": (96, 3, 11, 4, 0, 1), "conv2": (256, 48, 5, 1, 2, 2), "conv3": (384, 256, 3, 1, 1, 1),
        "conv4": (384, 192, 3, 1, 1, 2), "conv5": (256, 192, 3, 1, 1, 2)}   # out, in/group, k, stride, pad, group
FC = {"fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (CLASSES, 4096)}
V1 = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17, "InnerProduct": 14, "Dropout": 6,
      "SoftmaxWithLoss": 21}
OUR_LRN_IN_CAFFE_TERMS = (5, 5e-4, 0.75, 2.0)    # ours (alpha 1e-4, k 2) with Caffe's alpha * size
BVLC_LRN = (5, 1e-4, 0.75, 1.0)                  # bvlc_alexnet's train_val.prototxt (k: Caffe's default)


def layer_list(lrn, order="norm-pool"):
    """bvlc_alexnet's layers in file order; CaffeNet's order ("pool-norm") for the refusal test."""
    layers = [("data", "Data", {})]
    for i in range(1, 6):
        layers += [(f"conv{i}", "Convolution", {}), (f"relu{i}", "ReLU", {})]
        block = []
        if i <= 2:
            block.append((f"norm{i}", "LRN", {"lrn": lrn}))
        if i in (1, 2, 5):
            block.append((f"pool{i}", "Pooling", {}))
        layers += block if order == "norm-pool" else block[::-1]
    for j in (6, 7, 8):
        layers.append((f"fc{j}", "InnerProduct", {}))
        if j < 8:
            layers += [(f"relu{j}", "ReLU", {}), (f"drop{j}", "Dropout", {})]
    return layers + [("loss", "SoftmaxWithLoss", {})]


def packed_floats(array):
    """A BlobProto's `data` field (5, packed floats) encoded by hand: far faster than protobuf's
    per-element extend for 37M numbers, and the same bytes."""
    raw = np.ascontiguousarray(array, "<f4").tobytes()
    n, length = len(raw), bytearray()
    while True:
        length.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return b"\x2a" + bytes(length) + raw


def write_caffemodel(path, arrays, form="new", lrn=BVLC_LRN, order="norm-pool", legacy_dims=False):
    M = caffe_format.messages()
    net = M["NetParameter"](name="AlexNet")
    for name, kind, extra in layer_list(lrn, order):
        if form == "new":
            layer = net.layer.add(name=name, type=kind)
        else:
            layer = net.layers.add(name=name, type=V1[kind])
        if kind == "Convolution":
            out, _, k, stride, pad, group = CONV[name]
            p = layer.convolution_param
            p.num_output, p.group = out, group
            p.kernel_size.append(k)
            if stride != 1:
                p.stride.append(stride)
            if pad:
                p.pad.append(pad)
        elif kind == "Pooling":
            layer.pooling_param.pool, layer.pooling_param.kernel_size, layer.pooling_param.stride = 0, 3, 2
        elif kind == "LRN":
            size, alpha, beta, k = extra["lrn"]
            p = layer.lrn_param
            p.local_size, p.alpha, p.beta = size, alpha, beta
            if k != 1.0:
                p.k = k
        if name in arrays:
            for key in ("W", "b"):
                a = arrays[name][key]
                blob = layer.blobs.add()
                if legacy_dims:     # old Caffe: 4-d num/channels/height/width, fc as 1x1xOUTxIN
                    dims = (1,) * (4 - a.ndim) + a.shape
                    blob.num, blob.channels, blob.height, blob.width = dims
                else:
                    blob.shape.dim.extend(a.shape)
                blob.MergeFromString(packed_floats(a))
    path.write_bytes(net.SerializeToString())
    return path


@pytest.fixture(scope="module")
def bvlc(tmp_path_factory):
    """bvlc_alexnet-shaped weights (He-scaled so that signals survive eight layers), as Caffe
    stores them (conv1 reads BGR), and the two files: the current format with an LRN equal to ours,
    and the V1 format with legacy 4-d blobs and bvlc_alexnet's own LRN."""
    rng = np.random.default_rng(7)
    arrays = {}
    for name, (out, cin, k, *_) in CONV.items():
        he = np.float32(math.sqrt(2 / (cin * k * k)))
        arrays[name] = {"W": rng.standard_normal((out, cin, k, k), np.float32) * he,
                        "b": rng.standard_normal(out, np.float32) * np.float32(0.1)}
    for name, (out, cin) in FC.items():
        arrays[name] = {"W": rng.standard_normal((out, cin), np.float32) * np.float32(math.sqrt(2 / cin)),
                        "b": rng.standard_normal(out, np.float32) * np.float32(0.1)}
    folder = tmp_path_factory.mktemp("caffe")
    new = write_caffemodel(folder / "ours-lrn.caffemodel", arrays, "new", lrn=OUR_LRN_IN_CAFFE_TERMS)
    v1 = write_caffemodel(folder / "bvlc_alexnet.caffemodel", arrays, "v1", lrn=BVLC_LRN, legacy_dims=True)
    return arrays, new, v1


def test_current_format_imports_exactly_those_arrays(bvlc):
    """An LRN that is ours in Caffe's terms (alpha 5e-4 = 1e-4 * 5, k 2) needs no rescaling: every
    array is the file's, bit for bit, conv1's input channels reversed (BGR -> RGB)."""
    arrays, new, _ = bvlc
    got, meta, imported = import_weights(str(new))
    assert (meta["arch"], meta["num_classes"], meta["input_size"]) == ("alexnet", CLASSES, 227)
    assert meta["imported_from"] == {"format": "caffe", "file": "ours-lrn.caffemodel"}
    np.testing.assert_array_equal(got["model/conv1.W"], arrays["conv1"]["W"][:, ::-1])
    for name in list(CONV)[1:] + list(FC):
        for key in "Wb":
            np.testing.assert_array_equal(got[f"model/{name}.{key}"], arrays[name][key], err_msg=f"{name}.{key}")
    np.testing.assert_array_equal(got["model/conv1.b"], arrays["conv1"]["b"])
    np.testing.assert_allclose(got["data/mean"].ravel(), weights.CAFFE_MEAN_BGR[::-1], rtol=1e-7)
    assert len(imported.notes) == 2                   # the channel flip and the mean: no LRN rescaling


def test_v1_format_with_bvlc_lrn_computes_caffes_function(bvlc, tmp_path, capsys, rng):
    """The V1 file through the command line, with a per-pixel mean image and class names; then the
    checkpoint's network in float64 against bvlc_alexnet in PyTorch on the same photo (BGR, Caffe's
    LRN): the rescaled weights are rounded to float32, so the logits agree to about that."""
    torch = pytest.importorskip("torch")
    from torch_models import bvlc_alexnet

    arrays, _, v1 = bvlc
    mean_bgr = rng.uniform(90, 130, (1, 3, 256, 256)).astype(np.float32)
    mean_file = tmp_path / "imagenet_mean.binaryproto"
    blob = caffe_format.messages()["BlobProto"]()
    blob.num, blob.channels, blob.height, blob.width = mean_bgr.shape
    blob.MergeFromString(packed_floats(mean_bgr))
    mean_file.write_bytes(blob.SerializeToString())
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(CLASSES)) + "\n")
    ckpt = tmp_path / "bvlc.npz"
    assert main(["import", str(v1), "-o", str(ckpt), "--mean", str(mean_file), "--classes", str(names)]) == 0
    out = capsys.readouterr().out
    assert "alexnet, 10 classes, 56,909,194 parameters" in out and "norm1: Caffe's LRN (size 5, alpha 0.0001" in out

    got, meta = checkpoint.load(str(ckpt))
    assert meta["classes"][3] == "class 3"
    np.testing.assert_array_equal(got["data/mean"], mean_bgr[0, ::-1].transpose(1, 2, 0))   # BGR CHW -> RGB HWC
    # the documented rescaling, from the float32 LRN parameters the file holds
    alpha_c, k_c = float(np.float32(BVLC_LRN[1])) / 5, 1.0
    s = math.sqrt(alpha_c * 2.0 / (1e-4 * k_c))
    c = s * (k_c / 2.0) ** 0.75

    def scaled(a, factor):
        return (a.astype(np.float64) * factor).astype(np.float32)

    np.testing.assert_array_equal(got["model/conv1.W"], scaled(arrays["conv1"]["W"][:, ::-1], s))
    np.testing.assert_array_equal(got["model/conv1.b"], scaled(arrays["conv1"]["b"], s))
    np.testing.assert_array_equal(got["model/conv2.W"], scaled(arrays["conv2"]["W"], s / c))    # lrn1 and lrn2
    np.testing.assert_array_equal(got["model/conv2.b"], scaled(arrays["conv2"]["b"], s))
    np.testing.assert_array_equal(got["model/conv3.W"], scaled(arrays["conv3"]["W"], 1 / c))
    np.testing.assert_array_equal(got["model/fc6.W"], arrays["fc6"]["W"])

    # the same photo through both: ours RGB minus the mean image, Caffe's BGR minus its mean image
    pixels = rng.uniform(0, 255, (1, 227, 227, 3))
    crop = slice(14, 14 + 227)                        # the central 227 of the 256x256 mean
    net = AlexNet(CLASSES).astype(np.float64)
    net.load_state_dict(checkpoint.split(got, "model"))
    ours = net.forward((pixels - got["data/mean"][crop, crop]).transpose(0, 3, 1, 2))
    caffe = bvlc_alexnet(CLASSES).double().eval()
    modules = [m for m in caffe if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        for m, name in zip(modules, list(CONV) + list(FC)):
            m.weight.copy_(torch.tensor(arrays[name]["W"]))
            m.bias.copy_(torch.tensor(arrays[name]["b"]))
        bgr = pixels[..., ::-1] - mean_bgr[0].transpose(1, 2, 0)[crop, crop]
        theirs = caffe(torch.tensor(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))).numpy()
    assert max_rel_diff(ours, theirs) < 1e-6                  # measured 4.8e-8


# ---- bad files ---------------------------------------------------------------------------------------
def small_net(path, layers):
    """A NetParameter of (name, type, blob shapes) in the current format."""
    net = caffe_format.messages()["NetParameter"]()
    for name, kind, shapes in layers:
        layer = net.layer.add(name=name, type=kind)
        for shape in shapes:
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.MergeFromString(packed_floats(np.zeros(shape, np.float32)))
    path.write_bytes(net.SerializeToString())
    return path


def error_line(capsys, *argv):
    assert main(["import", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet: error: ")
    return err.strip()


def test_wrong_architectures_give_one_line(bvlc, tmp_path, capsys):
    _, new, _ = bvlc
    out = tmp_path / "x.npz"
    caffenet = tmp_path / "caffenet.caffemodel"
    net = caffe_format.messages()["NetParameter"]()
    for name, kind, _ in layer_list(BVLC_LRN, order="pool-norm"):
        net.layer.add(name=name, type=kind)
    caffenet.write_bytes(net.SerializeToString())
    assert "pools before it normalises (CaffeNet" in error_line(capsys, caffenet, "-o", out)
    resnet = small_net(tmp_path / "resnet.caffemodel", [("conv1", "Convolution", [(64, 3, 7, 7)]),
                                                       ("bn1", "BatchNorm", [(64,), (64,), (1,)])])
    assert "has layers alexnet has no counterpart for: bn1 (BatchNorm)" in error_line(capsys, resnet, "-o", out)
    # bvlc_alexnet's sequence, but one tower (conv2 sees all 96 channels)
    layers = [(name, kind, []) for name, kind, _ in layer_list(BVLC_LRN)]
    shapes = {name: [(o, c, k, k), (o,)] for name, (o, c, k, *_) in CONV.items()}
    shapes["conv2"] = [(256, 96, 5, 5), (256,)]
    shapes.update({name: [shape, shape[:1]] for name, shape in FC.items()})
    one_tower = small_net(tmp_path / "one-tower.caffemodel", [(n, k, shapes.get(n, [])) for n, k, _ in layers])
    line = error_line(capsys, one_tower, "-o", out)
    assert "conv2: blob weights has shape (256, 96, 5, 5), alexnet's conv2.W needs (256, 48, 5, 5)" in line
    assert not out.exists()


def test_truncated_and_foreign_files_give_one_line(bvlc, tmp_path, capsys):
    _, new, _ = bvlc
    cut = tmp_path / "cut.caffemodel"
    with open(new, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    assert "is truncated or not a Caffe NetParameter file" in error_line(capsys, cut)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\x00\x01\x02 certainly not protobuf")
    assert "is truncated or not a Caffe NetParameter file" in error_line(capsys, junk)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert "holds no Caffe layers" in error_line(capsys, empty)
    v0 = caffe_format.messages()["NetParameter"]()
    v0.layers.add().layer = b"\x0a\x05conv1"
    (tmp_path / "v0.caffemodel").write_bytes(v0.SerializeToString())
    assert "Caffe's V0 format" in error_line(capsys, tmp_path / "v0.caffemodel")
    (tmp_path / "mean.binaryproto").write_bytes(b"")
    line = error_line(capsys, new, "--mean", tmp_path / "mean.binaryproto", "-o", tmp_path / "x.npz")
    assert "mean file" in line and "not a 3-channel image" in line


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(tag, body):
    """A length-delimited field: its tag's bytes (field number and wire type 2), length, body."""
    return tag + _varint(len(body)) + body


MILLIONS = 7 << 20
# (file name, its bytes, what `import` says): files of millions of entries, 1 to 3 bytes each,
# that the parser made objects or 8-byte numbers of (22 MB of empty layers: 1.9 GB, 20 s; 14 MB of
# empty blobs in one layer: 3.1 GB, 38 s; 14 MB of packed dims: 540 MB)
FLOODS = [
    ("layers.caffemodel", b"\xa2\x06\x00" * MILLIONS, "holds over 10,000 layers, more than any Caffe network has"),
    ("v1-layers.caffemodel", b"\x12\x00" * MILLIONS, "holds over 10,000 layers"),
    ("blobs.caffemodel", _field(b"\xa2\x06", b"\x3a\x00" * MILLIONS),
     "holds over 100,000 entries (layers, their blobs and settings)"),
    ("bottoms.caffemodel", _field(b"\xa2\x06", b"\x1a\x00" * MILLIONS), "holds over 100,000 entries"),
    # one blob whose shape has 14M dims, packed as Caffe writes them: 8 bytes each once parsed
    ("dims.caffemodel", _field(b"\xa2\x06", _field(b"\x3a", _field(b"\x3a", _field(b"\x0a", b"\x01" * 2 * MILLIONS)))),
     "holds over 100,000 entries"),
    ("names.caffemodel", b"\x0a\x00" * MILLIONS, "holds over 100,000 entries"),
    # a convolution's kernel_size, 14M times, packed
    ("kernel.caffemodel",
     _field(b"\xa2\x06", b"\x12\x0bConvolution" + _field(b"\xd2\x06", _field(b"\x22", b"\x03" * 2 * MILLIONS))),
     "holds over 100,000 entries"),
]


@pytest.mark.parametrize("name,raw,message", FLOODS, ids=[case[0] for case in FLOODS])
def test_millions_of_entries_are_refused_before_they_are_parsed(tmp_path, name, raw, message):
    path = tmp_path / name
    path.write_bytes(raw)
    # 512 MB of address space (the interpreter and NumPy take ~300 of it), a quarter of what the
    # layers took before they were counted, and half the time
    code, err = run_limited(["import", path, "--out", tmp_path / "x.npz"], memory_mb=512, seconds=10)
    assert code == 2 and err.count("\n") == 1 and message in err, (code, err[-500:])
    assert not (tmp_path / "x.npz").exists()


def test_the_layout_caps_are_above_any_caffe_model(tmp_path, capsys):
    # 10,000 layers, or 99,990 blobs in one, are parsed, and refused for what they are
    (tmp_path / "many.caffemodel").write_bytes(b"\xa2\x06\x00" * caffe_format.MAX_LAYERS)
    assert "has layers alexnet has no counterpart for" in error_line(capsys, tmp_path / "many.caffemodel")
    (tmp_path / "blobs.caffemodel").write_bytes(_field(b"\xa2\x06", b"\x3a\x00" * 99_990))
    assert "has layers alexnet has no counterpart for" in error_line(capsys, tmp_path / "blobs.caffemodel")
    # a mean file is a blob: its dims are counted too, and a shape Caffe cannot have is one line
    (tmp_path / "dims.binaryproto").write_bytes(_field(b"\x3a", _field(b"\x0a", b"\x01" * MILLIONS)))
    assert "holds over 100,000 entries" in error_line(capsys, tmp_path / "many.caffemodel", "--mean",
                                                      tmp_path / "dims.binaryproto")
    (tmp_path / "axes.binaryproto").write_bytes(_field(b"\x3a", _field(b"\x0a", b"\x01" * 33)))
    line = error_line(capsys, tmp_path / "many.caffemodel", "--mean", tmp_path / "axes.binaryproto")
    assert "its shape has 33 axes, more than Caffe's 32" in line and len(line) < 200


def test_without_protobuf_the_caffe_import_says_what_to_install(bvlc, monkeypatch, capsys):
    monkeypatch.setattr(caffe_format, "_messages", None)
    monkeypatch.setitem(__import__("sys").modules, "google.protobuf", None)
    assert "needs the protobuf package: pip install protobuf" in error_line(capsys, bvlc[1])


def test_non_finite_weights_and_means_are_not_imported(bvlc, tmp_path, capsys):
    arrays, _, _ = bvlc
    M = caffe_format.messages()
    mean = M["BlobProto"](num=1, channels=3, height=2, width=2)
    mean.data.extend([100.0] * 11 + [float("nan")])
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    net = write_caffemodel(tmp_path / "net.caffemodel", {})          # layers only: the mean is read first
    assert main(["import", str(net), "--mean", str(tmp_path / "mean.binaryproto")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mean file " in err and "its mean has non-finite values" in err
    nan = {name: dict(blobs) for name, blobs in arrays.items()}
    nan["fc7"]["W"] = arrays["fc7"]["W"].copy()
    nan["fc7"]["W"][3, 5] = np.nan
    write_caffemodel(tmp_path / "nan.caffemodel", nan)
    assert main(["import", str(tmp_path / "nan.caffemodel"), "--out", str(tmp_path / "nan.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has non-finite weights (model/fc7.W: 1 of 16777216 NaN/inf)" in err
    assert not (tmp_path / "nan.npz").exists()

"""Files from strangers (docs/weights.md, "Files from strangers"): whatever a small file declares,
loading it takes memory and time in proportion to the file, and the limits are checked before
what they bound is allocated. Each hostile file is made here, byte by byte where no tool would
write it, and given to `alexnet` in a child process with a memory limit (RLIMIT_AS) and a time
limit (conftest.run_limited): a loader that believed the file would run out of one or the other,
which shows as another message or a timeout. Then the non-finite weights every load refuses, the
pickle reader's state that no file can change, and hand-edited checkpoint metadata.
"""
import collections
import importlib.util
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app import torch_format
from alexnet.app.cli import main
from alexnet.app.errors import UserError
from alexnet.app.weights import from_torchvision
from conftest import make_folder, run_limited, save_image, small_argv


# ---- writing torch.save files by hand ------------------------------------------------------------
class Global:
    """A global the pickle names, written as it is (the file need not name anything importable)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self):
        raise AssertionError("never called: only written")


class Call:
    """`fn(*args)` in the pickle (a REDUCE)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class Storage:
    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class _Writer(pickle._Pickler):
    """The pure-Python pickler, writing Global as GLOBAL and Storage as torch's persistent id."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(b"c" + f"{obj.module}\n{obj.name}\n".encode())
        else:
            super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", Global("torch", obj.kind), obj.key, "cpu", obj.numel)
        return None


def dumps(obj):
    import io

    out = io.BytesIO()
    _Writer(out, protocol=2).dump(obj)
    return out.getvalue()


def tensor(storage, size, stride, offset=0):
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size), tuple(stride), False,
                Call(Global("collections", "OrderedDict")))


def torch_zip(path, pickled, storages=()):
    """A torch.save zip archive: data.pkl and each (key, bytes) storage."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        for key, raw in storages:
            z.writestr(f"archive/data/{key}", raw)
    return path


def refused(path, *extra, memory_mb=1024, seconds=20):
    """The one line `alexnet import PATH` ends with, in a limited child process."""
    code, err = run_limited(["import", path, "--out", f"{path}.npz", *extra], memory_mb, seconds)
    assert code == 2 and err.count("\n") == 1 and err.startswith("alexnet: error: "), (code, err)
    assert not os.path.exists(f"{path}.npz")
    return err


# ---- 1. bounded loading -------------------------------------------------------------------------
def test_shared_and_nested_pickles_take_no_time_and_no_memory(tmp_path):
    # lists holding one list twice, 40 levels: 2^40 lists for a reader that walks every reference
    shared = []
    for _ in range(40):
        shared = [shared, shared]
    assert "holds no state dict of tensors" in refused(torch_zip(tmp_path / "lists.pth", pickle.dumps(shared, 2)))
    tree = {}
    for _ in range(40):
        tree = {"a": tree, "b": tree}
    assert "holds no state dict of tensors" in refused(torch_zip(tmp_path / "dicts.pth", pickle.dumps(tree, 2)))
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(UserError, match="nests containers over 64 deep"):
        torch_format.load(str(torch_zip(tmp_path / "deep.pth", pickle.dumps(deep, 2))))
    loop = []
    loop.append(loop)
    with pytest.raises(UserError, match="contains itself"):
        torch_format.load(str(torch_zip(tmp_path / "loop.pth", pickle.dumps(loop, 2))))


def test_a_memo_index_or_an_opcode_count_beyond_reason_is_refused_before_unpickling(tmp_path):
    # LONG_BINPUT 2^31 - 1: the unpickler would size its memo table to 2^31 entries (16 GB)
    huge_memo = b"\x80\x02N" + b"r" + struct.pack("<I", 2**31 - 1) + b"."
    assert "memo index 2,147,483,647" in refused(torch_zip(tmp_path / "memo.pth", huge_memo))
    many = b"\x80\x02" + b"N0" * (torch_format.MAX_PICKLE_OPS // 2 + 1) + b"N."
    with pytest.raises(UserError, match="opcodes, far more than a state dict needs"):
        torch_format.load(str(torch_zip(tmp_path / "many.pth", many)))


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
    # one stored float seen as 20000 x 20000 through strides of 0: 1.6 GB when made an array
    state = {"w": tensor(Storage("0", 1), (20000, 20000), (0, 0))}
    path = torch_zip(tmp_path / "stride0.pth", dumps(state), [("0", b"\0\0\x80\x3f")])
    assert "has 400,000,000 elements, more than its storage's 1" in refused(path)


def test_declared_byte_lengths_are_checked_against_the_file(tmp_path):
    # the legacy layout: an element count of 2^40 in front of 4 bytes
    numel = 2**40
    header = b"".join(pickle.dumps(v, 2) for v in (torch_format.LEGACY_MAGIC, torch_format.LEGACY_PROTOCOL, {}))
    body = dumps({"w": tensor(Storage("0", numel), (numel,), (1,))}) + pickle.dumps(["0"], 2)
    path = tmp_path / "legacy.pth"
    path.write_bytes(header + body + struct.pack("<q", numel) + b"\0" * 4)
    assert "ends inside storage 0 (4,398,046,511,104 bytes declared, 4 left)" in refused(path)
    # a pickle's own byte string of 2^62 bytes (BINBYTES8), in both layouts
    long_bytes = b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc"
    assert "truncated or not a PyTorch state dict" in refused(torch_zip(tmp_path / "bytes.pth", long_bytes))
    (tmp_path / "bytes-legacy.pth").write_bytes(header + long_bytes)
    assert "truncated or not a PyTorch state dict" in refused(tmp_path / "bytes-legacy.pth")


def test_views_of_one_storage_are_copied_at_most_twice_its_size(tmp_path):
    # one 4 MB storage seen by 2,000 tensors of all its numbers but the last, each of them a copy:
    # 8 GB of arrays from a 4 MB file (before: out of memory under the limit)
    n = 1 << 20
    one = Storage("0", n)
    views = [tensor(one, (n - 1,), (1,)) for _ in range(2000)]
    path = torch_zip(tmp_path / "views.pth", dumps(views), [("0", b"\0" * (4 * n))])
    assert os.path.getsize(path) < 5 << 20
    line = refused(path)
    assert "its tensors view their storages over and over: as arrays they would take over 25,165,824 bytes, " \
           "2 times its storages' 4,194,304 plus 16 MiB" in line, line
    # up to the bound they load: 6 transposed copies of the whole storage are its 2 times plus 16 MiB
    # (the whole storage in order is no copy); a seventh is refused
    six = [tensor(one, (1024, 1024), (1, 1024)) for _ in range(6)] + [tensor(one, (n,), (1,))]
    path = torch_zip(tmp_path / "six.pth", dumps(six), [("0", np.arange(n, dtype="<f4").tobytes())])
    read = torch_format.load(str(path))
    assert all(a.shape == (1024, 1024) and a[2, 1] == 1026 for a in read[:6]) and read[6][1026] == 1026
    seven = [tensor(one, (1024, 1024), (1, 1024)) for _ in range(7)]
    with pytest.raises(UserError, match="view their storages over and over"):
        torch_format.load(str(torch_zip(tmp_path / "seven.pth", dumps(seven), [("0", b"\0" * (4 * n))])))


def test_tensors_that_share_a_storage_on_purpose_load(tmp_path):
    """Halves of one flat parameter buffer, one of them also saved transposed (a tied weight), and
    a whole storage: what real state dicts share stays under the copy bound. Large enough (the
    three copies, 72 MiB, against a 48 MiB buffer) that a bound of one buffer's bytes plus the
    slack would refuse it."""
    rows, cols = 3, 1 << 21                                   # 24 MiB per half
    half = rows * cols
    flat, whole = Storage("0", 2 * half), Storage("1", 4)
    state = collections.OrderedDict(a=tensor(flat, (rows, cols), (cols, 1)),
                                    b=tensor(flat, (cols, rows), (rows, 1), offset=half),
                                    bt=tensor(flat, (rows, cols), (1, rows), offset=half),
                                    c=tensor(whole, (2, 2), (2, 1)))
    values = np.arange(2 * half, dtype="<f4")
    path = torch_zip(tmp_path / "shared.pth", dumps(state), [("0", values.tobytes()),
                                                             ("1", np.ones(4, "<f4").tobytes())])
    assert 3 * half * 4 > 2 * half * 4 + torch_format.COPY_SLACK        # more than one buffer's bytes + slack
    read = torch_format.load(str(path))
    np.testing.assert_array_equal(read["a"], values[:half].reshape(rows, cols))
    np.testing.assert_array_equal(read["b"], values[half:].reshape(cols, rows))
    np.testing.assert_array_equal(read["bt"], read["b"].T)
    np.testing.assert_array_equal(read["c"], np.ones((2, 2)))


@pytest.mark.parametrize("count", [100_000, 10**9])
def test_the_class_count_is_checked_before_a_model_is_built(tmp_path, count):
    """torchvision's 16 keys, each one float, but fc8 declared (count, 0): a few hundred bytes
    that would build a count-class model (3.4 GB at 100,000)."""
    from alexnet.app.weights import TORCH_PARAMS, TORCHVISION_LAYERS

    one = Storage("1", 1)
    state = {f"{tv}.{TORCH_PARAMS[p]}": tensor(one, (1,), (1,)) for tv in TORCHVISION_LAYERS.values() for p in "Wb"}
    state["classifier.6.weight"] = tensor(Storage("0", 0), (count, 0), (0, 1))
    path = torch_zip(tmp_path / "fc8.pth", dumps(state), [("0", b""), ("1", b"\0" * 4)])
    assert os.path.getsize(path) < 4096
    line = refused(path)
    assert f"classifier.6.weight has shape ({count}, 0), alexnet-tv's fc8.W needs (classes >= 2, 4096)" in line


def test_text_and_mean_inputs_are_read_with_a_cap(tmp_path):
    pytest.importorskip("google.protobuf", reason="the Caffe importer needs protobuf")
    small = torch_zip(tmp_path / "small.pth", pickle.dumps({}, 2))
    assert "class names file /dev/zero is a character device, not a regular file" in \
        refused(small, "--classes", "/dev/zero", seconds=10)
    sparse = tmp_path / "names.txt"                 # 1 GB of nothing, on disk in no time
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)
    assert "is 1,073,741,824 bytes, more than the 16,777,216 such a file can need" in \
        refused(small, "--classes", sparse, memory_mb=600, seconds=10)
    net = tmp_path / "net.caffemodel"
    net.write_bytes(b"")
    assert "mean file /dev/zero is a character device" in \
        refused(net, "--format", "caffe", "--mean", "/dev/zero", seconds=10)
    assert "mean file " in refused(net, "--format", "caffe", "--mean", sparse, memory_mb=600, seconds=10)


def _npz(path, members):
    """An .npz archive of raw members {name: bytes} (what np.savez writes, or a forgery of it)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return path


def _npy(array):
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_checkpoint_arrays_and_class_counts_are_checked_before_allocating(tmp_path):
    image = tmp_path / "x.jpg"
    save_image(str(image), np.zeros((80, 80, 3), np.uint8))
    meta = {"format": ckpt.FORMAT, "arch": "alexnet-small", "num_classes": 3, "classes": ["a", "b", "c"]}
    meta_member = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    # a .npy header declaring 10^10 floats in front of 8 bytes
    import io
    from numpy.lib import format as npy
    head = io.BytesIO()
    npy.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
    forged = _npz(tmp_path / "forged.npz", {"__meta__": meta_member, "model/conv1.W": head.getvalue() + b"\0" * 8})
    code, err = run_limited(["predict", "--checkpoint", forged, image])
    assert code == 2 and "declares (100000, 100000) float32, 40,000,000,000 bytes, and holds 8" in err, err
    # a class count of 100,000 with no weights to match: the model (1.6 GB of fc8) is never built
    names = [str(i) for i in range(100_000)]
    many = dict(meta, arch="alexnet", num_classes=len(names), classes=names)
    arrays = {"model/fc8.W": np.zeros((1, 1), np.float32), "data/mean": np.zeros((1, 1, 3), np.float32)}
    ckpt.save(str(tmp_path / "many.npz"), arrays, many)
    code, err = run_limited(["predict", "--checkpoint", tmp_path / "many.npz", image], memory_mb=700)
    assert code == 2 and "does not match alexnet: missing ['conv1.W', 'conv1.b', 'conv2.W']" in err, err


def test_running_out_of_memory_is_one_line():
    """What no check can foresee (here a model of 10^8 classes asked for outright) ends in one line."""
    code, err = run_limited(["summary", "--classes", "100000000"], memory_mb=600)
    assert code == 2 and err == "alexnet: error: out of memory: Unable to allocate 1.49 TiB for an array with " \
        "shape (100000000, 4096) and data type float32\n", err


def test_running_out_of_memory_with_the_arrays_still_held_is_one_line(tmp_path):
    """A file within every bound but larger than the memory allowed: one flat 96 MB storage whose
    64 KB slices are each saved as they are and transposed (192 MB of copies, twice the storage),
    under 256 MB. The arrays made so far are still held when memory runs out (by the traceback's
    frames), so the report must import nothing: an import fails then too, and the line became a
    49-line traceback with exit 1 (stderr a pipe, as in run_limited)."""
    n, side = 96 << 18, 128
    flat = Storage("0", n)
    state = collections.OrderedDict()
    for i in range(n // side**2):
        state[f"w{i}"] = tensor(flat, (side, side), (side, 1), offset=i * side**2)
        state[f"w{i}.t"] = tensor(flat, (side, side), (1, side), offset=i * side**2)
    path = torch_zip(tmp_path / "flat.pth", dumps(state), [("0", bytes(4 * n))])
    code, err = run_limited(["import", path, "--out", tmp_path / "flat.npz"], memory_mb=256, seconds=60)
    assert code == 2 and err.count("\n") == 1, (code, err[-2000:])
    assert err.startswith("alexnet: error: out of memory: Unable to allocate 64.0 KiB"), err
    assert not os.path.exists(tmp_path / "flat.npz")


# ---- 2. non-finite weights and means ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real checkpoint (alexnet-small, 3 classes, one short epoch) and an image to predict."""
    base = tmp_path_factory.mktemp("trained")
    data = make_folder(base / "data", n_train=6, n_val=2, size=40)
    assert main(["train", "--data", data, "--epochs", "1", "--out", str(base / "run"),
                 *small_argv(workers=0)]) == 0
    return str(base / "run" / "checkpoints" / "best.npz"), os.path.join(data, "val", "a", "0.jpg")


# the trained model's flags, the checkpoint deciding its init and input scale
FINE_TUNE = small_argv(init=None, input_scale=None, workers=0)


def rewrite(src, dst, arrays=None, meta=None):
    """A copy of checkpoint `src` with some arrays replaced and its metadata record replaced."""
    old_arrays, old_meta = ckpt.load(src)
    members = {**old_arrays, **(arrays or {})}
    members[ckpt.META_KEY] = np.frombuffer(json.dumps(old_meta if meta is None else meta).encode(), np.uint8)
    np.savez(dst, **members)
    return str(dst)


def one_error_line(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def test_non_finite_weights_and_means_are_refused_by_every_load(trained, tmp_path, capsys):
    path, image = trained
    weights = ckpt.split(ckpt.load(path)[0], "model")
    nan_w = weights["conv2.W"].copy()
    nan_w[0, 0, 0, 0] = np.nan
    bad_w = rewrite(path, tmp_path / "nan-w.npz", {"model/conv2.W": nan_w})
    bad_mean = rewrite(path, tmp_path / "nan-mean.npz", {"data/mean": np.full((1, 1, 3), np.inf, np.float32)})
    commands = [["predict", "--checkpoint", bad_w, image],
                ["saliency", "--checkpoint", bad_w, "--out", str(tmp_path / "s"), image]]
    if importlib.util.find_spec("onnx"):                  # export needs the onnx package (.[onnx])
        commands.append(["export", "--onnx", str(tmp_path / "m.onnx"), "--checkpoint", bad_w])
    for argv in commands:
        assert "has non-finite weights (model/conv2.W: 1 of" in one_error_line(capsys, argv)
    assert "its mean has non-finite values" in one_error_line(capsys, ["predict", "--checkpoint", bad_mean, image])
    # fine-tuning from them
    data = os.path.dirname(os.path.dirname(os.path.dirname(image)))
    for start, message in ((bad_w, "conv2.W has non-finite values"), (bad_mean, "its mean has non-finite")):
        line = one_error_line(capsys, ["train", "--data", data, "--init-from", start, "--epochs", "1",
                                       "--out", str(tmp_path / "ft"), *FINE_TUNE])
        assert message in line
    assert not os.path.exists(tmp_path / "ft")


def test_finite_weights_that_overflow_are_said_so_not_printed_as_nan(trained, tmp_path, capsys):
    """3e38 is finite, so every load takes it; the logits it makes are not: predict and eval say
    so in one line instead of printing nan%."""
    path, image = trained
    w = ckpt.split(ckpt.load(path)[0], "model")["fc6.W"].copy()   # alexnet-small's first dense layer
    w[0, :] = 3e38
    huge = rewrite(path, tmp_path / "huge.npz", {"model/fc6.W": w})
    data = os.path.dirname(os.path.dirname(os.path.dirname(image)))
    arrays, meta = ckpt.load(path)
    scaled = rewrite(path, tmp_path / "scaled.npz", meta={**meta, "input_scale": 1e37})
    for argv, culprit in ((["predict", "--checkpoint", huge, image], "largest |weight| 3e+38 in fc6.W"),
                          (["eval", "--checkpoint", huge, "--data", data], "largest |weight| 3e+38 in fc6.W"),
                          (["predict", "--checkpoint", scaled, image], "its input scale is 1e+37")):
        line = one_error_line(capsys, argv)
        assert "the model's outputs are not finite" in line and culprit in line, line
    # from moderate weights, mean and scale a NaN is a bug of ours: raised as one, not the user's error
    from alexnet.app.checkpoint import load_model
    from alexnet.app.preprocess import check_finite_outputs
    model, _, prep = load_model(path)
    with pytest.raises(RuntimeError, match="all moderate"):
        check_finite_outputs(np.array([[0.5, np.nan]]), model, prep)
    check_finite_outputs(np.array([[0.5, 0.25]]), model, prep)


# ---- 3. the reader's state is its own ---------------------------------------------------------------
def test_a_file_cannot_change_how_the_next_file_is_read(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD (None, {"name": "IntStorage"}) on it: before, the one
    # shared FloatStorage of the allowlist became IntStorage for the rest of the process
    evil = b"\x80\x02ctorch\nFloatStorage\nN}X\x04\x00\x00\x00nameX\x0a\x00\x00\x00IntStorages\x86b."
    with pytest.raises(UserError, match="holds no state dict of tensors"):
        from_torchvision(torch_format.load(str(torch_zip(tmp_path / "evil.pth", evil))))
    values = np.array([0.5, -2.0, 3.25], "<f4")
    good = torch_zip(tmp_path / "good.pth", dumps(collections.OrderedDict(w=tensor(Storage("0", 3), (3,), (1,)))),
                     [("0", values.tobytes())])
    read = torch_format.load(str(good))["w"]
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values)


# ---- 4. hand-edited checkpoint metadata ----------------------------------------------------------------
def test_hand_edited_metadata_is_one_line_and_never_used(trained, tmp_path, capsys):
    path, image = trained
    meta = ckpt.load(path)[1]
    cases = [([1, 2, 3], "corrupt metadata (a JSON list, not an object)"),
             (dict(meta, model_options="lrn"), "metadata's model_options is \"lrn\", not an object"),
             (dict(meta, model_options=None), "metadata's model_options is null"),
             (dict(meta, model_options={"lrn": "no"}), "metadata's model_options is"),
             (dict(meta, dropout="0.5"), "metadata's dropout is \"0.5\", not a probability"),
             ({k: v for k, v in meta.items() if k != "classes"}, "metadata's classes is null, not a list of 3"),
             (dict(meta, classes=["a", "b"]), "its metadata names 2 classes, its num_classes is 3"),
             (dict(meta, classes=["a", "b", "c", "d"]), "its metadata names 4 classes, its num_classes is 3"),
             (dict(meta, num_classes=10**9), "names 3 classes, its num_classes is 1000000000"),
             (dict(meta, input_scale="1"), "its input_scale '1' is not a finite number")]
    for i, (edited, message) in enumerate(cases):
        bad = rewrite(path, tmp_path / f"edited{i}.npz", meta=edited)
        line = one_error_line(capsys, ["predict", "--checkpoint", bad, image])
        assert message in line, (edited if not isinstance(edited, dict) else i, line)
    # and where a run continues or starts from one
    (tmp_path / "resume" / "checkpoints").mkdir(parents=True)
    for config, message in (({**meta["config"], "dropout": "0.5"}, "--dropout must be a number, got '0.5'"),
                            ({**meta["config"], "seed": [2]}, "--seed must be an integer, got [2]"),
                            ("lots", "holds no training state to resume from")):
        edited = rewrite(path, tmp_path / "resume" / "checkpoints" / f"ckpt-{meta['step']:08d}.npz", meta=dict(meta, config=config))
        line = one_error_line(capsys, ["train", "--resume", edited, "--epochs", "3", "--no-progress"])
        assert message in line, line
    bad = rewrite(path, tmp_path / "no-classes.npz", meta={k: v for k, v in meta.items() if k != "classes"})
    data = os.path.dirname(os.path.dirname(os.path.dirname(image)))
    line = one_error_line(capsys, ["train", "--data", data, "--init-from", bad, "--epochs", "1",
                                   "--out", str(tmp_path / "ft"), *FINE_TUNE])
    assert "metadata's classes is null" in line

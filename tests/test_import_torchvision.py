"""`alexnet import` of torchvision's AlexNet: files written by the real torch.save, read without it.

The reader (app/torch_format.py) must give back exactly what torch.save stored, in both layouts,
refuse everything a state dict never holds (and run none of it), and turn broken files into one
clear line. The imported checkpoint must compute torchvision's function on torchvision's inputs.
"""
import collections
import copy
import os
import pickle
import zipfile

import numpy as np
import pytest

from conftest import max_rel_diff
from alexnet.app import checkpoint, torch_format, weights
from alexnet.app.cli import main
from alexnet.app.errors import UserError
from alexnet.app.import_cli import import_weights
from alexnet.models.torchvision import AlexNetTV

MEAN, STD = np.array(weights.TORCHVISION_MEAN), np.array(weights.TORCHVISION_STD)


@pytest.fixture(scope="module")
def torch():
    """PyTorch writes the test files (the reader itself never needs it); the refusal tests below
    run without it."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tv(torch, tmp_path_factory):
    """torchvision's architecture with random weights (10 classes), saved by torch.save in float64
    (for exact comparisons) and in float32 (what torchvision publishes)."""
    from torch_models import TorchvisionAlexNet

    torch.manual_seed(0)
    model = TorchvisionAlexNet(10).double().eval()
    folder = tmp_path_factory.mktemp("tv")
    f64, f32 = folder / "tv64.pth", folder / "tv32.pth"
    torch.save(model.state_dict(), f64)
    torch.save({k: v.float() for k, v in model.state_dict().items()}, f32)
    return model, f64, f32


def torchvision_input(pixels, mean=MEAN):
    """torchvision's preprocessing of RGB pixels (N, H, W, 3) in 0..255: [0, 1], minus mean, over std."""
    import torch

    return torch.tensor(((pixels / 255.0 - mean) / STD).transpose(0, 3, 1, 2))


def our_input(pixels, arrays, meta):
    """Our pipeline's: pixels minus the checkpoint's data/mean, times its input_scale (app/data.py)."""
    return ((pixels - arrays["data/mean"]) * meta["input_scale"]).transpose(0, 3, 1, 2)


def test_import_computes_torchvisions_function(torch, tv, rng):
    """Float64 throughout: the normalisation folded into conv1 is exact, so the logits agree to
    rounding. The checkpoint's mean is float32 (255 * 0.485 = 123.675 is not a float32 number), so
    torchvision's side gets that same mean: the comparison is of the weights, on equal inputs."""
    model, f64, _ = tv
    arrays, meta, imported = import_weights(str(f64))
    assert (meta["arch"], meta["num_classes"], meta["input_size"], meta["resize_size"]) == ("alexnet-tv", 10, 224, 256)
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_scale"] == 1.0
    np.testing.assert_allclose(arrays["data/mean"].ravel(), 255 * MEAN, rtol=1e-6)
    assert arrays["model/fc6.W"].dtype == np.float64                      # a float64 source stays float64
    net = AlexNetTV(10).astype(np.float64)
    net.load_state_dict(checkpoint.split(arrays, "model"))
    pixels = rng.uniform(0, 255, (2, 224, 224, 3))
    ours = net.forward(our_input(pixels, arrays, meta))
    with torch.no_grad():
        theirs = model(torchvision_input(pixels, arrays["data/mean"].ravel().astype(np.float64) / 255)).numpy()
    assert max_rel_diff(ours, theirs) < 1e-10
    # every layer but conv1 holds torchvision's numbers unchanged; conv1 is theirs over 255 std
    state = model.state_dict()
    for ours_name, tv_name in weights.TORCHVISION_LAYERS.items():
        np.testing.assert_array_equal(arrays[f"model/{ours_name}.b"], state[f"{tv_name}.bias"].numpy())
        if ours_name != "conv1":
            np.testing.assert_array_equal(arrays[f"model/{ours_name}.W"], state[f"{tv_name}.weight"].numpy())
    np.testing.assert_allclose(arrays["model/conv1.W"] * (255 * STD)[None, :, None, None],
                               state["features.0.weight"].numpy(), rtol=1e-13)


def test_cli_import_then_predict_gives_torchvisions_top_class(torch, tv, tmp_path, capsys):
    """The float32 file through `alexnet import`, then `alexnet predict` on a photo: the same top
    class and probability as torchvision's model on torchvision's preprocessing of the same crop."""
    from PIL import Image

    from alexnet.app.data import center_crop_batch, decode_image

    model, _, f32 = tv
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing {i}\n" for i in range(10)))
    ckpt = tmp_path / "tv.npz"
    assert main(["import", str(f32), "--out", str(ckpt), "--classes", str(names)]) == 0
    out = capsys.readouterr().out
    assert "imported torchvision weights" in out and "alexnet-tv, 10 classes, 57,044,810 parameters" in out
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", "--checkpoint", str(ckpt), "--top", "1", str(photo)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    crop = center_crop_batch(decode_image(str(photo), 256)[None], 224, np.zeros((1, 1, 3), np.float32))
    with torch.no_grad():
        logits = copy.deepcopy(model).float()(torchvision_input(crop.transpose(0, 2, 3, 1).astype(np.float64)).float())
    probs = torch.softmax(logits.double(), 1)[0].numpy()
    top = int(probs.argmax())
    assert line.split("%")[1].strip() == f"thing {top}"
    assert float(line.split("%")[0]) == pytest.approx(100 * probs[top], abs=0.01)


def test_imagenet_class_names_ship_with_the_package():
    names = weights.class_names(1000)
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    assert names[207] == "golden retriever" and names[281] == "tabby" and names[999] == "toilet tissue"
    assert weights.CLASSES_FILE.is_file()


def test_both_torch_save_layouts_read_back_exactly(torch, tmp_path):
    """Every element type, a transposed (non-contiguous) tensor, a view into another tensor's
    storage, a scalar and an empty tensor; zip and legacy layouts."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(24.0).reshape(4, 6).t()
    state = collections.OrderedDict(
        w=torch.randn(3, 5, generator=g), t=t, view=t[1:, 2:], d=torch.randn(2, 2, generator=g).double(),
        h=torch.randn(4, generator=g).half(), bf=torch.randn(4, generator=g).bfloat16(), i=torch.arange(5),
        i32=torch.arange(3, dtype=torch.int32), u8=torch.arange(4, dtype=torch.uint8), flag=torch.tensor([True, False]),
        scalar=torch.tensor(3.5), empty=torch.zeros(0, 3))
    for legacy in (False, True):
        path = tmp_path / f"state-{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        got = torch_format.load(str(path))
        assert isinstance(got, collections.OrderedDict) and list(got) == list(state)
        for key, value in state.items():
            want = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
            np.testing.assert_array_equal(got[key], want, err_msg=key)


# ---- bad files ---------------------------------------------------------------------------------------
class Boom:
    """A pickle payload that runs a shell command when loaded with pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def error_line(capsys, *argv):
    assert main(["import", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet: error: ")
    return err.strip()


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(w=Boom(marker)), protocol=2)
    # the zip layout, with the payload as its data.pkl
    evil_zip = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil_zip, "w") as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/version", "3\n")
    line = error_line(capsys, evil_zip, "--out", tmp_path / "x.npz")
    assert "refusing to load" in line and ("posix.system" in line or "os.system" in line)
    # the legacy layout: valid header pickles, then the payload
    evil_legacy = tmp_path / "evil-legacy.pth"
    header = b"".join(pickle.dumps(v, protocol=2)
                      for v in (torch_format.LEGACY_MAGIC, torch_format.LEGACY_PROTOCOL, {}))
    evil_legacy.write_bytes(header + payload)
    assert "refusing to load" in error_line(capsys, evil_legacy, "--out", tmp_path / "x.npz")
    # not even the first pickle of the legacy layout is trusted
    evil_legacy.write_bytes(payload)
    assert "refusing to load" in error_line(capsys, evil_legacy, "--out", tmp_path / "x.npz")
    assert not marker.exists()
    assert not (tmp_path / "x.npz").exists()


def _tensor_pickle(offset, size, numel):
    """A hand-written protocol-2 pickle of {"w": tensor} whose tensor claims `size` elements from
    `offset` of a float storage of `numel` elements (what _rebuild_tensor_v2 receives)."""
    def text(s):
        return b"X" + len(s).to_bytes(4, "little") + s.encode()
    return (b"\x80\x02" + b"ccollections\nOrderedDict\n)R(" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
            + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"J" + numel.to_bytes(4, "little")
            + b"tQJ" + offset.to_bytes(4, "little") + b"J" + size.to_bytes(4, "little") + b"\x85K\x01\x85\x89"
            + b"ccollections\nOrderedDict\n)RtRu.")


def test_tensors_must_lie_inside_their_storage(tmp_path, capsys):
    def archive(name, offset, size, numel, stored):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a/data.pkl", _tensor_pickle(offset, size, numel))
            z.writestr("a/data/0", np.arange(stored, dtype="<f4").tobytes())
        return path

    np.testing.assert_array_equal(torch_format.load(str(archive("ok.pth", 2, 3, 5, 5)))["w"], [2, 3, 4])
    line = error_line(capsys, archive("past.pth", 3, 4, 5, 5), "--out", tmp_path / "x.npz")
    assert "reaches past the end of its storage" in line
    line = error_line(capsys, archive("short.pth", 0, 5, 5, 4), "--out", tmp_path / "x.npz")
    assert "storage 0 holds 16 bytes, its tensor needs 20" in line


def test_truncated_and_foreign_files_give_one_line(torch, tmp_path, capsys):
    from torch_models import TorchvisionAlexNet

    small = tmp_path / "small.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), small)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(small.read_bytes()[:300])
    assert "truncated or not a PyTorch state dict" in error_line(capsys, cut, "--format", "torchvision")
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), legacy, _use_new_zipfile_serialization=False)
    cut.write_bytes(legacy.read_bytes()[:-5])
    assert "ends inside storage" in error_line(capsys, cut)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    assert "is not a PyTorch file" in error_line(capsys, text, "--format", "torchvision")
    # a real state dict of another network
    line = error_line(capsys, small)
    assert "not torchvision's AlexNet: missing ['classifier.1.bias'" in line and "unexpected ['bias', 'weight']" in line
    # torchvision's keys with a wrong shape
    keys = list(TorchvisionAlexNet(10).state_dict())
    wrong = {k: torch.zeros(10, 4096) if k == "classifier.6.weight" else torch.zeros(1) for k in keys}
    torch.save(wrong, tmp_path / "wrong.pth")
    line = error_line(capsys, tmp_path / "wrong.pth")
    assert "features.0.weight has shape (1,), alexnet-tv's conv1.W needs (64, 3, 11, 11)" in line
    # torchvision's names carry the start of the file's SHA-256, as torch.hub checks it
    damaged = tmp_path / "alexnet-owt-deadbeef.pth"
    damaged.write_bytes(small.read_bytes())
    assert "is damaged: its SHA-256 starts with" in error_line(capsys, damaged)
    assert "not found" in error_line(capsys, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="--mean is for Caffe models"):
        import_weights(str(small), mean_path="mean.binaryproto")


def test_pytorchs_tar_layout_is_named_as_such(tmp_path, capsys):
    """torch.save of PyTorch < 0.1.10 wrote a tar archive (sys_info, pickle, tensors, storages)."""
    import io
    import tarfile

    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        for name in ("sys_info", "pickle", "tensors", "storages"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    line = error_line(capsys, path, "--out", tmp_path / "x.npz")
    assert "is a tar archive: PyTorch's tar layout of PyTorch < 0.1.10 is not read here" in line


def test_non_finite_weights_are_not_imported(torch, tv, tmp_path, capsys):
    model, _, _ = tv
    state = {k: v.float() for k, v in model.state_dict().items()}
    state["features.3.weight"][1, 2, 0, 0] = float("nan")
    state["classifier.6.bias"][4] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    line = error_line(capsys, tmp_path / "nan.pth", "--out", tmp_path / "nan.npz")
    assert "has non-finite weights (model/conv2.W: 1 of 307200 NaN/inf, model/fc8.b: 1 of 10 NaN/inf)" in line
    assert not (tmp_path / "nan.npz").exists()

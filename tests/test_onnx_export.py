"""`alexnet export --onnx`: the exported graphs, run in ONNX Runtime, compute our forward pass.

All three architectures (float32, relative error max|ours - ort| / max|ours| < 1e-5), the paper's
dropout variant and a non-trivial adaptive pool, the checker, the metadata, and the command.
"""
import json

import numpy as np
import pytest

from conftest import max_rel_diff
from alexnet.app import checkpoint
from alexnet.app.cli import main
from alexnet.app.onnx_export import IR_VERSION, OPSET, to_onnx
from alexnet.app.preprocess import Preprocessing
from alexnet.layers import AdaptiveAvgPool2d, Conv2d, Dense, Flatten, ReLU
from alexnet.models.network import Network
from alexnet.models.registry import build_model

onnx = pytest.importorskip("onnx", reason="the ONNX export needs onnx (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="running the export needs onnxruntime (pip install -e '.[onnx]')")


def run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits", "probabilities"], {"image": x})


def check_against_ours(model, rng, meta=None, batch=2):
    S = model.input_size
    x = rng.standard_normal((batch, 3, S, S)).astype(np.float32) * 30
    prep = Preprocessing(np.zeros((1, 1, 3), np.float32), 1.0, model.resize_size, model.input_size)
    proto = to_onnx(model, meta or {}, prep)
    logits, probs = run_onnx(proto, x)
    ours = model.forward(x)
    err = max_rel_diff(logits, ours)
    assert err < 1e-5
    e = np.exp(ours.astype(np.float64) - ours.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    return proto, err


@pytest.mark.parametrize("arch", ["alexnet", "alexnet-small", "alexnet-tv"])
def test_exported_architectures_match_our_forward_in_onnx_runtime(arch, rng):
    # he init: activations keep their scale through the layers, so the logits are far from zero
    model = build_model(arch, 10, init="he", seed=3)
    proto, _ = check_against_ours(model, rng)          # to_onnx has run onnx.checker on it
    assert proto.ir_version == IR_VERSION and proto.opset_import[0].version == OPSET
    ops = [n.op_type for n in proto.graph.node]
    if arch == "alexnet-tv":
        assert "LRN" not in ops and "MatMul" not in ops      # at 224 the adaptive pool is the identity
    else:
        conv2 = [n for n in proto.graph.node if n.op_type == "Conv"][1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv2.attribute}
        assert ops.count("LRN") == 2 and attrs["group"] == 2
    assert ops[-2:] == ["Identity", "Softmax"] and "Mul" not in ops          # inverted dropout: nothing


def test_paper_dropout_and_an_uneven_adaptive_pool(rng):
    """The paper's dropout variant scales by 1 - p at test time (a Mul); a 7x5 -> 3x2 adaptive pool
    has overlapping bins, which AveragePool cannot express: two MatMuls with its pooling matrices."""
    small = build_model("alexnet-small", 7, init="he", seed=1, dropout=0.4, dropout_variant="paper")
    proto, _ = check_against_ours(small, rng)
    assert [n.op_type for n in proto.graph.node].count("Mul") == 2
    net = Network([Conv2d(3, 4, 3, padding=1), ReLU(), AdaptiveAvgPool2d((3, 2)), Flatten(), Dense(24, 5)],
                  ["conv1", "relu1", "avgpool", "flatten", "fc"], arch="tiny", num_classes=5, input_size=7,
                  resize_size=8)
    for layer in (net["conv1"], net["fc"]):
        for key, p in layer.params.items():
            layer.params[key] = rng.standard_normal(p.shape).astype(np.float32)
    proto, _ = check_against_ours(net, rng, meta={"classes": list("abcde")})
    assert [n.op_type for n in proto.graph.node].count("MatMul") == 2


def test_cli_export_writes_a_checked_model_with_its_normalisation(tmp_path, capsys, rng):
    model = build_model("alexnet-small", 3, init="he", seed=2)
    mean = np.array([[[120.0, 110.0, 100.0]]], np.float32)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays["data/mean"] = mean
    ckpt = tmp_path / "small.npz"
    checkpoint.save(str(ckpt), arrays, {"arch": "alexnet-small", "num_classes": 3, "classes": ["cat", "dog", "owl"],
                                        "input_size": 64, "resize_size": 73, "input_scale": 0.015625})
    out = tmp_path / "small.onnx"
    assert main(["export", "--onnx", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "wrote" in capsys.readouterr().out
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ["cat", "dog", "owl"] and props["arch"] == "alexnet-small"
    assert json.loads(props["mean_rgb"]) == [120.0, 110.0, 100.0] and float(props["input_scale"]) == 0.015625
    assert props["mean_kind"] == "per-channel" and props["input_size"] == "64" and "RGB" in props["input"]
    # the recipe in the metadata, applied to pixels, gives what our pipeline gives
    pixels = rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    x = ((pixels - np.array(json.loads(props["mean_rgb"]), np.float32)) * np.float32(props["input_scale"]))
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    loaded, meta, prep = checkpoint.load_model(str(ckpt))
    ours = loaded.forward(((pixels - prep.mean) * np.float32(prep.input_scale)).transpose(0, 3, 1, 2))
    assert max_rel_diff(run_onnx(proto, x)[0], ours) < 1e-5


def documented_recipe():
    """The Python block of docs/weights.md that turns a photo into the exported model's input."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "weights.md").read_text()
    blocks = [b for b in text.split("```python\n")[1:] if "InferenceSession" in b.split("```")[0]]
    assert len(blocks) == 1
    return blocks[0].split("```")[0]


def photo(path, width, height, rng, orientation=None):
    """A JPEG with a photo's smooth shapes and fine grain (what a reduced-scale decode changes)."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(7 * xx + 2 * yy), np.cos(5 * yy - 3 * xx), np.sin(11 * xx * yy)], axis=-1)
    pixels = np.clip(127 + 90 * base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation          # stored sideways: viewers (and predict) turn it upright
    Image.fromarray(pixels).save(path, quality=90, exif=exif)
    return str(path)


def test_the_documented_recipe_gives_predicts_numbers_on_real_jpegs(tmp_path, capsys, rng):
    import contextlib
    import io

    model = build_model("alexnet-small", 3, init="he", seed=2)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays["data/mean"] = np.array([[[120.0, 110.0, 100.0]]], np.float32)
    ckpt, out = str(tmp_path / "small.npz"), str(tmp_path / "small.onnx")
    checkpoint.save(ckpt, arrays, {"arch": "alexnet-small", "num_classes": 3, "classes": ["cat", "dog", "owl"],
                                   "input_scale": 0.015625})
    assert main(["export", "--onnx", out, "--checkpoint", ckpt]) == 0
    # decoded at 1/4 and 1/8 scale (both sides stay >= 73), at full scale, and stored sideways
    images = [photo(tmp_path / "wide.jpg", 400, 300, rng), photo(tmp_path / "big.jpg", 1000, 700, rng),
              photo(tmp_path / "small.jpg", 90, 80, rng), photo(tmp_path / "turned.jpg", 500, 320, rng, 6)]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, "--top", "3", *images]) == 0
    printed = capsys.readouterr().out.splitlines()
    _, _, prep = checkpoint.load_model(ckpt)
    recipe = documented_recipe().replace('"alexnet-tv.onnx"', repr(out))
    for i, image in enumerate(images):
        scope = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(recipe.replace('"photo.jpg"', repr(image)), scope)
        # the very input predict builds (its mean in float32, the metadata's to 4 decimals)
        ours = prep.views(prep.decode([image]))[0]
        assert np.abs(scope["x"] - ours).max() < 1e-5, image
        shown = {line.split()[1]: float(line.split()[0].rstrip("%")) for line in printed[4 * i + 1:4 * i + 4]}
        for name, p in zip(["cat", "dog", "owl"], scope["probs"]):
            assert abs(100 * p - shown[name]) <= 0.0051, (image, name, 100 * p, shown[name])


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export", "--onnx", str(tmp_path / "x.onnx"), "--checkpoint", str(tmp_path / "none.npz")]) == 2
    assert capsys.readouterr().err == f"alexnet: error: checkpoint {tmp_path / 'none.npz'} not found\n"
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)          # as if onnx were not installed
    assert main(["export", "--onnx", str(tmp_path / "x.onnx"), "--checkpoint", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err
    assert err == "alexnet: error: exporting to ONNX needs the onnx package: pip install -e '.[onnx]'\n"
    assert not (tmp_path / "x.onnx").exists()

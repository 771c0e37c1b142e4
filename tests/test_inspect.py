"""Looking inside a trained net: saliency against finite differences, neighbours on a real run."""
import os

import numpy as np
import pytest
from PIL import Image

from alexnet.app.cli import main
from alexnet.app.inspect import hidden_features, nearest, saliency, saliency_map
from alexnet.models.alexnet import tiny_alexnet
from conftest import make_folder, small_argv

SMALL = small_argv(workers=0, log_every=None)


def test_saliency_is_the_gradient_of_the_score_by_finite_differences():
    net = tiny_alexnet(num_classes=5, seed=2).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 31, 31))
    grad, target, scores = saliency(net, x)
    np.testing.assert_array_equal(target, net.forward(x).argmax(axis=1))
    rng, eps = np.random.default_rng(1), 1e-6
    for n in range(2):
        for flat in rng.choice(3 * 31 * 31, 12, replace=False):
            c, h, w = np.unravel_index(flat, (3, 31, 31))
            xp, xm = x.copy(), x.copy()
            xp[n, c, h, w] += eps
            xm[n, c, h, w] -= eps
            numeric = (net.forward(xp)[n, target[n]] - net.forward(xm)[n, target[n]]) / (2 * eps)
            assert abs(grad[n, c, h, w] - numeric) <= 1e-6 * np.abs(grad[n]).max()
    m = saliency_map(grad)
    assert m.shape == (2, 31, 31) and m.min() >= 0 and m.max() == 1


def test_nearest_orders_by_distance():
    cands = np.array([[0.0, 0], [3, 4], [1, 0], [10, 10]])
    idx, dist = nearest(np.array([[0.0, 0.1]]), cands, 3)
    assert idx.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(dist[0], [0.1, np.hypot(1, 0.1), np.hypot(3, 3.9)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("inspect")
    data = make_folder(base / "data", n_train=5, n_val=2, size=40)
    out = str(base / "run")
    assert main(["train", "--data", data, "--epochs", "1", "--out", out, *SMALL]) == 0
    return data, os.path.join(out, "checkpoints", "best.npz")


def test_neighbors_of_a_training_image_start_with_itself(run, tmp_path, capsys):
    data, ckpt = run
    query = os.path.join(data, "train", "b", "3.jpg")
    out = str(tmp_path / "grid.png")
    assert main(["neighbors", "--checkpoint", ckpt, "--data", data, query, "--k", "4", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "hidden-layer neighbours ['b'," in printed                 # itself, of class b, first
    assert Image.open(out).size[0] > 4 * 72
    # and by the numbers: the nearest is the query itself, at distance 0
    from alexnet.app.checkpoint import load_model
    from alexnet.app.data import open_dataset
    from alexnet.app.inspect import _train_crops_and_features
    model, meta, prep = load_model(ckpt)
    ds = open_dataset(data, model.resize_size)
    feats, _, crops, _ = _train_crops_and_features(model, ds, prep, 1000, 4)
    x, query_crop = prep.inputs(prep.decode([query]))
    own = hidden_features(model, x)
    idx, dist = nearest(own, feats, 2)
    np.testing.assert_array_equal(crops[idx[0, 0]], query_crop[0])
    assert dist[0, 0] < 1e-3 * dist[0, 1]


def test_saliency_command_writes_a_picture_and_bad_class_is_one_line(run, tmp_path, capsys):
    data, ckpt = run
    image = os.path.join(data, "val", "a", "0.jpg")
    out = str(tmp_path / "sal")
    assert main(["saliency", "--checkpoint", ckpt, image, "--out", out]) == 0
    assert os.path.isfile(os.path.join(out, "0.saliency.png"))
    assert main(["saliency", "--checkpoint", ckpt, image, "--out", out, "--class", "a"]) == 0
    capsys.readouterr()
    assert main(["saliency", "--checkpoint", ckpt, image, "--class", "zebra"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class 'zebra' is not one of the checkpoint's classes" in err


def test_saliency_of_two_images_with_one_name_writes_two_pictures(run, tmp_path, capsys):
    data, ckpt = run
    images = [os.path.join(data, "val", cls, "0.jpg") for cls in ("a", "b")]      # a/0.jpg and b/0.jpg
    out = tmp_path / "sal"
    assert main(["saliency", "--checkpoint", ckpt, *images, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["0-2.saliency.png", "0.saliency.png"]
    first, second = (np.asarray(Image.open(out / name)) for name in ("0.saliency.png", "0-2.saliency.png"))
    assert not np.array_equal(first, second)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(images[0]) and printed[0].endswith(str(out / "0.saliency.png"))
    assert printed[1].startswith(images[1]) and printed[1].endswith(str(out / "0-2.saliency.png"))


def test_neighbors_checks_its_images_and_output_before_the_search(run, tmp_path, capsys, monkeypatch):
    from alexnet.app import inspect

    def search(*args):
        raise AssertionError("the training images were searched before the command's own inputs were checked")

    monkeypatch.setattr(inspect, "_train_crops_and_features", search)
    data, ckpt = run
    image = os.path.join(data, "val", "a", "0.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    for images, out, message in (([str(tmp_path / "missing.jpg")], "n.png", "image " + str(tmp_path / "missing.jpg")
                                  + " not found"),
                                 ([str(broken)], "n.png", "cannot read image"),
                                 ([image], str(tmp_path), "is a folder, not a regular file"),
                                 # the folder of --out missing: one line, before the search
                                 ([image], "nodir/n.png", f"cannot write {tmp_path}/nodir/n.png: the folder "
                                  f"{tmp_path}/nodir does not exist")):
        assert main(["neighbors", "--checkpoint", ckpt, "--data", data, *images, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_neighbors_never_writes_into_the_dataset_it_searches(run, tmp_path, capsys):
    """The dataset's images are inputs of neighbors: --out onto one of them (by its name, a hard
    link or a symbolic link from elsewhere) or anywhere inside the dataset folder is refused."""
    import shutil
    _, ckpt = run
    data = str(tmp_path / "data")
    shutil.copytree(run[0], data)                       # a copy: a failing test must not spoil the others'
    image = os.path.join(data, "val", "a", "0.jpg")
    searched = os.path.join(data, "train", "a", "0.jpg")
    linked = os.path.join(data, "train", "b", "1.jpg")
    before = {p: open(p, "rb").read() for p in (searched, linked)}
    os.link(linked, tmp_path / "hard.jpg")
    (tmp_path / "soft.png").symlink_to(searched)
    # a class folder that is a link to a folder elsewhere: where it leads is read as that class
    shutil.move(os.path.join(data, "train", "c"), tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(data, "train", "c"))
    for out, message in ((searched, f"is inside the class folder train/a of the dataset {data}"),
                         (os.path.join(data, "train", "a", "new.png"), "is inside the class folder train/a"),
                         (str(tmp_path / "soft.png"), "is inside the class folder train/a"),
                         (str(tmp_path / "elsewhere" / "new.png"), "is inside the class folder train/c"),
                         (str(tmp_path / "hard.jpg"), f"is one of the files of the dataset {data} ("
                                                      f"{linked})")):
        assert main(["neighbors", "--checkpoint", ckpt, "--data", data, image, "--out", out]) == 2, out
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert {p: open(p, "rb").read() for p in before} == before
    assert not os.path.exists(os.path.join(data, "train", "a", "new.png"))
    assert not os.path.exists(tmp_path / "elsewhere" / "new.png")

"""Checkpoint files: round trip, atomic replacement, damaged files, model checks, retention."""

import os
import zipfile

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app import files
from alexnet.app.errors import UserError


def _arrays(value):
    return {"model/conv1.W": np.full((4, 3, 2, 2), value, np.float32), "data/mean": np.zeros((1, 1, 3), np.float32)}


def test_round_trip_keeps_arrays_and_metadata(tmp_path):
    path = str(tmp_path / "c.npz")
    meta = {"arch": "alexnet-small", "rng": {"drop6": {"state": 2**127 + 5}}, "classes": ["a", "b"]}
    ckpt.save(path, _arrays(1.5), meta)
    arrays, back = ckpt.load(path)
    assert back["rng"]["drop6"]["state"] == 2**127 + 5  # 128-bit PCG64 state survives JSON
    assert back["classes"] == ["a", "b"] and back["format"] == ckpt.FORMAT
    assert arrays["model/conv1.W"].dtype == np.float32 and (arrays["model/conv1.W"] == 1.5).all()
    assert ckpt.split(arrays, "model") == {"conv1.W": arrays["model/conv1.W"]}
    # Every member is a plain array: the file loads with pickling disabled.
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_failed_write_never_replaces_the_good_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    ckpt.save(path, _arrays(1.0), {"step": 1})
    real_savez = np.savez

    def dies_midway(f, **arrays):
        # Half the data reaches the temp file, then the process "dies".
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(OSError, match="No space"):
        ckpt.save(path, _arrays(2.0), {"step": 2})
    monkeypatch.setattr(np, "savez", real_savez)
    arrays, meta = ckpt.load(path)
    assert meta["step"] == 1 and (arrays["model/conv1.W"] == 1.0).all()
    assert os.listdir(tmp_path) == ["c.npz"]  # the temp file was removed
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~files._umask()


def test_stray_temp_file_from_a_killed_write_is_ignored(tmp_path):
    d = ckpt.CheckpointDir(str(tmp_path / "checkpoints"), keep=3)
    good = d.save(10, _arrays(1.0), {"step": 10})
    # What a SIGKILL during the next save leaves behind: a half-written temp file.
    with open(os.path.join(d.directory, ".ckpt-00000020.npz.abc123.tmp"), "wb") as f:
        f.write(open(good, "rb").read()[:100])
    assert d.list() == [good] and d.latest() == good
    assert ckpt.load(d.latest())[1]["step"] == 10


def test_truncated_and_foreign_files_give_one_clear_error(tmp_path):
    path = str(tmp_path / "c.npz")
    ckpt.save(path, _arrays(1.0), {"step": 1})
    blob = open(path, "rb").read()
    for n in (0, 10, len(blob) // 2, len(blob) - 10):
        with open(path, "wb") as f:
            f.write(blob[:n])
        with pytest.raises(UserError, match="truncated or corrupt"):
            ckpt.load(path)
    np.savez(str(tmp_path / "plain.npz"), w=np.ones(3))
    with pytest.raises(UserError, match="not an alexnet checkpoint"):
        ckpt.load(str(tmp_path / "plain.npz"))
    with pytest.raises(UserError, match="not found"):
        ckpt.load(str(tmp_path / "missing.npz"))
    assert zipfile.is_zipfile(str(tmp_path / "plain.npz"))


def test_checkpoint_is_checked_against_the_model(tmp_path):
    from alexnet.models.registry import build_model

    small = build_model("alexnet-small", 3)
    weights = small.state_dict()
    meta = {"arch": "alexnet-small", "num_classes": 3}
    ckpt.check_model("c.npz", meta, weights, small)
    other = build_model("alexnet-small", 4)
    with pytest.raises(UserError, match="alexnet-small with 3 classes, but the model here is alexnet-small with 4"):
        ckpt.check_model("c.npz", meta, weights, other)
    bad = dict(weights, **{"fc8.W": np.zeros((3, 7), np.float32)})
    with pytest.raises(UserError, match=r"fc8.W has shape \(3, 7\)"):
        ckpt.check_model("c.npz", meta, bad, small)
    missing = {k: v for k, v in weights.items() if k != "conv2.b"}
    with pytest.raises(UserError, match="missing \\['conv2.b'\\]"):
        ckpt.check_model("c.npz", meta, missing, small)


def test_keeps_the_last_k_and_links_best(tmp_path):
    d = ckpt.CheckpointDir(str(tmp_path / "checkpoints"), keep=2)
    for step in (1, 2, 3, 4):
        d.save(step, _arrays(float(step)), {"step": step}, is_best=step == 2)
    assert [os.path.basename(p) for p in d.list()] == ["ckpt-00000003.npz", "ckpt-00000004.npz"]
    # best.npz outlives the rotation of the checkpoint it was published from.
    assert ckpt.load(d.best_path)[1]["step"] == 2
    d.save(5, _arrays(5.0), {"step": 5}, is_best=True)
    assert ckpt.load(d.best_path)[1]["step"] == 5
    assert sorted(os.listdir(d.directory)) == ["best.npz", "ckpt-00000004.npz", "ckpt-00000005.npz"]


def test_a_file_that_is_no_archive_is_not_a_checkpoint(tmp_path):
    rand = tmp_path / "random.npz"
    rand.write_bytes(np.random.default_rng(0).bytes(5000))
    np.save(tmp_path / "array.npy", np.ones(3))
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04\x95 a pickle, or so it says")
    for path in (rand, tmp_path / "array.npy", tmp_path / "pickle.npz"):
        with pytest.raises(UserError) as e:
            ckpt.load(str(path))
        assert str(e.value) == f"{path} is not an alexnet checkpoint (not an .npz archive)"
    # A file cut short inside the zip signature is a truncated checkpoint, not a foreign file.
    (tmp_path / "cut.npz").write_bytes(b"PK\x03")
    with pytest.raises(UserError, match="truncated or corrupt"):
        ckpt.load(str(tmp_path / "cut.npz"))


def test_a_failed_write_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    import errno

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    path = str(tmp_path / "c.npz")
    with pytest.raises(OSError) as e:
        ckpt.save(path, _arrays(1.0), {"step": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == path
    assert os.listdir(tmp_path) == []

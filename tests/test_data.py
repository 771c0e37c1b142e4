"""The data pipeline: decoding odd images, folder scans, bad files, augmentation, prepared shards,
background loading, the demo generator."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from alexnet.app import data
from alexnet.app.errors import UserError
from conftest import make_folder, save_image as _save


# ---- decoding --------------------------------------------------------------------------------


def test_odd_modes_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "la.png": Image.fromarray(rgb[..., 0]).convert("LA"),
    }
    assert cases["gray16.png"].mode.startswith("I;16") and cases["cmyk.jpg"].mode == "CMYK"
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = data.decode_image(tmp_path / name, 16)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8, name
    # 16-bit gray scales down (not clipped to white): same picture as the 8-bit version.
    g16 = data.decode_image(tmp_path / "gray16.png", 16).astype(int)
    g8 = data.decode_image(tmp_path / "gray.png", 16).astype(int)
    assert np.abs(g16 - g8).max() <= 2
    # Fully transparent pixels composite to white, not to the colour stored under them.
    clear = np.dstack([rgb, np.zeros((20, 30), np.uint8)])
    Image.fromarray(clear).save(tmp_path / "clear.png")
    assert (data.decode_image(tmp_path / "clear.png", 8) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high, top half red, bottom half blue; orientation 6 means "rotate 90
    # degrees clockwise to display": displayed 20 x 40 with red on the right, blue on the left.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:10, :, 0] = 255
    arr[10:, :, 2] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = data.decode_image(tmp_path / "rot.jpg", 20).astype(int)
    assert out.shape == (20, 20, 3)
    assert out[:, :3, 2].mean() > 200 and out[:, :3, 0].mean() < 60  # left: blue
    assert out[:, -3:, 0].mean() > 200 and out[:, -3:, 2].mean() < 60  # right: red


def test_resize_is_shorter_side_then_centre_crop(tmp_path):
    # 60 x 20 image: left third red, middle green, right blue -> the centre square is all green.
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    _save(str(tmp_path / "wide.png"), arr)
    out = data.decode_image(tmp_path / "wide.png", 10).astype(int)
    assert out.shape == (10, 10, 3)
    assert out[:, 1:-1, 1].min() > 200 and out[:, 1:-1, [0, 2]].max() < 60


# ---- folders and bad files ---------------------------------------------------------------------


def test_bad_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    cdir = os.path.join(root, "train", "a")
    with open(os.path.join(cdir, "notes.txt"), "w") as f:
        f.write("not an image")
    with open(os.path.join(cdir, "garbage.jpg"), "wb") as f:
        f.write(b"\xff\xd8 definitely not a jpeg" * 3)
    good = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(good, "JPEG")
    with open(os.path.join(cdir, "truncated.jpg"), "wb") as f:
        f.write(good.getvalue()[: len(good.getvalue()) // 2])
    ds = data.open_dataset(root, 20)
    assert [os.path.basename(p) for p, _ in ds.skipped] == ["notes.txt"]
    assert len(ds.train) == 3 * 4 + 2
    imgs, labels = ds.train.load(np.arange(len(ds.train)))
    assert imgs.shape == (12, 20, 20, 3) and len(labels) == 12
    assert sorted(os.path.basename(p) for p in ds.train.bad) == ["garbage.jpg", "truncated.jpg"]

    with pytest.raises(UserError, match="not an image file.*--strict-data"):
        data.open_dataset(root, 20, strict=True)
    os.remove(os.path.join(cdir, "notes.txt"))
    strict = data.open_dataset(root, 20, strict=True, mean_samples=0)
    with pytest.raises(UserError, match="cannot read image .*(garbage|truncated).jpg"):
        strict.train.load(np.arange(len(strict.train)))


def test_links_that_lead_nowhere_are_counted_not_fatal(tmp_path):
    root = make_folder(tmp_path / "d")
    cdir = os.path.join(root, "train", "a")
    os.symlink("loop.jpg", os.path.join(cdir, "loop.jpg"))          # points to itself
    os.symlink("missing.jpg", os.path.join(cdir, "dangling.jpg"))   # points nowhere
    os.mkfifo(os.path.join(cdir, "pipe.jpg"))                       # would block a reader for ever
    os.symlink(".", os.path.join(cdir, "again"))                    # a folder linked into itself
    ds = data.open_dataset(root, 20)
    assert len(ds.train) == 3 * 4 + 2
    assert sorted((os.path.basename(p), r) for p, r in ds.skipped) == [
        ("again", "folder already read (a symbolic link loop)"), ("pipe.jpg", "not a regular file")]
    imgs, labels = ds.train.load(np.arange(len(ds.train)))
    assert len(imgs) == 12
    bad = {os.path.basename(p): reason for p, reason in ds.train.bad.items()}
    assert sorted(bad) == ["dangling.jpg", "loop.jpg"]
    assert "Too many levels of symbolic links" in bad["loop.jpg"] and "No such file" in bad["dangling.jpg"]


def test_images_in_subfolders_belong_to_their_class(tmp_path):
    root = make_folder(tmp_path / "d")
    rgb = np.full((24, 24, 3), 50, np.uint8)
    _save(os.path.join(root, "train", "b", "extra", "deeper", "x.png"), rgb)
    _save(os.path.join(root, "train", "b", "extra", "y.png"), rgb)
    _save(os.path.join(root, "train", "b", ".hidden", "z.png"), rgb)  # hidden folders stay out
    ds = data.open_dataset(root, 20)
    names = [os.path.relpath(p, os.path.join(root, "train")) for p in ds.train.paths]
    assert names == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.jpg", "b/0.jpg", "b/1.jpg", "b/2.jpg", "b/3.jpg",
                     "b/extra/deeper/x.png", "b/extra/y.png", "c/0.jpg", "c/1.jpg", "c/2.jpg", "c/3.jpg"]
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 6 + [2] * 4
    # A class folder whose images all sit in subfolders is not empty.
    os.makedirs(os.path.join(root, "val", "b", "sub"))
    for name in os.listdir(os.path.join(root, "val", "b")):
        if name.endswith(".jpg"):
            os.replace(os.path.join(root, "val", "b", name), os.path.join(root, "val", "b", "sub", name))
    assert len(data.open_dataset(root, 20).val) == 6


def test_float_tiff_is_scaled_or_refused_with_the_reason(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    out = data.decode_image(tmp_path / "f.tif", 32).astype(int)
    assert np.abs(out[..., 0] - np.round(ramp * 255)).max() <= 1 and out.max() == 255  # not black
    Image.fromarray(ramp * 300).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"floating-point image with values in \[0, 300\]: only 0..1 is understood"):
        data.decode_image(tmp_path / "big.tif", 32)
    nan = ramp.copy()
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN or infinite"):
        data.decode_image(tmp_path / "nan.tif", 32)


def test_int32_tiff_is_scaled_or_refused_with_the_reason(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 1000)       # up to 1,023,000: beyond 16 bits
    Image.fromarray(ramp).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    out = data.decode_image(tmp_path / "i.tif", 32).astype(int)
    assert np.abs(out[..., 0] - ramp * 255 // ramp.max()).max() <= 1 and out.max() == 255
    # a signed image going below 0: no agreed grey for it (it decoded white: -1 as uint32 is 2^32 - 1)
    Image.fromarray(ramp - 5000).save(tmp_path / "negative.tif")
    assert Image.open(tmp_path / "negative.tif").mode == "I"
    with pytest.raises(ValueError, match="32-bit integer image with negative values .down to -5000.: only 0 and up"):
        data.decode_image(tmp_path / "negative.tif", 32)


def test_large_images_decode_without_pillow_warning_up_to_its_error_limit(tmp_path, monkeypatch, recwarn):
    """Pillow's decompression-bomb guard, scaled down: a limit of 1000 pixels warns above 1000
    and refuses above 2000. The warning band decodes quietly; beyond it, the file is unreadable
    with Pillow's reason."""
    import warnings

    from PIL import Image as PILImage

    warnings.simplefilter("always")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    root = make_folder(tmp_path / "d", n_train=1, n_val=1, size=8)
    _save(os.path.join(root, "train", "a", "large.png"), np.full((36, 40, 3), 9, np.uint8))   # 1440 pixels
    _save(os.path.join(root, "train", "a", "huge.png"), np.full((50, 50, 3), 9, np.uint8))    # 2500 pixels
    ds = data.open_dataset(root, 8, mean_samples=0)
    imgs, _ = ds.train.load(np.arange(len(ds.train)))
    assert len(imgs) == 4
    assert list(map(os.path.basename, ds.train.bad)) == ["huge.png"]
    assert "exceeds limit of 2000 pixels" in next(iter(ds.train.bad.values()))
    assert [w for w in recwarn if issubclass(w.category, PILImage.DecompressionBombWarning)] == []


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.open_dataset(str(tmp_path / "missing"), 20)
    root = make_folder(tmp_path / "d")
    os.makedirs(os.path.join(root, "val", "zzz"))
    with pytest.raises(UserError, match=r"only in val: zzz"):
        data.open_dataset(root, 20)
    os.makedirs(os.path.join(root, "train", "zzz"))
    with pytest.raises(UserError, match="class folder .*zzz has no images"):
        data.open_dataset(root, 20)
    empty = tmp_path / "e"
    os.makedirs(empty / "train")
    os.makedirs(empty / "val")
    with pytest.raises(UserError, match="no class folders"):
        data.open_dataset(str(empty), 20)


def test_channel_mean_matches_pixels(tmp_path):
    root = make_folder(tmp_path / "d")
    ds = data.open_dataset(root, 16)
    imgs, _ = ds.train.load(np.arange(len(ds.train)))
    np.testing.assert_allclose(ds.mean.ravel(), imgs.reshape(-1, 3).mean(0), rtol=1e-5)


# ---- augmentation ------------------------------------------------------------------------------


def test_augment_crops_flips_and_lighting():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
    x = data.augment_batch(imgs, np.random.default_rng(5), 8, mean)
    assert x.shape == (16, 3, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    # Replay the draws: every output is (window - mean window), maybe mirrored, plus one RGB shift.
    r = np.random.default_rng(5)
    oy, ox = r.integers(0, 5, 16), r.integers(0, 5, 16)
    flips = r.random(16) < 0.5
    alpha = r.normal(0, 0.1, (16, 3))
    assert flips.any() and not flips.all()
    for i in range(16):
        win = imgs[i, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8].astype(np.float64) - mean[oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        if flips[i]:
            win = win[:, ::-1]
        shift = data.EIGVEC @ (alpha[i] * data.EIGVAL) * 255
        np.testing.assert_allclose(x[i], (win + shift).transpose(2, 0, 1), atol=1e-3)
    # The batch's randomness is a function of (seed, epoch, batch) only.
    a = data.augment_batch(imgs, data.batch_rng(3, 1, 7), 8, mean)
    b = data.augment_batch(imgs, data.batch_rng(3, 1, 7), 8, mean)
    c = data.augment_batch(imgs, data.batch_rng(3, 1, 8), 8, mean)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_ten_crops_are_corners_centre_and_mirrors():
    imgs = np.arange(2 * 7 * 7 * 3, dtype=np.uint8).reshape(2, 7, 7, 3)
    zero = np.zeros((1, 1, 3), np.float32)
    views = data.ten_crop_batches(imgs, 5, zero)
    assert len(views) == 10
    ref = imgs.astype(np.float32).transpose(0, 3, 1, 2)  # (2, 3, 7, 7)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for j, (oy, ox) in enumerate(starts):
        win = ref[:, :, oy : oy + 5, ox : ox + 5]
        assert np.array_equal(views[2 * j], win)
        assert np.array_equal(views[2 * j + 1], win[..., ::-1])
    assert np.array_equal(data.center_crop_batch(imgs, 5, zero), views[8])


def test_epoch_order_is_a_seeded_permutation():
    a = data.epoch_order(50, 0, 3)
    assert sorted(a) == list(range(50))
    assert np.array_equal(a, data.epoch_order(50, 0, 3))
    assert not np.array_equal(a, data.epoch_order(50, 0, 4))
    assert not np.array_equal(a, data.epoch_order(50, 1, 3))


def test_prefetcher_keeps_order_bounds_queue_and_raises():
    import threading
    import time

    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(i):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.002 * (7 - i % 7))
        with lock:
            in_flight[0] -= 1
        return i * i

    got = [(i, r) for i, r, _ in data.Prefetcher(slow, range(20), workers=3, depth=4)]
    assert got == [(i, i * i) for i in range(20)]
    assert peak[0] <= 4
    assert [r for _, r, _ in data.Prefetcher(slow, range(5), workers=0)] == [0, 1, 4, 9, 16]

    def boom(i):
        if i == 3:
            raise UserError("bad batch 3")
        return i

    with pytest.raises(UserError, match="bad batch 3"):
        list(data.Prefetcher(boom, range(10), workers=2))


# ---- prepare -------------------------------------------------------------------------------------


def test_prepare_writes_shards_equal_to_decoding(tmp_path):
    root = make_folder(tmp_path / "src", n_train=5)
    with open(os.path.join(root, "train", "b", "broken.jpg"), "wb") as f:
        f.write(b"nope")
    dst = str(tmp_path / "prep")
    summary = data.prepare_dataset(root, dst, 16, shard_size=4, workers=2, progress=False)
    assert summary["counts"] == {"train": 15, "val": 6}
    assert list(summary["bad"]) == [os.path.join(root, "train", "b", "broken.jpg")]
    meta = json.load(open(os.path.join(dst, "meta.json")))
    assert meta["shard_size"] == 4 and meta["size"] == 16
    assert sorted(f for f in os.listdir(dst) if f.startswith("train-0")) == [f"train-{i:05d}.npy" for i in range(4)]

    prep = data.open_dataset(dst, 16)
    folder = data.open_dataset(root, 16)
    assert prep.kind == "prepared" and prep.classes == ["a", "b", "c"]
    idx = np.array([14, 0, 5, 9, 3])
    got, labels = prep.train.load(idx)
    assert got.shape == (5, 16, 16, 3)
    # Train files in order, minus the broken one (the 5th of class b).
    order = [i for i in range(16) if i != 10]
    want, want_labels = folder.train.load(np.array(order)[idx])
    assert np.array_equal(got, want) and np.array_equal(labels, want_labels)
    all_train, _ = folder.train.load(np.array(order))
    np.testing.assert_allclose(prep.mean, all_train.mean(axis=0), atol=1e-3)
    assert prep.mean.shape == (16, 16, 3)

    with pytest.raises(UserError, match="already exists"):
        data.prepare_dataset(root, dst, 16, progress=False)


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src")
    calls = [0]
    real = data.decode_image

    def dying(path, size):
        calls[0] += 1
        if calls[0] == 10:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(data, "decode_image", dying)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_dataset(root, str(tmp_path / "prep"), 16, workers=0, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["src"]


# ---- demo ----------------------------------------------------------------------------------------


def test_demo_generator_is_deterministic_and_in_imagenet_layout(tmp_path):
    from alexnet.app import demo

    a = demo.generate(str(tmp_path / "a"), train_per_class=2, val_per_class=1, workers=1)
    b = demo.generate(str(tmp_path / "b"), train_per_class=2, val_per_class=1, workers=1)
    assert demo.is_complete(a)
    assert sorted(os.listdir(os.path.join(a, "train"))) == sorted(demo.CLASSES)
    assert len(demo.CLASSES) >= 10
    f = os.path.join("train", "star", "star_00001.jpg")
    assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
    ds = data.open_dataset(a, 73)
    assert len(ds.train) == 2 * len(demo.CLASSES) and len(ds.val) == len(demo.CLASSES)
    imgs, _ = ds.train.load(np.arange(len(ds.train)))
    assert imgs.std() > 20  # real content, not blank images


def test_a_small_folder_is_decoded_once_and_gives_the_same_pixels(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", n_train=3, n_val=1)
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda path, side: calls.append(path) or real(path, side))
    ds = data.open_dataset(root, 32, mean_samples=0)
    first, labels = ds.train.load(np.arange(len(ds.train)))
    again, labels2 = ds.train.load(np.arange(len(ds.train))[::-1])
    assert len(calls) == len(ds.train)                              # the second epoch decoded nothing
    assert np.array_equal(again, first[::-1]) and np.array_equal(labels2, labels[::-1])
    monkeypatch.setenv("ALEXNET_DECODE_CACHE", "0")                 # off: decoded every time
    ds = data.open_dataset(root, 32, mean_samples=0)
    calls.clear()
    ds.train.load(np.arange(2))
    ds.train.load(np.arange(2))
    assert len(calls) == 4
    monkeypatch.setenv("ALEXNET_DECODE_CACHE", "lots")
    with pytest.raises(UserError, match="ALEXNET_DECODE_CACHE must be a number of bytes"):
        data.open_dataset(root, 32, mean_samples=0)

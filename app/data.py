"""The data pipeline: decoding, folder scan, prepared shards, augmentation, background loading.

Two kinds of dataset feed the same batches:

* an ImageNet-style folder, ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``, decoded with
  Pillow every epoch (the demo dataset takes this path too, so it exercises the real loader);
* a prepared dataset written by ``alexnet prepare``: uint8 shards of S x S x 3 images read through
  ``np.load(mmap_mode="r")``, so an epoch costs a page-cache read instead of a JPEG decode.

Every image is brought to S x S (S = the model's ``resize_size``, 256 for the paper) as in the paper
(section 2): shorter side scaled to S, then the central S x S patch. Training batches then get the
paper's augmentation (section 4.1) applied to the whole uint8 batch at once: a random
``crop x crop`` window and a horizontal flip per image (one fancy-index gather), PCA lighting noise
and mean subtraction, written straight into a float32 NCHW array.

Determinism: the sample order of an epoch is a function of (seed, epoch) and the augmentation of a
sample a function of (seed, epoch, batch index, its position in the batch) alone, never of a
shared generator that worker threads advance in whatever order they run. That is what makes resume
exact: a run restarted at (epoch, batch) sees the same pixels as the run that never stopped. And
it is what lets data-parallel ranks (app/distributed.py) each load a slice of the same global
batch (`part`) and see the pixels one process would: the crop, flip and lighting of every
position of the global batch are drawn together, whoever loads which slice.
"""

import json
import math
import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alexnet.app.files import check_output, check_outside_dataset, fsync_dir
from alexnet.app.errors import UserError
from alexnet.engine.threads import shares

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

PREPARED_FORMAT = "alexnet-prepared-v1"

# The paper's lighting PCA (section 4.1) of ImageNet RGB pixels in [0, 1], in the values that
# fb.resnet.torch and Caffe ports use. Columns of EIGVEC are the eigenvectors p_i.
EIGVAL = np.array([0.2175, 0.0188, 0.0045])
EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)
LIGHTING_STD = 0.1

# Sub-streams of the seed, so the order, the augmentation and anything added later never share
# random numbers.
_ORDER_STREAM = 1
_AUGMENT_STREAM = 2


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_image(path, size):
    """Decode one image file into a uint8 array (size, size, 3), RGB.

    EXIF orientation is applied first (a phone photo stored sideways is shown upright), every
    mode becomes RGB (grayscale, palette, CMYK, 16-bit, float in 0..1; transparency is
    composited on white so transparent pixels don't turn into whatever colour the encoder left
    under them), then the shorter side is scaled to ``size`` and the central square kept.
    Raises OSError/ValueError (from Pillow, or with a reason of ours) for unreadable, truncated or
    oversized files.
    """
    from PIL import Image, ImageOps

    _allow_large_images()
    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4, 1/8 scale for free; draft keeps both sides >= size.
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        # One resample from the central square: the same pixels as "scale, then crop".
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        arr = np.asarray(im, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"decoded to shape {arr.shape}")
    return arr


def _allow_large_images():
    """Policy on large images: decode whatever Pillow agrees to decode, without its warning.

    Pillow guards against decompression bombs with ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP by
    default): above it, a DecompressionBombWarning; above twice it (179 MP), a
    DecompressionBombError. In a photo collection a 100 MP image is a photo, not an attack (JPEGs
    even decode at reduced scale here), so the warning band is decoded like any other image and
    Pillow's warning, which would print in the middle of the progress bars, is ignored; beyond
    the error limit the file counts as unreadable with Pillow's reason. Raise or lower the bound
    through PIL.Image.MAX_IMAGE_PIXELS. The filter is process-wide (warnings filters are) and
    re-added if something (a catch_warnings block ending) removed it."""
    from PIL import Image

    for action, _, category, _, _ in warnings.filters:
        if category is Image.DecompressionBombWarning and action == "ignore":
            return
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _to_rgb(im):
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode == "F":
        im = Image.fromarray(_float_to_uint8(np.asarray(im, dtype=np.float32)), mode="L")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: Pillow's convert("L") clips at 255 instead of scaling.
        a = np.asarray(im)
        if a.min() < 0:
            # mode I is signed 32-bit: no convention says what a negative grey is (cast to uint32 it
            # would wrap round to near 2^32, the top of the scale: white)
            raise ValueError(f"32-bit integer image with negative values (down to {int(a.min())}): "
                             f"only 0 and up is understood")
        a = a.astype(np.uint64)
        top = 65535 if im.mode.startswith("I;16") else max(int(a.max()), 1)
        im = Image.fromarray((a * 255 // top).astype(np.uint8), mode="L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _float_to_uint8(a):
    """A floating-point image (TIFF's 32-bit float) to 0..255. Floats mean 0..1 by convention;
    Pillow's own conversion clips them at 0..255, turning the picture black. Any other range
    has no agreed meaning, so such a file is unreadable, with the reason."""
    if not np.isfinite(a).all():
        raise ValueError("floating-point image with NaN or infinite pixels")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1.0 + 1e-3:
        raise ValueError(f"floating-point image with values in [{lo:g}, {hi:g}]: only 0..1 is understood")
    return np.round(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Folder scan


def list_classes(split_dir):
    if not os.path.isdir(split_dir):
        raise UserError(f"data folder {split_dir} not found")
    names = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )
    if not names:
        raise UserError(f"{split_dir} has no class folders (expected {split_dir}/<class>/*.jpg)")
    return names


def scan_split(split_dir, classes):
    """List the image files of one split. Returns (paths, labels, skipped).

    A class folder's images are the image files anywhere below it: subfolders belong to their
    class (as in torchvision's ImageFolder), in sorted order; hidden files and folders (".*")
    are left out. Files whose extension is not an image's, and special files (pipes, devices),
    are skipped and reported in ``skipped`` as (path, reason). A symbolic link that leads nowhere
    (dangling, or a loop) is listed like any image file: it fails to decode and is counted as
    unreadable, with the reason. A class folder without a single image file is an error:
    training would silently learn one class fewer.
    """
    paths, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        cdir = os.path.join(split_dir, name)
        if not os.path.isdir(cdir):
            raise UserError(f"class folder {cdir} not found")
        found = _walk_images(cdir, skipped)
        if not found:
            raise UserError(f"class folder {cdir} has no images")
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels, dtype=np.int64), skipped


def _walk_images(folder, skipped, seen=None):
    """The image files below ``folder`` in sorted order; appends what it skips to ``skipped``.
    ``seen`` (device, inode) of the folders visited: a folder linked into itself is read once."""
    seen = set() if seen is None else seen
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        skipped.append((folder, f"cannot read folder: {e.strerror}"))
        return []
    if (st.st_dev, st.st_ino) in seen:
        skipped.append((folder, "folder already read (a symbolic link loop)"))
        return []
    seen.add((st.st_dev, st.st_ino))
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:  # a symbolic link loop: taken as a file below, unreadable when decoded
            is_dir = False
        if is_dir:
            found += _walk_images(entry.path, skipped, seen)
        elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append((entry.path, "not an image file"))
        elif _is_special(entry.path):
            skipped.append((entry.path, "not a regular file"))
        else:
            found.append(entry.path)
    return found


def _is_special(path):
    """A pipe, socket or device (opening a pipe would block the loader for ever). A path that
    cannot be followed is not special: decoding it fails and says why."""
    import stat

    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def is_prepared(path):
    return os.path.isfile(os.path.join(path, "meta.json"))


def check_data_folder(root):
    """A dataset is a folder (an image folder, or one `alexnet prepare` wrote)."""
    if os.path.isdir(root):
        return
    if os.path.exists(root):
        raise UserError(f"data folder {root} is a file, not a folder (give the folder that holds train/ and val/, "
                        f"or a prepared dataset's folder)")
    raise UserError(f"data folder {root} not found")


def peek_classes(root):
    """The class names of DIR without scanning files: enough to size the model's last layer."""
    check_data_folder(root)
    if is_prepared(root):
        try:
            with open(os.path.join(root, "classes.json")) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"prepared dataset {root} is damaged: {e}") from None
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"{root} has no train/ folder (expected {train_dir}/<class>/*.jpg)")
    return list_classes(train_dir)


# A split of a folder whose decoded images fit this many bytes keeps them in memory once decoded:
# the demo's 5,000 training images (80 MB) are then decoded in the first epoch only, and the loader
# threads leave the cores to the training step (decoding was ~15 of ~130 ms per demo step on 2
# cores). Larger folders decode every epoch; `alexnet prepare` is their remedy. Decoding is
# deterministic, so a kept image is the image decoded again. ALEXNET_DECODE_CACHE: bytes (0: off).
DECODE_CACHE_BYTES = 1 << 30


def decode_cache_bytes():
    value = os.environ.get("ALEXNET_DECODE_CACHE")
    if value is None:
        return DECODE_CACHE_BYTES
    try:
        return max(0, int(value))
    except ValueError:
        raise UserError(f"ALEXNET_DECODE_CACHE must be a number of bytes, got {value!r}") from None


class FolderSource:
    """A split of an image folder; ``load`` decodes a batch of samples (each image once, where the
    split fits the decode cache: DECODE_CACHE_BYTES)."""

    def __init__(self, paths, labels, side, strict=False):
        self.paths = paths
        self.labels = labels
        self.image_side = side
        self.strict = strict
        self._bad = {}
        self._lock = threading.Lock()
        fits = 0 < len(paths) * side * side * 3 <= decode_cache_bytes()
        # the pages of an np.empty are only taken as images are written into them
        self._kept = np.empty((len(paths), side, side, 3), np.uint8) if fits else None
        self._is_kept = np.zeros(len(paths), bool) if fits else None

    def __len__(self):
        return len(self.paths)

    @property
    def bad(self):
        """Files that failed to decode so far: {path: reason}."""
        with self._lock:
            return dict(self._bad)

    def load(self, indices, with_kept=False):
        """uint8 images (k, S, S, 3) and labels (k,) for the samples that decode, k <= len(indices);
        with_kept, also the bool mask of the indices that did."""
        out = np.empty((len(indices), self.image_side, self.image_side, 3), dtype=np.uint8)
        keep = np.ones(len(indices), dtype=bool)
        for j, i in enumerate(indices):
            if self._kept is not None and self._is_kept[i]:
                out[j] = self._kept[i]
            elif self._decode(i, out[j]):
                if self._kept is not None:     # the image first, then the flag: a reader never sees half
                    self._kept[i] = out[j]
                    self._is_kept[i] = True
            else:
                keep[j] = False
        loaded = (out, self.labels[indices]) if keep.all() else (out[keep], self.labels[indices][keep])
        return loaded + (keep,) if with_kept else loaded

    def _decode(self, i, into):
        """Decode sample i into `into`; False (counted in `bad`) when it is not a usable image."""
        path = self.paths[i]
        try:
            into[...] = decode_image(path, self.image_side)
            return True
        except Exception as e:
            # Malformed files surface from Pillow's plugins as OSError (truncation),
            # SyntaxError (headers), DecompressionBombError, struct.error, IndexError...:
            # all of them mean "this file is not a usable image".
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if self.strict:
                raise UserError(f"cannot read image {path}: {reason} (--strict-data)") from None
            with self._lock:
                self._bad[path] = reason
            return False


class ShardSource:
    """A split of a prepared dataset: fixed-size uint8 shards opened as memory maps."""

    def __init__(self, root, split, meta):
        self.image_side = meta["size"]
        self.shard_size = meta["shard_size"]
        count = meta["counts"][split]
        nshards = max(1, math.ceil(count / self.shard_size))
        try:
            self.labels = np.load(os.path.join(root, f"{split}-labels.npy"), allow_pickle=False)
            self.shards = [
                np.load(os.path.join(root, f"{split}-{s:05d}.npy"), mmap_mode="r", allow_pickle=False)
                for s in range(nshards)
            ]
        except (OSError, ValueError) as e:
            raise UserError(f"prepared dataset {root} is damaged: {e}") from None
        total = sum(len(s) for s in self.shards)
        if total != count or len(self.labels) != count:
            raise UserError(f"prepared dataset {root} is damaged: {split} has {total} images, meta says {count}")
        self.bad = {}

    def __len__(self):
        return len(self.labels)

    def load(self, indices, with_kept=False):
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.image_side, self.image_side, 3), dtype=np.uint8)
        shard, local = np.divmod(indices, self.shard_size)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.shards[s][local[sel]]
        loaded = out, self.labels[indices].astype(np.int64)
        return loaded + (np.ones(len(indices), bool),) if with_kept else loaded


class Dataset:
    """Train and val splits, class names and the training mean, from a folder or a prepared set."""

    def __init__(self, root, kind, classes, train, val, mean, skipped):
        self.root = root
        self.kind = kind  # "folder" or "prepared"
        self.classes = classes
        self.train = train
        self.val = val
        self.mean = mean  # float32, (S, S, 3) per pixel or (1, 1, 3) per channel
        self.skipped = skipped  # [(path, reason)] found while scanning

    @property
    def image_side(self):
        """The side of the square uint8 images its splits load."""
        return self.val.image_side


def open_dataset(root, size, strict=False, need_train=True, mean_samples=1000):
    """Open DIR as a prepared dataset (if it has meta.json) or as an image folder.

    ``size`` is the side S that folder images are brought to; a prepared dataset keeps the S it
    was prepared at (callers check that it is at least their crop). With need_train=False only
    val is required (evaluation).
    """
    check_data_folder(root)
    if is_prepared(root):
        return _open_prepared(root, need_train)
    return _open_folder(root, size, strict, need_train, mean_samples)


def _open_prepared(root, need_train):
    try:
        with open(os.path.join(root, "meta.json")) as f:
            meta = json.load(f)
        with open(os.path.join(root, "classes.json")) as f:
            classes = json.load(f)
        mean = np.load(os.path.join(root, "mean.npy"), allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"prepared dataset {root} is damaged: {e}") from None
    if meta.get("format") != PREPARED_FORMAT:
        raise UserError(f"{root} is not a dataset written by this version of 'alexnet prepare'")
    train = ShardSource(root, "train", meta) if need_train else None
    val = ShardSource(root, "val", meta)
    return Dataset(root, "prepared", classes, train, val, mean, [])


def _open_folder(root, size, strict, need_train, mean_samples):
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for d in ([train_dir] if need_train else []) + [val_dir]:
        if not os.path.isdir(d):
            raise UserError(f"{root} has no {os.path.basename(d)}/ folder (expected {d}/<class>/*.jpg)")
    val_classes = list_classes(val_dir)
    if need_train:
        classes = list_classes(train_dir)
        if classes != val_classes:
            raise UserError(f"train and val class folders differ "
                            f"({class_difference(classes, val_classes, 'train', 'val')})")
    else:
        classes = val_classes
    skipped = []
    train = None
    if need_train:
        paths, labels, sk = scan_split(train_dir, classes)
        skipped += sk
        train = FolderSource(paths, labels, size, strict)
    paths, labels, sk = scan_split(val_dir, classes)
    skipped += sk
    val = FolderSource(paths, labels, size, strict)
    if strict and skipped:
        path, reason = skipped[0]
        raise UserError(f"{path}: {reason} (--strict-data; {len(skipped)} such files)")
    mean = channel_mean(train, mean_samples) if need_train and mean_samples else None
    return Dataset(root, "folder", classes, train, val, mean, skipped)


def class_difference(a, b, a_name, b_name):
    """Which class names differ between two lists, e.g. "only in the data: cat; only in the
    checkpoint: dog" (or the same names in another order)."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    parts = [f"only in {a_name}: {_names(only_a)}"] if only_a else []
    parts += [f"only in {b_name}: {_names(only_b)}"] if only_b else []
    if not parts:
        return f"the same {len(a)} names in another order"
    return "; ".join(parts)


def _names(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def channel_mean(source, max_samples):
    """Per-channel RGB mean of up to max_samples training images, evenly spread over the set.

    A per-pixel mean needs every training image decoded once, which is what ``alexnet prepare``
    does; from a folder a few hundred images pin the three channel means down to well under one
    grey level, at the cost of seconds.
    """
    n = len(source)
    pick = np.unique(np.linspace(0, n - 1, num=min(n, max_samples)).round().astype(np.int64))
    total = np.zeros(3)
    count = 0
    for start in range(0, len(pick), 64):
        imgs, _ = source.load(pick[start : start + 64])
        total += imgs.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        count += imgs.shape[0] * imgs.shape[1] * imgs.shape[2]
    if count == 0:
        raise UserError("none of the sampled training images could be decoded")
    return (total / count).astype(np.float32).reshape(1, 1, 3)


# ---------------------------------------------------------------------------------------------
# Augmentation (whole batch at once)


def fit_mean(mean, size):
    """A training mean for images of side ``size``: a per-pixel mean of another size falls back to
    its channel means."""
    if mean.shape[0] in (1, size):
        return mean
    return mean.mean(axis=(0, 1), keepdims=True)


def epoch_order(n, seed, epoch):
    """The permutation of the training set used in ``epoch``; a pure function of its arguments."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def batch_rng(seed, epoch, batch):
    return np.random.default_rng([seed, _AUGMENT_STREAM, epoch, batch])


def _mean_patch(mean, rows, cols):
    if mean.shape[0] == 1:
        return mean.reshape(1, 1, 1, 3)
    return mean[rows[:, :, None], cols[:, None, :]]  # (B, c, c, 3)


def _to_nchw(patch, mean_patch, shift):
    """float32 (B, 3, c, c) = patch - mean + shift, written channel by channel into NCHW."""
    b, c = patch.shape[0], patch.shape[1]
    x = np.empty((b, 3, c, c), dtype=np.float32)
    for ch in range(3):
        np.subtract(patch[..., ch], mean_patch[..., ch], out=x[:, ch], dtype=np.float32)
        if shift is not None:
            x[:, ch] += shift[:, ch, None, None]
    return x


def augment_params(rng, count, size, crop, flip=True, lighting=LIGHTING_STD):
    """The random draws of `count` images' augmentation, in one fixed order: crop offsets (oy, ox),
    flips and lighting alphas (None without lighting), each (count, ...). A batch draws them for
    all of its positions, so any slice of it takes its rows from the same draws."""
    if size < crop:
        raise ValueError(f"images are {size}x{size}, smaller than the {crop}x{crop} crop")
    oy = rng.integers(0, size - crop + 1, size=count)
    ox = rng.integers(0, size - crop + 1, size=count)
    flips = rng.random(count) < 0.5 if flip else np.zeros(count, dtype=bool)
    alpha = rng.normal(0.0, lighting, size=(count, 3)) if lighting else None
    return oy, ox, flips, alpha


def augment_batch(imgs, rng, crop, mean, flip=True, lighting=LIGHTING_STD, rows=None):
    """The paper's training augmentation on a uint8 batch (B, S, S, 3) -> float32 (B, 3, crop, crop).

    `rng` is a generator (the draws for these B images) or the draws of augment_params, of which
    `rows` (B indices, default all) are this batch's. Random crop offsets and flips become one
    gather: row indices (B, crop) and column indices (B, crop), the latter reversed for flipped
    images. The per-pixel mean is gathered with the same indices, which equals subtracting it
    before cropping. Lighting adds ``sum_i p_i * alpha_i * lambda_i`` (times 255: our pixels are
    0..255) to every pixel of an image.
    """
    b, s = imgs.shape[0], imgs.shape[1]
    params = augment_params(rng, b, s, crop, flip, lighting) if isinstance(rng, np.random.Generator) else rng
    oy, ox, flips, alpha = (p if p is None or rows is None else p[rows] for p in params)
    ar = np.arange(crop)
    rows = oy[:, None] + ar  # (B, c)
    cols = ox[:, None] + np.where(flips[:, None], crop - 1 - ar, ar)  # (B, c)
    patch = imgs[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, c, c, 3)
    shift = lighting_shift(alpha) if alpha is not None else None
    return _to_nchw(patch, _mean_patch(mean, rows, cols), shift)


def lighting_shift(alpha):
    """float32 (B, 3): what PCA lighting adds to every pixel of each image, sum_i p_i alpha_i lambda_i
    times 255 (our pixels are 0..255); the CPU path and the GPU's (app/gpu_input.py) both use it."""
    return ((alpha * EIGVAL) @ EIGVEC.T * 255.0).astype(np.float32)  # (B, 3)


def crop_batch(imgs, crop, mean, oy, ox, flip=False):
    """A fixed crop at (oy, ox) of every image, optionally mirrored -> float32 (B, 3, crop, crop)."""
    b = imgs.shape[0]
    ar = np.arange(crop)
    row, col = oy + ar, ox + (crop - 1 - ar if flip else ar)       # (c,): the same for every image
    patch = imgs[:, row][:, :, col]  # (B, c, c, 3)
    return _to_nchw(patch, _mean_patch(mean, np.broadcast_to(row, (b, crop)), np.broadcast_to(col, (b, crop))), None)


def center_crop_batch(imgs, crop, mean):
    off = (imgs.shape[1] - crop) // 2
    return crop_batch(imgs, crop, mean, off, off)


def ten_crop_batches(imgs, crop, mean):
    """The paper's test-time views: 4 corners and the centre, each also mirrored (10 arrays)."""
    s = imgs.shape[1]
    far, mid = s - crop, (s - crop) // 2
    views = []
    for oy, ox in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid)):
        for flip in (False, True):
            views.append(crop_batch(imgs, crop, mean, oy, ox, flip))
    return views


# ---------------------------------------------------------------------------------------------
# Background loading


class Prefetcher:
    """Runs ``fn(i)`` for i in ``indices`` on worker threads, yields results in order.

    At most ``depth`` batches are in flight (a bounded queue: memory stays flat however slow the
    consumer is). Threads suffice: Pillow's decoders and NumPy's copies release the GIL.
    Each item is (i, result, wait_seconds), wait being how long the consumer blocked on it.
    With workers=0 everything runs inline and the wait is the whole load time.
    """

    def __init__(self, fn, indices, workers=2, depth=None):
        self._time = time.perf_counter
        self.fn = fn
        self.indices = list(indices)
        self.workers = workers
        self.depth = depth or max(2, 2 * workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="loader") if workers > 0 else None
        self._pending = deque()
        self._next = 0

    def _fill(self):
        while self._next < len(self.indices) and len(self._pending) < self.depth:
            i = self.indices[self._next]
            self._pending.append((i, self._pool.submit(self.fn, i)))
            self._next += 1

    def __iter__(self):
        try:
            if self._pool is None:
                for i in self.indices:
                    t0 = self._time()
                    result = self.fn(i)
                    yield i, result, self._time() - t0
                return
            self._fill()
            while self._pending:
                i, fut = self._pending.popleft()
                t0 = self._time()
                result = fut.result()
                wait = self._time() - t0
                self._fill()
                yield i, result, wait
        finally:
            self.close()

    def close(self):
        if self._pool is not None:
            for _, fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


AUGMENTATIONS = ("paper", "crops", "none")


def batch_part(indices, part):
    """(positions) of this rank's slice of a global batch: part = (rank, ranks), the slices
    contiguous and even (engine/threads.py shares); None: the whole batch."""
    if part is None:
        return np.arange(len(indices))
    lo, hi = shares(len(indices), part[1])[part[0]]
    return np.arange(lo, hi)


class TrainBatches:
    """The training batches of one epoch: order, indices and augmentation fixed by (seed, epoch).
    ``prep`` (app/preprocess.py) is how an image becomes a network input: its mean, input scale and
    crop size. ``augment``: "paper" (random crops, flips and PCA lighting, section 4.1), "crops"
    (crops and flips, no lighting) or "none" (the centre crop, as at test time). ``part`` =
    (rank, ranks): this rank's slice of every global batch of ``batch_size``, with the global
    batch's augmentation."""

    def __init__(self, source, batch_size, prep, seed, epoch, augment="paper", part=None):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        self.source, self.batch_size, self.part = source, batch_size, part
        self.prep = prep.for_side(source.image_side)
        self.num_batches = num_batches(len(source), batch_size)
        self.augment, self.seed, self.epoch = augment, seed, epoch
        self.order = epoch_order(len(source), seed, epoch)

    def __call__(self, b):
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        mine = batch_part(idx, self.part)
        imgs, labels, kept = self.source.load(idx[mine], with_kept=True)
        prep = self.prep
        if self.augment == "none":
            return prep.views(imgs)[0], labels
        # the whole global batch's draws, of which this slice's decoded images take their rows
        params = augment_params(batch_rng(self.seed, self.epoch, b), len(idx), imgs.shape[1], prep.input_size,
                                lighting=LIGHTING_STD if self.augment == "paper" else 0.0)
        x = augment_batch(imgs, params, prep.input_size, prep.mean, rows=mine[kept])
        if prep.input_scale != 1.0:
            x *= np.float32(prep.input_scale)
        return x, labels


class SubsetSource:
    """`count` samples of a split, spread evenly over it (every class keeps its share), in its
    order: a smaller training set for quick experiments (TrainConfig.max_train)."""

    def __init__(self, source, count):
        self.source = source
        self.indices = np.unique(np.linspace(0, len(source) - 1, count).round().astype(np.int64))
        self.labels = np.asarray(source.labels)[self.indices]
        self.image_side = source.image_side

    def __len__(self):
        return len(self.indices)

    @property
    def bad(self):
        return getattr(self.source, "bad", {})

    def load(self, indices, with_kept=False):
        return self.source.load(self.indices[np.asarray(indices, dtype=np.int64)], with_kept=with_kept)


def num_batches(n, batch_size):
    return (n + batch_size - 1) // batch_size


class EvalBatches:
    """Validation batches in file order as `prep` (app/preprocess.py) turns images into inputs: the
    centre crop, or the 10 views with ten_crop. ``part`` = (rank, ranks): this rank's slice of each
    batch (sharded validation)."""

    def __init__(self, source, batch_size, prep, ten_crop=False, part=None):
        self.source, self.batch_size, self.prep, self.ten_crop, self.part = source, batch_size, prep, ten_crop, part
        self.num_batches = num_batches(len(source), batch_size)

    def __call__(self, b):
        idx = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.source)))
        imgs, labels = self.source.load(idx[batch_part(idx, self.part)])
        return self.prep.views(imgs, self.ten_crop), labels


# ---------------------------------------------------------------------------------------------
# alexnet prepare


def prepare_dataset(src, dst, size, strict=False, shard_size=None, workers=2, progress=True):
    """Decode SRC (train/ and val/ image folders) once into uint8 shards in DST.

    Everything is written into a temporary sibling folder which is renamed to DST only at the
    end, so an interrupted prepare leaves no DST at all, never a half-filled one that looks done.
    The per-pixel mean of the training images is accumulated in the same pass.
    Returns a summary dict.
    """
    import shutil
    import tempfile

    from tqdm import tqdm

    _check_destination(src, dst)
    if is_prepared(src):
        raise UserError(f"{src} is already a prepared dataset")
    ds = _open_folder(src, size, strict, need_train=True, mean_samples=0)
    if shard_size is None:
        # About 1 GiB per shard: small enough to copy around, few enough files for ImageNet.
        shard_size = max(1, (1 << 30) // (size * size * 3))
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
    counts, bad_total = {}, {}
    try:
        mean_sum = np.zeros((size, size, 3), dtype=np.float64)
        for split, source in (("train", ds.train), ("val", ds.val)):
            n_written, labels = _write_split(tmp, split, source, size, shard_size, workers, progress, tqdm,
                                             mean_sum if split == "train" else None)
            counts[split] = n_written
            bad_total[split] = len(source.bad)
            if n_written == 0:
                raise UserError(f"no {split} image of {src} could be decoded")
            np.save(os.path.join(tmp, f"{split}-labels.npy"), labels)
        np.save(os.path.join(tmp, "mean.npy"), (mean_sum / counts["train"]).astype(np.float32))
        with open(os.path.join(tmp, "classes.json"), "w") as f:
            json.dump(ds.classes, f)
        meta = {
            "format": PREPARED_FORMAT,
            "size": size,
            "shard_size": shard_size,
            "counts": counts,
            "skipped": {"not_images": len(ds.skipped), "unreadable": bad_total},
            "source": os.path.abspath(src),
        }
        # meta.json is what marks the folder as a prepared dataset: written last.
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bad = {**ds.train.bad, **ds.val.bad}
    return {"counts": counts, "classes": len(ds.classes), "skipped": ds.skipped, "bad": bad, "size": size}


def _check_destination(src, dst):
    """prepare's DST, before SRC is read: made, never replaced (a link too, even one that leads
    nowhere); not inside SRC (app/files.py's check_outside_dataset: a folder in SRC/train/ would be
    read as one more class); its folder made with its parents, or refused here where it cannot be."""
    if os.path.lexists(dst):
        raise UserError(f"{dst} already exists; remove it or choose another destination")
    check_outside_dataset(dst, src)
    check_output(dst)


def _write_split(tmp, split, source, size, shard_size, workers, progress, tqdm, mean_sum):
    n = len(source)
    chunk = 64
    out_labels = np.empty(n, dtype=np.int32)
    written = 0
    shard, shard_index, shard_fill = None, -1, 0

    def new_shard(index, capacity):
        from numpy.lib.format import open_memmap

        return open_memmap(os.path.join(tmp, f"{split}-{index:05d}.npy"), mode="w+", dtype=np.uint8,
                           shape=(capacity, size, size, 3))

    def load(b):
        return source.load(np.arange(b * chunk, min((b + 1) * chunk, n)))

    bar = tqdm(total=n, desc=f"prepare {split}", unit="img", disable=not progress)
    try:
        for _, (imgs, labels), _ in Prefetcher(load, range(num_batches(n, chunk)), workers):
            if mean_sum is not None:
                mean_sum += imgs.sum(axis=0, dtype=np.float64)
            pos = 0
            while pos < len(imgs):
                if shard is None or shard_fill == shard.shape[0]:
                    if shard is not None:
                        shard.flush()
                    shard_index += 1
                    # Capacity for the rest of the split: the last shard is sized to fit exactly
                    # once skipped files are known, by truncating below.
                    shard = new_shard(shard_index, min(shard_size, n - written))
                    shard_fill = 0
                take = min(len(imgs) - pos, shard.shape[0] - shard_fill)
                shard[shard_fill : shard_fill + take] = imgs[pos : pos + take]
                out_labels[written : written + take] = labels[pos : pos + take]
                shard_fill += take
                pos += take
                written += take
            bar.update(min(chunk, n - bar.n))
    finally:
        bar.close()
    if shard is not None:
        shard.flush()
        if shard_fill < shard.shape[0]:
            # Unreadable images left the last shard short: rewrite it at its true length.
            data = np.array(shard[:shard_fill])
            del shard  # closes the memory map before the file is replaced
            np.save(os.path.join(tmp, f"{split}-{shard_index:05d}.npy"), data)
    if written == 0:
        # Keep the file layout uniform (one shard even when empty) for ShardSource.
        np.save(os.path.join(tmp, f"{split}-00000.npy"), np.empty((0, size, size, 3), np.uint8))
    return written, out_labels[:written]


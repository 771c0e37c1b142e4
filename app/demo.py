"""The built-in demo dataset: procedurally drawn shapes, written as JPEG files in ImageNet's layout.

``alexnet train`` with no ``--data`` trains on this, so a fresh machine needs no download. The
images go to disk as real JPEGs in ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` and are read
back through the same loader as ImageNet, so the demo exercises decoding, augmentation and
background loading rather than a shortcut.

Each image holds one shape of its class with a random colour, position, scale, aspect, rotation
and outline/fill style, over a random two-colour gradient with clutter (lines, dots, arcs in
random colours) and Gaussian sensor noise. Classes overlap on purpose (hexagon vs circle,
ring vs circle outline, diamond-like rotations of square): a linear model on pixels does not
separate them, a conv net does.

Generation is deterministic (one seeded generator per image) and atomic: the set is drawn into a
temporary folder and renamed into place, so an interrupted generation is redone, never half-used.
"""

import json
import math
import os
import shutil
import tempfile

import numpy as np

DEMO_VERSION = "demo-v1"
CLASSES = ("arrow", "circle", "cross", "crescent", "heart", "hexagon", "ring", "square", "star", "triangle")
IMAGE_SIZE = 80
TRAIN_PER_CLASS = 500
VAL_PER_CLASS = 100
_SUPERSAMPLE = 2  # draw at 2x and downscale: antialiased edges, as in a photo
CLUTTER = (3, 9)  # clutter items per image, [low, high)
NOISE = (3.0, 15.0)  # range of the Gaussian noise's standard deviation, in grey levels
OUTLINE_P = 0.25  # share of shapes drawn as an outline instead of filled
SCALE = (0.22, 0.4)  # shape radius as a fraction of the image side


def cache_root():
    """$ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet."""
    env = os.environ.get("ALEXNET_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alexnet")


def _unit_outline(cls, rng):
    """Polygon (K, 2) of the class's shape in unit coordinates (radius about 1), or None for the
    round shapes that are drawn with ellipses."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if cls == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.8
    if cls == "triangle":
        a = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(a), -np.sin(a)], 1)
    if cls == "hexagon":
        a = np.arange(6) * np.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1)
    if cls == "star":
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.5))
        return np.stack([r * np.cos(a), -r * np.sin(a)], 1)
    if cls == "cross":
        w = rng.uniform(0.22, 0.35)
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                         [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=float)
    if cls == "arrow":
        w, head = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.3)
        return np.array([[-1, -w], [head, -w], [head, -0.7], [1, 0], [head, 0.7], [head, w], [-1, w]],
                         dtype=float)
    if cls == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y], 1) / 16.0
    return None


def _gradient_background(rng, n):
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
    w = np.clip(0.5 + xx * np.cos(angle) + yy * np.sin(angle), 0, 1)[..., None]  # (n, n, 1)
    return c0 * (1 - w) + c1 * w  # (n, n, 3)


def _colour(rng, avoid):
    """A random colour at least some distance from ``avoid`` (the local background), so the shape
    is visible but may be low-contrast."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - avoid).sum() > 120:
            break
    return tuple(int(v) for v in c)


def draw_sample(cls, rng, size=IMAGE_SIZE):
    """One uint8 RGB image (size, size, 3) of class ``cls`` drawn with generator ``rng``."""
    from PIL import Image, ImageDraw

    n = size * _SUPERSAMPLE
    bg = _gradient_background(rng, n)
    img = Image.fromarray(bg.astype(np.uint8))
    _draw_clutter(ImageDraw.Draw(img), rng, n)
    scale = rng.uniform(*SCALE) * n
    cx, cy = rng.uniform(0.35, 0.65, 2) * n
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.8, 1.25)
    colour = _colour(rng, bg[int(cy), int(cx)])
    outline_only = rng.random() < OUTLINE_P and cls not in ("ring", "crescent")
    line_w = int(max(2, scale * rng.uniform(0.12, 0.2)))
    # The shape goes into a mask so round shapes and cut-outs (ring, crescent) composite over the
    # clutter instead of painting background colour on it.
    mask = Image.new("L", (n, n), 0)
    _draw_shape(ImageDraw.Draw(mask), cls, rng, (cx, cy), scale, angle, aspect, line_w if outline_only else None)
    img.paste(Image.new("RGB", (n, n), colour), (0, 0), mask)

    img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, rng.uniform(*NOISE), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_clutter(draw, rng, n):
    """Clutter under the shape: lines, dots and arcs in random colours, on an n x n canvas."""
    for _ in range(rng.integers(*CLUTTER)):
        kind = rng.integers(0, 3)
        col = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.uniform(0, n, 4))
        width = int(rng.integers(1, 4) * _SUPERSAMPLE)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=col, width=width)
        elif kind == 1:
            r = int(rng.uniform(1, 4) * _SUPERSAMPLE)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=col)
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=col, width=width)


def _draw_shape(mdraw, cls, rng, centre, scale, angle, aspect, outline):
    """Class `cls`'s shape into a mask (255 inside), centred at `centre`, of size `scale`, turned by
    `angle`, stretched by `aspect`; only its outline, `outline` wide, unless that is None."""
    cx, cy = centre
    poly = _unit_outline(cls, rng)
    if poly is not None:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = [tuple(p) for p in (poly * [aspect, 1 / aspect]) @ rot.T * scale + [cx, cy]]
        if outline:
            mdraw.polygon(pts, outline=255, width=outline)
        else:
            mdraw.polygon(pts, fill=255)
        return
    rx, ry = scale * aspect, scale / aspect
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    if cls == "circle" and outline:
        mdraw.ellipse(box, outline=255, width=outline)
    elif cls == "circle":
        mdraw.ellipse(box, fill=255)
    elif cls == "ring":
        mdraw.ellipse(box, fill=255)
        inner = rng.uniform(0.45, 0.7)
        mdraw.ellipse((cx - rx * inner, cy - ry * inner, cx + rx * inner, cy + ry * inner), fill=0)
    else:  # crescent: a disc with an offset disc cut out
        mdraw.ellipse(box, fill=255)
        off = rng.uniform(0.35, 0.6) * scale
        ox, oy = cx + off * math.cos(angle), cy + off * math.sin(angle)
        r2 = scale * rng.uniform(0.85, 1.0)
        mdraw.ellipse((ox - r2, oy - r2, ox + r2, oy + r2), fill=0)


def _write_class(args):
    root, split, split_id, label, count, seed = args
    from PIL import Image

    cls = CLASSES[label]
    cdir = os.path.join(root, split, cls)
    os.makedirs(cdir, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, split_id, label, i])
        arr = draw_sample(cls, rng)
        Image.fromarray(arr).save(os.path.join(cdir, f"{cls}_{i:05d}.jpg"), quality=90)


def generate(root, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=0, workers=None):
    """Write the demo dataset to ``root`` (must not exist yet), atomically. Returns root."""
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        jobs = [(tmp, split, split_id, label, count, seed)
                for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class)))
                for label in range(len(CLASSES))]
        workers = workers or min(len(jobs), os.cpu_count() or 1)
        if workers > 1:
            # Drawing is Python-heavy (PIL calls per primitive): processes, not threads.
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                pool.map(_write_class, jobs)
        else:
            for job in jobs:
                _write_class(job)
        with open(os.path.join(tmp, "demo.json"), "w") as f:
            json.dump({"version": DEMO_VERSION, "classes": list(CLASSES), "train_per_class": train_per_class,
                       "val_per_class": val_per_class, "image_size": IMAGE_SIZE, "seed": seed}, f)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished the same set first: keep theirs.
            if not is_complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def is_complete(root):
    return os.path.isfile(os.path.join(root, "demo.json"))


def ensure_demo(root=None, log=print):
    """The demo dataset's folder, generated on first use."""
    root = root or os.path.join(cache_root(), DEMO_VERSION)
    if is_complete(root):
        return root
    if os.path.exists(root):
        # An unmarked folder at our path is not ours to delete.
        from alexnet.app.errors import UserError

        raise UserError(f"{root} exists but is not a complete demo dataset; remove it and try again")
    import time

    _remove_stale_temps(root)
    t0 = time.perf_counter()
    n = len(CLASSES) * (TRAIN_PER_CLASS + VAL_PER_CLASS)
    log(f"generating the demo dataset ({len(CLASSES)} classes, {n} images) in {root} ...")
    generate(root)
    log(f"demo dataset ready in {time.perf_counter() - t0:.1f} s")
    return root


def _remove_stale_temps(root, max_age_s=3600):
    """Delete temporary folders that a killed generation left next to ``root``. Only old ones:
    a young one may belong to another process generating right now."""
    import glob
    import time

    pattern = os.path.join(os.path.dirname(os.path.abspath(root)), f".{os.path.basename(root)}.tmp-*")
    for path in glob.glob(pattern):
        try:
            if time.time() - os.path.getmtime(path) > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass

"""Looking inside a trained net: `alexnet saliency` and `alexnet neighbors`.

    alexnet saliency --checkpoint C IMAGE... [--out DIR] [--class K]
    alexnet neighbors --checkpoint C --data DIR IMAGE... [--k 6] [--limit N] [--out FILE]

Saliency (Simonyan, Vedaldi and Zisserman 2013, the oldest way to look inside AlexNet): the gradient
of the top class's score (the logit, before the softmax) with respect to the input pixels, from one
inference forward and one backward (backward after an inference forward keeps dropout off:
engine/layer.py). The map is max over colour channels of |d score / d pixel|; it is drawn next to
the image and over it.

Neighbours (the paper's Figure 4): the training images whose last hidden layer (the input of the
last fully connected layer: fc7's 4096 ReLU outputs in AlexNet) is nearest in Euclidean distance
to the query's, next to the nearest neighbours in pixel space (the centre crops brought to 32x32)
for contrast: the paper's point is that the first are the same kind of object in other poses and
colours, the second mostly images of similar colour layout.
"""
import os

import numpy as np

from alexnet.app.errors import UserError

PIXEL_SIDE = 32           # pixel-space neighbours compare centre crops brought to 32x32


# ---- the computations ------------------------------------------------------------------------------
def saliency(model, x, target=None):
    """(d score / dx (N, 3, H, W), the classes scored (N,), their scores (N,)) for a batch x of
    network inputs; the class is each image's top class unless `target` (N,) names one."""
    logits = model.forward(x)                                    # inference: no dropout, cache kept
    target = logits.argmax(axis=1) if target is None else np.asarray(target)
    rows = np.arange(len(x))
    dout = np.zeros_like(logits)
    dout[rows, target] = 1                                       # d(score of the target) / d logits
    return model.backward(dout), target, logits[rows, target]


def saliency_map(grad):
    """(N, H, W): max over channels of |gradient|, each map scaled to [0, 1] by its 99th
    percentile (a few extreme pixels would otherwise wash out the rest)."""
    m = np.abs(grad).max(axis=1)
    top = np.percentile(m.reshape(len(m), -1), 99, axis=1).reshape(-1, 1, 1)
    return np.clip(m / np.maximum(top, 1e-30), 0, 1)


def hidden_features(model, x):
    """The input of the model's last fully connected layer (N, features), by an inference forward
    up to it (no caches kept)."""
    last = max(i for i, layer in enumerate(model.layers) if "W" in layer.params and layer.params["W"].ndim == 2)
    h = x
    for layer in model.layers[:last]:
        h = layer.forward(h, keep_cache=False)
    return h.reshape(len(h), -1)


def nearest(queries, candidates, k):
    """Indices (Q, k) of the k candidates nearest to each query (Euclidean), nearest first, and
    their distances."""
    q, c = queries.astype(np.float64), candidates.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * q @ c.T
    d2 = np.maximum(d2, 0)                                       # rounding can dip below 0
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(d2, order, axis=1))


def _small(crops):
    """uint8 (N, c, c, 3) crops -> float32 (N, 32*32*3), the pixel-space vectors."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(c).resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BILINEAR),
                                np.float32).reshape(-1) for c in crops])


# ---- drawing ---------------------------------------------------------------------------------------
def _heat(m):
    """[0, 1] map -> RGB uint8 (black, red, yellow, white as it rises)."""
    r = np.clip(3 * m, 0, 1)
    g = np.clip(3 * m - 1, 0, 1)
    b = np.clip(3 * m - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def draw_saliency(crop, m, label):
    """[image | saliency map | map over the image] with a caption, as a PIL image."""
    from PIL import Image, ImageDraw
    heat = _heat(m)
    over = (0.45 * crop + 0.55 * heat).astype(np.uint8)
    h, w = m.shape
    scale = max(1, 192 // max(h, w))
    panel = np.concatenate([crop, heat, over], axis=1).repeat(scale, 0).repeat(scale, 1)
    img = Image.new("RGB", (panel.shape[1], panel.shape[0] + 18), "white")
    img.paste(Image.fromarray(panel), (0, 18))
    ImageDraw.Draw(img).text((4, 3), label, fill="black")
    return img


def draw_neighbors(rows, cell=72, gap=4):
    """rows: [(caption, [uint8 crops])] -> a grid image, one row per entry (query first)."""
    from PIL import Image, ImageDraw
    width = max(len(crops) for _, crops in rows) * (cell + gap) + gap
    img = Image.new("RGB", (width, len(rows) * (cell + gap + 14) + gap), "white")
    draw = ImageDraw.Draw(img)
    y = gap
    for caption, crops in rows:
        draw.text((gap, y), caption, fill="black")
        for j, c in enumerate(crops):
            tile = Image.fromarray(c).resize((cell, cell), Image.Resampling.NEAREST)
            img.paste(tile, (gap + j * (cell + gap), y + 14))
        y += cell + gap + 14
    return img


# ---- the commands ------------------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("saliency", help="which pixels the top class depends on (gradient of its score)",
                              description="For each IMAGE, the gradient of the top class's score with respect "
                                          "to the input pixels, drawn next to and over the image (PNG per image).")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="saliency", metavar="DIR", help="folder for the PNGs (default ./saliency)")
    p.add_argument("--class", dest="target", metavar="NAME", help="explain this class instead of the top one")
    p.set_defaults(func=cmd_saliency)

    p = subparsers.add_parser("neighbors", help="training images nearest in the last hidden layer (Figure 4)",
                              description="For each IMAGE, the training images of DIR whose last hidden layer is "
                                          "nearest (Euclidean), and for contrast the nearest in pixel space.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--data", required=True, metavar="DIR", help="the dataset whose train split is searched")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--k", type=int, default=6, help="neighbours per image (default 6)")
    p.add_argument("--limit", type=int, default=20000, metavar="N",
                   help="search at most N training images, evenly spaced (default 20000)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B")
    p.add_argument("--out", default="neighbors.png", metavar="FILE", help="the grid PNG (default neighbors.png)")
    p.set_defaults(func=cmd_neighbors)


def saliency_paths(images, out_dir):
    """The PNG each image's saliency goes to: DIR/<name>.saliency.png, numbered (<name>-2, ...)
    where two images share a name (a/x.jpg and b/x.jpg), so that no picture replaces another."""
    paths, taken = [], set()
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        paths.append(os.path.join(out_dir, f"{name}.saliency.png"))
    return paths


def cmd_saliency(args):
    from alexnet.app.checkpoint import load_model
    from alexnet.app.files import check_output, write_png

    inputs = [args.checkpoint, *args.images]
    outs = saliency_paths(args.images, args.out)
    for out in outs:
        check_output(out, inputs)
    model, meta, prep = load_model(args.checkpoint)
    classes = meta["classes"]
    target = None
    if args.target is not None:
        if args.target not in classes:
            raise UserError(f"--class {args.target!r} is not one of the checkpoint's classes "
                            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
        target = [classes.index(args.target)] * len(args.images)
    x, crops = prep.inputs(prep.decode(args.images))
    grad, chosen, scores = saliency(model, x, target)
    maps = saliency_map(grad)
    os.makedirs(args.out, exist_ok=True)
    for path, out, crop, m, c, score in zip(args.images, outs, crops, maps, chosen, scores):
        write_png(out, draw_saliency(crop, m, f"{classes[c]} (score {score:.2f})"), inputs)
        print(f"{path}: {classes[c]}, score {score:.3f}; wrote {out}")
    return 0


def _train_crops_and_features(model, ds, prep, limit, batch_size):
    """(feature vectors, pixel vectors, uint8 crops, labels) of up to `limit` training images."""
    from tqdm import tqdm
    source = ds.train
    picked = np.unique(np.linspace(0, len(source) - 1, min(limit, len(source))).astype(int))
    feats, pixels, crops, labels = [], [], [], []
    for lo in tqdm(range(0, len(picked), batch_size), desc="features", unit="batch", leave=False):
        idx = picked[lo:lo + batch_size]
        imgs, lab = source.load(idx)
        x, c = prep.inputs(imgs)
        feats.append(hidden_features(model, x))
        pixels.append(_small(c))
        crops.append(c)
        labels.append(lab)
    return np.concatenate(feats), np.concatenate(pixels), np.concatenate(crops), np.concatenate(labels)


def dataset_files(ds):
    """The files of dataset ``ds`` that hold its images: a folder's image files, a prepared set's shards."""
    for source in (ds.train, ds.val):
        if source is None:
            continue
        if hasattr(source, "paths"):
            yield from source.paths
        else:
            yield from (s.filename for s in source.shards if getattr(s, "filename", None))


def cmd_neighbors(args):
    from alexnet.app.checkpoint import load_model
    from alexnet.app.data import open_dataset
    from alexnet.app.files import check_not_an_image_of, check_output, check_outside_dataset, write_png
    if args.k < 1 or args.limit < 1 or args.batch_size < 1:
        raise UserError("--k, --limit and --batch-size must be at least 1")
    inputs = [args.checkpoint, *args.images]
    # the output first (its folder must exist: --out names a file), never inside the dataset searched
    check_output(args.out, inputs, folder_must_exist=True)
    check_outside_dataset(args.out, args.data)
    model, meta, prep = load_model(args.checkpoint)
    # the queries first: the search below reads up to --limit training images
    x, query_crops = prep.inputs(prep.decode(args.images))
    ds = open_dataset(args.data, model.resize_size, mean_samples=0)     # the checkpoint has its own mean
    if ds.classes != meta["classes"]:
        raise UserError(f"{args.data} has other classes than the checkpoint was trained on")
    check_not_an_image_of(args.out, args.data, dataset_files(ds))       # a link to an image from elsewhere
    feats, pixels, crops, labels = _train_crops_and_features(model, ds, prep, args.limit, args.batch_size)
    k = min(args.k, len(feats))
    by_features, _ = nearest(hidden_features(model, x), feats, k)
    by_pixels, _ = nearest(_small(query_crops), pixels, k)
    classes, rows = meta["classes"], []
    for path, crop, f_idx, p_idx in zip(args.images, query_crops, by_features, by_pixels):
        name = os.path.basename(path)
        rows.append((f"{name}: nearest in the last hidden layer ({', '.join(classes[labels[i]] for i in f_idx[:3])}...)",
                     [crop] + [crops[i] for i in f_idx]))
        rows.append((f"{name}: nearest in pixel space ({', '.join(classes[labels[i]] for i in p_idx[:3])}...)",
                     [crop] + [crops[i] for i in p_idx]))
        print(f"{path}: hidden-layer neighbours {[classes[labels[i]] for i in f_idx]}; "
              f"pixel neighbours {[classes[labels[i]] for i in p_idx]}")
    write_png(args.out, draw_neighbors(rows), inputs)
    print(f"wrote {args.out} ({len(feats)} training images searched)")
    return 0

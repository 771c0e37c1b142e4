"""Figures drawn with Pillow alone (no plotting library to install): line charts and filter grids.

Used by `alexnet plot` (a run's curves, its gradient flow and its conv1 filters, the paper's
Figure 3), by `alexnet experiment` (every experiment's figures) and by the TensorBoard log (the filters).
"""
import math

import numpy as np

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def nice_ticks(lo, hi, n=5):
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t = math.floor(lo / step + 1e-9) * step
    ticks = [round(t, 10)]
    while ticks[-1] < hi - step * 1e-9:
        t += step
        ticks.append(round(t, 10))
    return ticks


def _finite(v, log_y):
    return v is not None and math.isfinite(v) and (v > 0 or not log_y)


def _dashed(d, start, end, fill, dash):
    """A dashed straight line from `start` to `end`, dashes and gaps `dash` pixels long."""
    (xa, ya), (xb, yb) = start, end
    length = max(abs(xb - xa), abs(yb - ya), 1)
    for k in range(0, int(length), 2 * dash):
        t0, t1 = k / length, min(1.0, (k + dash) / length)
        d.line((xa + t0 * (xb - xa), ya + t0 * (yb - ya), xa + t1 * (xb - xa), ya + t1 * (yb - ya)), fill=fill)


def line_chart(title, series, xlabel="epoch", log_y=False, size=(420, 310), marks=(), levels=()):
    """One chart, as a PIL image. series: [(label, xs, ys)] (None or non-finite ys are gaps);
    marks: x positions drawn as dashed vertical lines (e.g. a learning-rate drop); levels: y
    values drawn as dashed horizontal lines (e.g. a rule of thumb), inside the range shown."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, size[0] - 12, 42, size[1] - 34
    vals = [v for ys in [s[2] for s in series] + [list(levels)] for v in ys if _finite(v, log_y)] or [1.0]
    all_x = [x for _, xs, _ in series for x in xs] or [0.0, 1.0]
    tf = math.log10 if log_y else (lambda v: v)
    lo, hi = tf(min(vals)), tf(max(vals))
    if log_y:
        lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)
        yticks = list(range(int(lo), int(hi) + 1))
    else:
        yticks = nice_ticks(lo, hi)
        lo, hi = yticks[0], yticks[-1]
    x0, x1 = min(all_x), max(all_x) if max(all_x) > min(all_x) else min(all_x) + 1

    def px(x):
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(v):
        return bottom - (tf(v) - lo) / ((hi - lo) or 1) * (bottom - top)

    d.text((left, 6), title, fill="black", font=font)
    d.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for t in yticks:
        y = bottom - (t - lo) / ((hi - lo) or 1) * (bottom - top)
        d.line((left, y, right, y), fill=(225, 225, 225))
        d.text((4, y - 6), f"1e{t}" if log_y else f"{t:g}", fill="black", font=font)
    for t in (t for t in nice_ticks(x0, x1, n=6) if x0 <= t <= x1):
        d.line((px(t), bottom, px(t), bottom + 4), fill="black")
        d.text((px(t) - 4, bottom + 6), f"{t:g}", fill="black", font=font)
    for m in (m for m in marks if x0 <= m <= x1):
        _dashed(d, (px(m), top), (px(m), bottom), (150, 150, 150), dash=3)
    for level in (v for v in levels if _finite(v, log_y)):
        _dashed(d, (left, py(level)), (right, py(level)), (90, 90, 90), dash=4)
    d.text(((left + right) // 2 - 3 * len(xlabel), size[1] - 14), xlabel, fill="black", font=font)
    for i, (label, xs, ys) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(px(x), py(v)) for x, v in zip(xs, ys) if _finite(v, log_y)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        if len(pts) <= 60:                      # dots only where they stay readable
            for x, y in pts:
                d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    # the legend sits in a row of its own above the axes, where no curve can hide it
    lx = left
    for i, (label, _, _) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        d.line((lx, 28, lx + 18, 28), fill=colour, width=2)
        d.text((lx + 22, 22), label, fill="black", font=font)
        lx += 34 + int(d.textlength(label, font=font))
    return img


def bar_chart(title, labels, values, spreads=None, size=(640, 340)):
    """Vertical bars with optional error whiskers (values and spreads in the same units)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, size[0] - 12, 30, size[1] - 60
    spreads = spreads or [0.0] * len(values)
    finite = [v + e for v, e in zip(values, spreads) if math.isfinite(v)] or [1.0]
    ticks = nice_ticks(0.0, max(finite))
    hi = ticks[-1] or 1.0
    d.text((left, 8), title, fill="black", font=font)
    for t in ticks:
        y = bottom - t / hi * (bottom - top)
        d.line((left, y, right, y), fill=(225, 225, 225))
        d.text((4, y - 6), f"{t:g}", fill="black", font=font)
    width = (right - left) / max(len(values), 1)
    for i, (label, v, e) in enumerate(zip(labels, values, spreads)):
        x0, x1 = left + i * width + width * 0.2, left + (i + 1) * width - width * 0.2
        if math.isfinite(v):
            d.rectangle((x0, bottom - v / hi * (bottom - top), x1, bottom), fill=COLOURS[i % len(COLOURS)])
            if e:
                xm = (x0 + x1) / 2
                d.line((xm, bottom - (v - e) / hi * (bottom - top), xm, bottom - (v + e) / hi * (bottom - top)),
                       fill="black", width=2)
            d.text((x0, bottom - v / hi * (bottom - top) - 12), f"{v:.1f}", fill="black", font=font)
        d.text((x0 - 6, bottom + 6 + 12 * (i % 2)), label, fill="black", font=font)
    d.line((left, bottom, right, bottom), fill="black")
    return img


def side_by_side(images, title="", vertical=False):
    """Images in one row (or, vertical, one column) under a title line."""
    from PIL import Image, ImageDraw

    sides = [im.size for im in images]
    along, across = (1, 0) if vertical else (0, 1)
    size = [0, 0]
    size[along], size[across] = sum(s[along] for s in sides), max(s[across] for s in sides)
    out = Image.new("RGB", (size[0], size[1] + 20), "white")
    ImageDraw.Draw(out).text((8, 4), title, fill="black")
    offset = 0
    for im in images:
        out.paste(im, (0, 20 + offset) if vertical else (offset, 20))
        offset += im.size[along]
    return out


def run_curves(epochs, title=""):
    """A run's loss, accuracy and learning rate per epoch (log.jsonl's epoch records), three
    charts side by side."""
    xs = [r["epoch"] for r in epochs]

    def series(label, key, scale=1.0):
        return (label, xs, [scale * r[key] for r in epochs])
    return side_by_side([
        line_chart("loss", [series("train", "train_loss"), series("val", "val_loss")]),
        line_chart("accuracy (%)", [series("train top-1", "train_top1", 100), series("val top-1", "val_top1", 100),
                                    series("val top-5", "val_top5", 100)]),
        line_chart("learning rate", [series("lr", "lr")], log_y=True),
    ], title)


def filter_grid(W, cell=48, gap=3, cols=None):
    """Convolution filters (out, in, kh, kw) as a grid of RGB tiles (the paper's Figure 3), each
    filter stretched to the full 0..255 range on its own so weak ones stay visible."""
    from PIL import Image

    W = np.asarray(W, dtype=np.float64)
    n, c, kh, kw = W.shape
    tiles = W[:, :3] if c >= 3 else np.repeat(W[:, :1], 3, axis=1)  # (n, 3, kh, kw)
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = ((tiles - lo) / np.maximum(hi - lo, 1e-12) * 255).round().astype(np.uint8)
    tiles = tiles.transpose(0, 2, 3, 1)  # (n, kh, kw, 3)
    scale = max(1, cell // max(kh, kw))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscale
    cols = cols or (12 if n > 48 else 8)
    rows = -(-n // cols)
    th, tw = tiles.shape[1], tiles.shape[2]
    grid = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + q * (tw + gap)
        grid[y: y + th, x: x + tw] = tiles[i]
    return Image.fromarray(grid)


def gradient_flow(series, title=""):
    """A run's gradient flow (app/grad_stats.py read_grads): per layer over the steps, the gradient's
    norm, the update-to-weight ratio (the dashed line: 1e-3, the rule of thumb) and the weights'
    norm, three charts one above the other, log scales."""
    steps, names = series["steps"], [k for k in series if k != "steps"]

    def chart(label, stat, levels=()):
        return line_chart(label, [(name, steps, series[name][stat]) for name in names], xlabel="step",
                          log_y=True, size=(720, 300), levels=levels)
    return side_by_side([chart("gradient norm |dL/dW| per layer", "grad_norm"),
                         chart("update / weight |dW step| / |W| per layer (dashed: 1e-3)", "update_ratio", (1e-3,)),
                         chart("weight norm |W| per layer", "weight_norm")], title, vertical=True)

"""Draw the figures of docs/walkthrough.md with Pillow alone (no plotting library), into docs/figures/.

    python docs/tools/figures.py                # writes docs/figures/*.png
    python docs/tools/figures.py --out DIR      # somewhere else (the test does this)

    im2col_grouped.png          a grouped convolution as im2col: patches -> columns, one product per group
    alexnet_towers.png          the paper's Figure 2 redrawn from models.alexnet.AlexNet() itself
    pool_gradient_routing.png   overlapping max-pool: where each output's gradient goes back to
    winograd_tile.png           Winograd F(2x2, 3x3) on one tile

The numbers are docs/tools/examples.py's, computed by the real layers and checked against
layers/reference.py; the towers are read from the model (each Conv2d's groups and channels, the
shapes from summary_rows). Same bytes on every run with the same Pillow: no randomness, no dates.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import examples  # docs/tools/examples.py
from alexnet.app.plots import COLOURS
from alexnet.layers import LRN, Conv2d, Dense
from alexnet.models.alexnet import AlexNet

ROOT = Path(__file__).resolve().parents[2]
BLUE, ORANGE, GREEN, RED, PURPLE = COLOURS[0], COLOURS[1], COLOURS[2], COLOURS[3], COLOURS[4]
GREY, LIGHT, INK = (120, 120, 120), (235, 235, 235), (20, 20, 20)
_FONTS = {}


def font(size=14):
    """Pillow's built-in font at `size` px (FreeType's Aileron, shipped inside Pillow)."""
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):          # Pillow < 10.1 or no FreeType
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def tint(colour, amount=0.8):
    """`colour` mixed with white: amount 0 is the colour, 1 is white."""
    return tuple(int(round(c + (255 - c) * amount)) for c in colour)


def num(v):
    v = float(v)
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.4f}".rstrip("0").rstrip(".")


def text(d, xy, s, size=14, fill=INK, anchor="la"):
    d.text(xy, s, font=font(size), fill=fill, anchor=anchor)


def arrow(d, p0, p1, fill=INK, width=2, head=9, dashed=False):
    """A line from p0 to p1 with a filled head at p1."""
    (x0, y0), (x1, y1) = p0, p1
    length = max(np.hypot(x1 - x0, y1 - y0), 1e-9)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    bx, by = x1 - ux * head, y1 - uy * head
    if dashed:
        t = 0.0
        while t < length - head:
            t1 = min(t + 7, length - head)
            d.line((x0 + ux * t, y0 + uy * t, x0 + ux * t1, y0 + uy * t1), fill=fill, width=width)
            t += 12
    else:
        d.line((x0, y0, bx, by), fill=fill, width=width)
    d.polygon([(x1, y1), (bx - uy * head * 0.5, by + ux * head * 0.5), (bx + uy * head * 0.5, by - ux * head * 0.5)],
              fill=fill)


def grid(d, x, y, M, cw, ch=None, fills=None, size=14, outline=GREY, labels=True, ink=None):
    """A matrix as cells with its numbers; fills: None, one colour, or a function (i, j) -> colour;
    ink: a function (i, j) -> the number's colour. Returns the cell box function (i, j) -> (x0, y0, x1, y1)."""
    M = np.atleast_2d(np.asarray(M, np.float64))
    ch = ch or cw

    def box(i, j):
        return (x + j * cw, y + i * ch, x + (j + 1) * cw, y + (i + 1) * ch)
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            fill = fills(i, j) if callable(fills) else fills
            d.rectangle(box(i, j), fill=fill or "white", outline=outline)
            if labels:
                x0, y0, x1, y1 = box(i, j)
                text(d, ((x0 + x1) / 2, (y0 + y1) / 2), num(M[i, j]), size, fill=ink(i, j) if ink else INK,
                     anchor="mm")
    return box


def title(d, width, main, sub=None):
    text(d, (width / 2, 16), main, 22, anchor="mt")
    if sub:
        text(d, (width / 2, 46), sub, 14, fill=(70, 70, 70), anchor="mt")


def canvas(width, height, main, sub=None):
    """A white figure with its title: (image, draw)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    title(d, width, main, sub)
    return img, d


def legend(d, x, y, items, size=14):
    """items: [(colour, label, style)] with style 'box', 'line' or 'dashed'."""
    for colour, label, style in items:
        if style == "box":
            d.rectangle((x, y + 2, x + 22, y + 16), fill=tint(colour, 0.6), outline=colour, width=2)
        else:
            arrow(d, (x, y + 9), (x + 30, y + 9), fill=colour, width=2, head=7, dashed=style == "dashed")
        text(d, (x + 38, y + 9), label, size, anchor="lm")
        y += 24
    return y


# ---- (a) im2col for a grouped convolution -----------------------------------------------------------
def im2col_grouped():
    c = examples.grouped_conv_example()
    W, H = 1220, 800
    img, d = canvas(W, H, "im2col for a grouped convolution: Conv2d(4 -> 2, 2x2, groups=2)",
          "x[c, h, w] = 10(c+1) + 3h + w + 1: tens digit = channel, units digit = pixel. "
          "Highlighted: the patch of output pixel (0, 1) and its column.")
    colours = (BLUE, ORANGE)
    pick = 1                                         # output pixel (0, 1) is column 1 of col_g
    pi, pj = c.cols[pick]
    K = c.kernel_size
    for g in range(c.groups):
        colour = colours[g]
        gx = 20 + g * 590                            # each group in its own column of the figure
        text(d, (gx, 82), f"group {g}: input channels {2 * g}-{2 * g + 1} -> output {g}", 17, fill=colour)
        # the group's two input channels
        patch_boxes = []
        for k in range(2):
            ch = 2 * g + k
            x0, y0, cell = gx + 20 + k * 170, 130, 38
            text(d, (x0 + 1.5 * cell, y0 - 8), f"channel {ch}", 14, anchor="mb")
            box = grid(d, x0, y0, c.x[ch], cell,
                       fills=lambda i, j: tint(colour, 0.55) if pi <= i < pi + K and pj <= j < pj + K
                       else tint(colour, 0.9))
            (ax0, ay0, _, _), (_, _, ax1, ay1) = box(pi, pj), box(pi + K - 1, pj + K - 1)
            d.rectangle((ax0, ay0, ax1, ay1), outline=colour, width=3)
            patch_boxes.append(((ax0 + ax1) / 2, ay1))
        # the patch matrix, with the weight row to its left and the product row under it (Falk's scheme)
        cw, chh, wx = 48, 26, 30
        colx, coly = gx + 8 * wx + 70, 300
        text(d, (colx - 8, coly - 6), f"col_{g} (8 x 4)", 14, anchor="rb")
        for j, (i_, j_) in enumerate(c.cols):
            text(d, (colx + (j + 0.5) * cw, coly - 6), f"({i_},{j_})", 12, anchor="mb")
        box = grid(d, colx, coly, c.col[g], cw, chh,
                   fills=lambda i, j: tint(colour, 0.55) if j == pick else tint(colour, 0.9))
        for r, (cc, p, q) in enumerate(c.rows):
            text(d, (colx - 6, coly + (r + 0.5) * chh), f"c{2 * g + cc} ({p},{q})", 12, anchor="rm")
        x0, y0, _, _ = box(0, pick)
        _, _, x1, y1 = box(7, pick)
        d.rectangle((x0, y0, x1, y1), outline=colour, width=3)
        for k, (px, py) in enumerate(patch_boxes):       # both patches -> the top of the column
            arrow(d, (px, py + 4), ((x0 + x1) / 2 + (k - 0.5) * 14, coly - 24), fill=colour, width=2)
        for k in range(2):
            ya, yb = coly + 4 * k * chh + 3, coly + 4 * (k + 1) * chh - 3
            bx = colx + 4 * cw + 8
            d.line((bx, ya, bx + 6, ya, bx + 6, yb, bx, yb), fill=colour, width=2)
            text(d, (bx + 12, (ya + yb) / 2), f"channel {2 * g + k}", 12, fill=colour, anchor="lm")
        # W_g as a row, left of the product row; product under col_g
        ry = coly + 8 * chh + 24
        wx0 = colx - 8 * wx - 20
        text(d, (wx0, ry - 6), f"W_{g} (1 x 8)", 13, anchor="lb")
        grid(d, wx0, ry, c.Wg[g], wx, chh, fills=tint(colour, 0.75))
        text(d, (colx - 10, ry + chh / 2), "x", 16, anchor="mm")
        grid(d, colx, ry, c.prod[g], cw, chh, fills=lambda i, j: tint(GREEN, 0.7) if j == pick else "white")
        text(d, (colx + 4 * cw + 8, ry + chh / 2), f"= W_{g} col_{g}", 13, anchor="lm")
        # + b -> the 2x2 output
        oy = ry + chh + 50
        text(d, (colx - 20, oy + 36), f"+ b = {num(c.b[g])}  ->  output {g}:", 14, anchor="rm")
        grid(d, colx, oy, c.out[g], 36, fills=lambda i, j: tint(GREEN, 0.7) if (i, j) == (pi, pj) else "white")
    text(d, (W / 2, H - 58), "Each group is one matrix product of its own filters and its own patch matrix: "
         "group 1's channels never enter group 0's product, nor the reverse.", 14, anchor="mm")
    text(d, (W / 2, H - 34), "The patch matrix is read from the layer's cache (ConvCache.chunks[0]); "
         "the numbers are docs/tools/examples.py's, checked against layers/reference.py.", 13,
         fill=(70, 70, 70), anchor="mm")
    return img


# ---- (b) the two towers, from the model ----------------------------------------------------------
def shape_text(shape):
    return "x".join(str(s) for s in shape)


def short_description(layer):
    """What a layer is, short enough for the figure's left margin, from its attributes."""
    if isinstance(layer, Conv2d):
        return (f"conv {layer.kernel_size}x{layer.kernel_size}/{layer.stride}, pad {layer.padding}, "
                f"groups {layer.groups}")
    if isinstance(layer, Dense):
        return f"dense {layer.in_features} -> {layer.out_features}"
    if isinstance(layer, LRN):
        return f"LRN over {layer.size} channels"
    return layer.describe()


def tower_rows(net):
    """One row per layer, read from the model: name, description, full output shape, per-tower shape,
    how it connects to the row above ('split' within each tower, 'full' both towers to both
    halves), and for LRN the channels whose window spans the split."""
    rows = []
    shape = (3, 227, 227)
    for (name, desc, out_shape, params, _), layer in zip(net.summary_rows(shape), net.layers):
        half = (out_shape[0] // 2,) + tuple(out_shape[1:])
        if isinstance(layer, Conv2d):
            connect = "split" if layer.groups == 2 else "full"
            if layer.groups not in (1, 2):
                raise ValueError(f"{name}: groups={layer.groups}; the figure draws two towers")
        elif isinstance(layer, Dense):
            connect = "full"
        else:
            connect = "split"
        span = None
        if isinstance(layer, LRN):
            h, r = shape[0] // 2, layer.size // 2
            span = (h - r, h + r - 1)               # channels whose window holds both towers' channels
        rows.append(dict(name=name, desc=short_description(layer), full=out_shape, half=half, params=params, connect=connect,
                         span=span, kind=type(layer).__name__))
        shape = out_shape
    return rows


def towers():
    net = AlexNet()
    rows = tower_rows(net)
    W = 1120
    heights = {"Conv2d": 40, "Dense": 40, "MaxPool2d": 30, "LRN": 30}

    def gap(r):
        return 46 if r["connect"] == "full" else 20
    top = 150
    H = top + 40 + sum(heights.get(r["kind"], 22) + gap(r) for r in rows) + 20 + 40 + 130
    img, d = canvas(W, H, "AlexNet's two towers, read from models.alexnet.AlexNet()",
          "The paper's Figure 2: each block is one half of a layer's output (shape per tower, from summary_rows); "
          "the towers exchange only where a layer has groups=1.")
    xa, xb, bw = 410, 720, 220                     # centres of the towers, box width
    text(d, (xa, top - 14), "tower 1 (GPU 1)", 15, fill=BLUE, anchor="mb")
    text(d, (xb, top - 14), "tower 2 (GPU 2)", 15, fill=ORANGE, anchor="mb")
    text(d, (20, top - 14), "layer", 14, fill=GREY, anchor="lb")
    text(d, (W - 20, top - 14), "output (summary_rows)", 14, fill=GREY, anchor="rb")
    y = top
    d.rectangle((xa - bw / 2, y, xb + bw / 2, y + 40), fill=LIGHT, outline=GREY)
    text(d, ((xa + xb) / 2, y + 20), "input image 3x227x227 (both towers see all of it)", 14, anchor="mm")
    prev = (y + 40, None)
    y += 40
    for r in rows:
        y += gap(r)
        h = heights.get(r["kind"], 22)
        small = h < 30
        for x, colour in ((xa, BLUE), (xb, ORANGE)):
            fill = tint(colour, 0.6 if r["kind"] in ("Conv2d", "Dense") else 0.88)
            d.rectangle((x - bw / 2, y, x + bw / 2, y + h), fill=fill, outline=colour)
            label = shape_text(r["half"]) if r["kind"] != "Flatten" else f"{r['half'][0]} features"
            text(d, (x, y + h / 2), f"{r['name']}  {label}", 12 if small else 14, anchor="mm")
        text(d, (20, y + h / 2), r["desc"], 12 if small else 13, fill=INK if not small else GREY, anchor="lm")
        right = shape_text(r["full"]) + (f"   {r['params']:,} params" if r["params"] else "")
        text(d, (W - 20, y + h / 2), right, 12 if small else 13, fill=INK if not small else GREY, anchor="rm")
        # connections from the row above
        y_above, _ = prev
        for x in (xa, xb):
            arrow(d, (x, y_above + 1), (x, y - 1), fill=(90, 90, 90), width=2, head=7)
        if r["connect"] == "full":
            inner = bw / 2 - 24
            arrow(d, (xa + inner, y_above + 1), (xb - inner, y - 1), fill=RED, width=2, head=9)
            arrow(d, (xb - inner, y_above + 1), (xa + inner, y - 1), fill=RED, width=2, head=9)
        if r["span"]:
            lo, hi = r["span"]
            yy = y + h / 2
            arrow(d, (xa + bw / 2 + 2, yy), (xb - bw / 2 - 2, yy), fill=RED, width=2, head=7, dashed=True)
            arrow(d, (xb - bw / 2 - 2, yy), (xa + bw / 2 + 2, yy), fill=RED, width=2, head=7, dashed=True)
            text(d, ((xa + xb) / 2, yy - 4), f"ch {lo}-{hi}", 11, fill=RED, anchor="mb")
        prev = (y + h, r)
        y += h
    y += 20
    d.rectangle((xa - bw / 2, y, xb + bw / 2, y + 40), fill=LIGHT, outline=GREY)
    text(d, ((xa + xb) / 2, y + 20), f"softmax over {rows[-1]['full'][0]} classes (engine/loss.py)", 14, anchor="mm")
    arrow(d, (xa, prev[0] + 1), (xa, y - 1), fill=(90, 90, 90), width=2, head=7)
    arrow(d, (xb, prev[0] + 1), (xb, y - 1), fill=(90, 90, 90), width=2, head=7)
    ly = y + 56
    lrn_rows = [r for r in rows if r["span"]]
    split = ", ".join(r["name"] for r in rows if r["kind"] == "Conv2d" and r["connect"] == "split")
    legend(d, 40, ly, [((90, 90, 90), f"within a tower: groups=2 ({split}), or a layer without weights", "line"),
                       (RED, "between towers: groups=1 or a dense layer, each half reads both halves", "line")]
           + ([(RED, "LRN: the window of channels "
                + ", ".join(f"{r['span'][0]}-{r['span'][1]} ({r['name']})" for r in lrn_rows)
                + " holds channels of both towers", "dashed")] if lrn_rows else []), size=13)
    return img


# ---- (c) overlapping pooling's gradient routing -----------------------------------------------------
def pool_routing():
    p = examples.pool_example()
    W, H = 1160, 640
    img, d = canvas(W, H, "Overlapping max-pool (3x3 windows, stride 2): where the gradient goes",
          "Each output keeps the argmax of its window (PoolCache.argmax); backward sends its dout there. "
          "Windows overlap, so one input can receive several.")
    colours = [BLUE, ORANGE, GREEN, PURPLE]
    K, S, cell = p.kernel_size, p.stride, 62
    xx, xy = 50, 130
    text(d, (xx + 2.5 * cell, xy - 10), "forward: x (5x5) and the four windows", 15, anchor="mb")
    argmax_cells = {rc: [] for _, _, rc in p.windows}
    for k, (i, j, rc) in enumerate(p.windows):
        argmax_cells[rc].append(k)
    xbox = grid(d, xx, xy, p.x, cell, fills=lambda i, j: tint(RED, 0.8) if len(argmax_cells.get((i, j), [])) > 1
                else "white", size=16)
    for k, (i, j, rc) in enumerate(p.windows):
        inset = 3 + 4 * k
        x0, y0, _, _ = xbox(S * i, S * j)
        _, _, x1, y1 = xbox(S * i + K - 1, S * j + K - 1)
        d.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), outline=colours[k], width=3)
    for rc, ks in argmax_cells.items():
        x0, y0, x1, y1 = xbox(*rc)
        for n, k in enumerate(ks):
            r = 22 - 5 * n
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colours[k], width=3)
    # out and dout, in the middle
    mx = 520
    text(d, (mx + cell, 120), "out = max", 15, anchor="mb")
    obox = grid(d, mx, 130, p.out, cell, fills=lambda i, j: tint(colours[2 * i + j], 0.7), size=16)
    text(d, (mx + cell, 300), "dout (given)", 15, anchor="mb")
    dboxes = {}
    for k, (i, j, _) in enumerate(p.windows):       # one cell per output, in a column: arrows leave freely
        y0 = 310 + k * 40
        box = (mx + 40, y0, mx + 40 + 84, y0 + 32)
        d.rectangle(box, fill=tint(colours[k], 0.7), outline=GREY)
        text(d, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), num(p.dout[i, j]), 16, anchor="mm")
        text(d, (box[0] - 6, (box[1] + box[3]) / 2), f"({i},{j})", 13, anchor="rm")
        dboxes[(i, j)] = box
    for k, (i, j, rc) in enumerate(p.windows):      # forward: argmax -> out
        x0, y0, x1, y1 = xbox(*rc)
        o = obox(i, j)
        arrow(d, (x1 - 4, (y0 + y1) / 2 + (k - 1.5) * 6), (o[0] - 2, (o[1] + o[3]) / 2), fill=colours[k], width=1, head=7)
    # dx on the right
    rx, ry = 820, 130
    text(d, (rx + 2.5 * cell, ry - 10), "backward: dx (5x5)", 15, anchor="mb")
    rbox = grid(d, rx, ry, p.dx, cell, fills=lambda i, j: tint(RED, 0.8) if len(argmax_cells.get((i, j), [])) > 1
                else (tint(GREY, 0.8) if p.dx[i, j] else "white"), size=16,
                ink=lambda i, j: INK if p.dx[i, j] else (185, 185, 185))
    for rc, ks in argmax_cells.items():
        for n, k in enumerate(ks):                   # backward: dout -> dx at the argmax
            i, j, _ = p.windows[k]
            s, t = dboxes[(i, j)], rbox(*rc)
            start = (s[2] + 2, (s[1] + s[3]) / 2 + (n - (len(ks) - 1) / 2) * 8)
            end = (t[0] + 4, (t[1] + t[3]) / 2 + (n - (len(ks) - 1) / 2) * 14)
            arrow(d, start, end, fill=colours[k], width=3, head=10)
        if len(ks) > 1:
            x0, y0, x1, y1 = rbox(*rc)
            text(d, ((x0 + x1) / 2, y1 - 4), " + ".join(num(p.dout[p.windows[k][0], p.windows[k][1]]) for k in ks),
                 11, fill=RED, anchor="mb")
    ly = 470
    y = legend(d, 50, ly, [(colours[k], f"window ({i}, {j}): rows {S * i}-{S * i + K - 1}, cols {S * j}-{S * j + K - 1}; "
                                        f"max {num(p.out[i, j])} at {rc}", "box")
                           for k, (i, j, rc) in enumerate(p.windows)], size=13)
    shared = [(rc, ks) for rc, ks in argmax_cells.items() if len(ks) > 1]
    for rc, ks in shared:
        text(d, (50, y + 14), f"input {rc} (red) is the maximum of {len(ks)} windows: dx{list(rc)} = "
             + " + ".join(num(p.dout[p.windows[k][0], p.windows[k][1]]) for k in ks) + f" = {num(p.dx[rc])}", 15)
        y += 24
    text(d, (50, y + 20), "Circles: each window's argmax. Arrows on the left: the forward's max; on the right: "
         "the backward's dout, added where it lands.", 13, fill=(70, 70, 70))
    return img


# ---- (d) a Winograd F(2x2, 3x3) tile ----------------------------------------------------------------
def winograd_tile():
    w = examples.winograd_example()
    W, H = 1160, 800
    img, d = canvas(W, H, "Winograd F(2x2, 3x3) on one tile: Y = A^T [ (G g G^T) * (B^T d B) ] A",
          "A 4x4 input tile d and a 3x3 filter g give a 2x2 output with 16 multiplications "
          "(the elementwise product) instead of 36 (layers/conv_winograd.py).")
    c = 46

    def labelled(x, y, M, name, colour, sub=""):
        text(d, (x, y - 8), name, 15, fill=colour, anchor="lb")
        if sub:
            text(d, (x + M.shape[1] * c, y - 8), sub, 12, fill=GREY, anchor="rb")
        return grid(d, x, y, M, c, fills=tint(colour, 0.85), size=14)

    labelled(40, 110, w.d, "d (input tile)", BLUE)
    labelled(40 + c * 0.5, 390, w.g, "g (filter)", ORANGE)
    labelled(330, 110, w.V, "V = B^T d B", BLUE)
    labelled(330, 390, w.U, "U = G g G^T", ORANGE)
    labelled(650, 250, w.M, "M = U * V", GREEN, "16 products")
    labelled(970, 296, w.Y, "Y = A^T M A", PURPLE)
    arrow(d, (40 + 4 * c + 10, 110 + 2 * c), (330 - 12, 110 + 2 * c), fill=BLUE, width=3)
    text(d, ((40 + 4 * c + 330) / 2, 110 + 2 * c - 8), "B^T d B", 14, fill=BLUE, anchor="mb")
    arrow(d, (40 + 3.5 * c + 10, 390 + 1.5 * c), (330 - 12, 390 + 2 * c), fill=ORANGE, width=3)
    text(d, ((40 + 3.5 * c + 330) / 2, 390 + 1.5 * c - 10), "G g G^T", 14, fill=ORANGE, anchor="mb")
    arrow(d, (330 + 4 * c + 10, 110 + 3 * c), (650 - 12, 250 + 1 * c), fill=GREEN, width=3)
    arrow(d, (330 + 4 * c + 10, 390 + 1 * c), (650 - 12, 250 + 3 * c), fill=GREEN, width=3)
    text(d, (560, 250 + 2 * c), "elementwise", 13, fill=GREEN, anchor="mm")
    arrow(d, (650 + 4 * c + 10, 250 + 2 * c), (970 - 12, 296 + c), fill=PURPLE, width=3)
    text(d, ((650 + 4 * c + 970) / 2, 250 + 2 * c - 12), "A^T M A", 14, fill=PURPLE, anchor="mb")
    text(d, (970, 296 + 2 * c + 30), "the direct sum (36 products):", 13, fill=GREY, anchor="la")
    text(d, (970, 296 + 2 * c + 48), "sum_pq g[p, q] d[i+p, j+q]", 12, fill=GREY, anchor="la")
    grid(d, 970, 296 + 2 * c + 66, w.direct, c, fills=tint(GREY, 0.85), size=14)
    i, j = 1, 1
    text(d, (650 + 2 * c, 250 + 4 * c + 22), f"e.g. M[{i},{j}] = U[{i},{j}] V[{i},{j}] = {num(w.U[i, j])} x "
         f"{num(w.V[i, j])} = {num(w.M[i, j])}", 13, fill=GREEN, anchor="mt")
    # the transforms
    by = 660
    text(d, (40, by - 30), "The transforms (layers/conv_winograd.py):", 14, anchor="lb")
    mc = 30
    for x, M, name in ((40, w.BT, "B^T"), (260, w.G, "G"), (440, w.AT, "A^T")):
        text(d, (x, by + M.shape[0] * mc / 2), name, 15, anchor="lm")
        grid(d, x + 40, by, M, mc, size=12)
    text(d, (620, by + 10), "Summed over input channels, the 16 products become 16 matrix", 13, anchor="la")
    text(d, (620, by + 30), "products, one per position of the 4x4 tile: M[xi] = U[xi] @ V[xi].", 13, anchor="la")
    text(d, (620, by + 58), "Numbers: docs/tools/examples.py, checked against", 13, fill=GREY, anchor="la")
    text(d, (620, by + 78), "Conv2d(algorithm='winograd') and reference.conv_forward.", 13, fill=GREY, anchor="la")
    return img


FIGURES = {
    "im2col_grouped.png": im2col_grouped,
    "alexnet_towers.png": towers,
    "pool_gradient_routing.png": pool_routing,
    "winograd_tile.png": winograd_tile,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="folder to write the PNGs to")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for name, draw in FIGURES.items():
        t = time.time()
        img = draw()
        img.save(args.out / name, optimize=True)
        print(f"{args.out / name}: {img.size[0]}x{img.size[1]} ({time.time() - t:.1f} s)")
    print(f"{len(FIGURES)} figures in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

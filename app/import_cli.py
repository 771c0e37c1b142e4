"""`alexnet import` (published weights -> a checkpoint) and `alexnet export` (a checkpoint -> ONNX).

app/cli.py builds the parser and calls `register`. The readers live in app/torch_format.py
(torch.save files, without PyTorch) and app/caffe_format.py (.caffemodel), the mapping onto our
models in app/weights.py, the ONNX graph in app/onnx_export.py; docs/weights.md walks through them.
"""
import os
import time

from alexnet.app.errors import UserError

FORMATS = ("torchvision", "caffe")


def register(subparsers):
    p = subparsers.add_parser(
        "import", help="published AlexNet weights (torchvision .pth, Caffe .caffemodel) as a checkpoint",
        description="Write FILE's weights as an ordinary checkpoint that predict, eval and export use: "
                    "torchvision's alexnet-owt-*.pth becomes alexnet-tv, Caffe's bvlc_alexnet.caffemodel "
                    "becomes alexnet (the paper's two towers). Each source's input normalisation is folded "
                    "into conv1 and data/mean, so our RGB 0..255 pipeline feeds it as trained "
                    "(docs/weights.md). The file is read without PyTorch or Caffe and nothing in it is run.")
    p.add_argument("source", metavar="FILE", help="alexnet-owt-*.pth (torch.save state dict) or *.caffemodel")
    p.add_argument("--out", "-o", metavar="CKPT", help="checkpoint to write (default: FILE's name ending in .npz, "
                                                       "in the current folder)")
    p.add_argument("--format", choices=FORMATS,
                   help="what FILE is (default: torchvision for a zip archive or pickle, else caffe)")
    p.add_argument("--classes", metavar="NAMES",
                   help="a text file of class names, one per line (default: ImageNet's 1000 names, e.g. "
                        "'tench'; for `alexnet eval` on an ImageNet folder give its class folder names, e.g. "
                        "`ls DIR/val > wnids.txt`)")
    p.add_argument("--mean", metavar="BINARYPROTO",
                   help="Caffe only: subtract this per-pixel mean image (imagenet_mean.binaryproto) instead of "
                        "ImageNet's channel means")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser(
        "export", help="a checkpoint's network as an ONNX model",
        description="Write CKPT's network as an ONNX model (opset 17): input `image` (N, 3, S, S) float32, "
                    "the normalised RGB tensor our model takes; outputs `logits` and `probabilities`. The "
                    "normalisation (mean, scale, crop) and the class names are in its metadata_props.")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.set_defaults(func=cmd_export)


def sniff_format(path):
    """torchvision for what torch.save writes (a zip archive, a pickle in the legacy layout, a tar
    archive in the oldest one, which the reader then names); caffe otherwise (protobuf has no
    magic number)."""
    from alexnet.app import torch_format

    with open(path, "rb") as f:
        head = f.read(512)
    return "caffe" if torch_format.layout(head) is None else "torchvision"


def import_weights(source, fmt=None, classes_path=None, mean_path=None):
    """(arrays, meta, imported) of the checkpoint that `source` becomes."""
    from alexnet.app import weights
    from alexnet.app.checkpoint import non_finite
    from alexnet.app.files import check_input

    check_input(source)
    fmt = fmt or sniff_format(source)
    if mean_path and fmt != "caffe":
        raise UserError("--mean is for Caffe models (torchvision's mean is fixed and folded in)")
    # the small inputs first: a bad one is told before the weights (hundreds of MB) are read
    given_names = weights.read_class_names(classes_path) if classes_path else None
    origin = {"format": fmt, "file": os.path.basename(source)}
    if fmt == "torchvision":
        from alexnet.app import torch_format

        digest = weights.check_hash_in_name(source)
        if digest:
            origin["sha256_prefix"] = digest
        imported = weights.from_torchvision(torch_format.load(source))
    else:
        from alexnet.app import caffe_format

        mean = caffe_format.read_mean(mean_path) if mean_path else None
        imported = weights.from_caffe(caffe_format.read_net(source), mean)
    names = weights.class_names(imported.num_classes, given_names, classes_path)
    arrays, meta = weights.checkpoint_contents(imported, names, origin)
    # a NaN weight or mean would make every prediction NaN: refused here, as every load refuses it
    bad = non_finite(arrays)
    if bad:
        raise UserError(f"{source} has non-finite weights ({bad}): refusing to import them")
    return arrays, meta, imported


def cmd_import(args):
    from alexnet.app import checkpoint
    from alexnet.app.files import check_output

    t0 = time.perf_counter()
    out = args.out or os.path.splitext(os.path.basename(args.source))[0] + ".npz"
    inputs = (args.source, args.classes, args.mean)
    check_output(out, inputs, folder_must_exist=True)   # before the reading: it may take a while
    arrays, meta, imported = import_weights(args.source, args.format, args.classes, args.mean)
    checkpoint.save(out, arrays, meta, inputs)
    params = sum(a.size for k, a in arrays.items() if k.startswith("model/"))
    print(f"imported {meta['imported_from']['format']} weights from {args.source}: {imported.arch}, "
          f"{imported.num_classes} classes, {params:,} parameters ({time.perf_counter() - t0:.1f} s)")
    for note in imported.notes:
        print(f"  {note}")
    print(f"wrote {out}; try: alexnet predict --checkpoint {out} IMAGE")
    return 0


def cmd_export(args):
    from alexnet.app import onnx_export

    t0 = time.perf_counter()
    model = onnx_export.export(args.checkpoint, args.onnx)
    props = {p.key: p.value for p in model.metadata_props}
    print(f"wrote {args.onnx}: {props['arch']}, opset {onnx_export.OPSET}, input image (N, 3, {props['input_size']}, "
          f"{props['input_size']}) = (RGB pixels - {props['mean_rgb']}) * {props['input_scale']}; outputs logits, "
          f"probabilities ({time.perf_counter() - t0:.1f} s)")
    return 0

"""Checkpoints: one ``.npz`` file holding arrays and a JSON metadata record, written atomically.

Layout of the archive (NumPy's zip of ``.npy`` members, loaded with ``allow_pickle=False``):

    model/<layer>.<param>       the weights, e.g. model/conv1.W
    optim/<layer>.<param>       the momentum buffers v of the paper's update rule
    data/mean                   the training mean the model was trained against (float32)
    __meta__                    uint8 bytes of a UTF-8 JSON object:
                                format, arch, num_classes, classes, input_size, resize_size,
                                epoch, batch (position inside the epoch), step, lr,
                                schedule state, dropout RNG states, data seed, val metrics, ...

Keeping the metadata inside the archive means one file is the whole state, so the single
``os.replace`` that publishes it is the one atomic step: a reader sees the old checkpoint or the
new one, never a mix, and a crash mid-write leaves only a ``.tmp`` file that nothing loads (and
that the trainer removes the next time it opens the run: app/rundir.py).
"""

import json
import math
import os
import tempfile
import zipfile
from collections import namedtuple

import numpy as np

from alexnet.app.errors import UserError
from alexnet.app.files import TEMP_SUFFIX, atomic_write, check_input, check_output, fsync_dir

FORMAT = "alexnet-checkpoint-v1"
META_KEY = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"


def save(path, arrays, meta, inputs=()):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-serialisable dict) to ``path``,
    atomically (``atomic_write``; ``inputs``: the files the command read, never overwritten)."""
    meta = dict(meta, format=FORMAT)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload), inputs)


def estimate_size(arrays):
    """Bytes a checkpoint of ``arrays`` takes on disk (uncompressed .npz: the data plus a few
    hundred bytes of zip and .npy headers per member, and the metadata)."""
    return sum(np.asarray(v).nbytes + 300 + 2 * len(k) for k, v in arrays.items()) + 64 * 1024


def load(path):
    """Read a checkpoint: (arrays dict, meta dict). Every array is read eagerly, so a truncated or
    corrupt file fails here with a clear UserError rather than later, mid-training; and every
    array's size is checked against the bytes the file holds for it before it is allocated."""
    size = check_input(path, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from None
    # A checkpoint is a zip archive. Anything else would reach np.load's other readers (a .npy
    # array, or a pickle it then refuses with advice to allow pickles): say what it is not.
    # A file shorter than the magic that starts like it is a truncated checkpoint.
    if head and not _ZIP_MAGIC.startswith(head):
        raise UserError(f"{path} is not an alexnet checkpoint (not an .npz archive)")
    try:
        _check_members(path, size)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})".splitlines()[0]) from None
    if META_KEY not in arrays:
        raise UserError(f"{path} is not an alexnet checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"checkpoint {path} has corrupt metadata") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} has corrupt metadata (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet checkpoint (format {meta.get('format')!r})")
    return arrays, meta


def _check_members(path, size):
    """Every member of the archive must hold the bytes its .npy header declares: a header that
    declares 10^12 elements is refused here, before np.load allocates them. np.savez stores its
    members uncompressed, so together they cannot declare more bytes than the file has."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > size:
            raise ValueError(f"its members declare {declared:,} bytes, the file has {size:,} (compressed, or damaged)")
        for info in infos:
            with z.open(info) as f:
                version = npy.read_magic(f)
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(f)
                need = math.prod(shape) * dtype.itemsize
                if need != info.file_size - f.tell():
                    raise ValueError(f"member {info.filename} declares {shape} {dtype}, {need:,} bytes, and holds "
                                     f"{info.file_size - f.tell():,}")


def split(arrays, prefix):
    """The arrays under ``prefix/`` with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def non_finite(arrays, prefixes=("model/", "optim/", "data/")):
    """'model/conv1.W: 12 of 34848 NaN/inf, ...' for the floating-point arrays under ``prefixes``
    that are not all finite; '' when every one is."""
    bad = []
    for name, a in arrays.items():
        if name.startswith(prefixes) and np.issubdtype(a.dtype, np.floating):
            count = a.size - int(np.count_nonzero(np.isfinite(a)))
            if count:
                bad.append(f"{name}: {count} of {a.size} NaN/inf")
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


ModelSpec = namedtuple("ModelSpec", "arch num_classes classes options dropout dropout_variant")

# The architecture options a checkpoint may hold, and the JSON types of their values (the model's
# builder checks the values: models/alexnet.py)
_OPTION_TYPES = {"lrn": bool, "groups": int, "pool": (list, tuple), "activation": str}


def model_spec(path, meta):
    """The network a checkpoint's metadata describes, every field checked: a hand-edited or damaged
    record is one line naming the field, never built or used as it is."""
    from alexnet.layers.dropout import VARIANTS
    from alexnet.models.registry import MODEL_NAMES

    def bad(field, value, want):
        return UserError(f"checkpoint {path}: its metadata's {field} is {json.dumps(value)[:60]}, not {want}")

    arch, count, classes = meta.get("arch"), meta.get("num_classes"), meta.get("classes")
    if arch not in MODEL_NAMES:
        raise bad("arch", arch, f"a model this version can build ({', '.join(MODEL_NAMES)})")
    if not _is_int(count) or count < 2:
        raise bad("num_classes", count, "an integer >= 2")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("classes", classes, f"a list of {count} class names")
    if len(classes) != count:
        raise UserError(f"checkpoint {path}: its metadata names {len(classes)} classes, its num_classes is {count}")
    options = meta.get("model_options", {})
    if not isinstance(options, dict) or any(not isinstance(v, _OPTION_TYPES.get(k, object)) or
                                            (k == "groups" and isinstance(v, bool)) for k, v in options.items()):
        raise bad("model_options", options, "an object of architecture options (lrn, groups, pool, activation)")
    dropout, variant = meta.get("dropout", 0.5), meta.get("dropout_variant", "inverted")
    if not (_is_number(dropout) and 0 <= dropout < 1):
        raise bad("dropout", dropout, "a probability in [0, 1)")
    if variant not in VARIANTS:
        raise bad("dropout_variant", variant, f"one of {', '.join(VARIANTS)}")
    return ModelSpec(arch, count, classes, options, dropout, variant)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_weights(path, weights, shapes, arch):
    """Raise a UserError naming the difference unless ``weights`` (name -> array) has exactly the
    parameters ``shapes`` (name -> shape) of network ``arch``."""
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing or extra:
        raise UserError(f"checkpoint {path} does not match {arch}: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, shape in shapes.items():
        if weights[k].shape != tuple(shape):
            raise UserError(f"checkpoint {path}: {k} has shape {weights[k].shape}, {arch} needs {tuple(shape)}")


def check_model(path, meta, weights, model):
    """Raise a UserError naming the difference when the checkpoint does not fit ``model``."""
    arch, classes = meta.get("arch"), meta.get("num_classes")
    if arch != model.arch or classes != model.num_classes:
        raise UserError(
            f"checkpoint {path} is for {arch} with {classes} classes, but the model here is "
            f"{model.arch} with {model.num_classes} classes")
    check_weights(path, weights, {k: v.shape for k, v in model.state_dict().items()}, model.arch)


def load_model(path, device="cpu", precision="fp32"):
    """Rebuild the model a checkpoint was trained as, load its weights, and say how it takes its
    input; on the GPU, computing in `precision` (engine/precision.py), whatever it was trained in.
    Returns (model, meta, preprocessing: app/preprocess.py). Used by eval, predict, plot,
    saliency, neighbors and export, which have no config of their own. Everything is checked
    before the model is built: the metadata, every weight's shape for the class count it
    declares, and that the weights and the mean are finite."""
    from alexnet.app.preprocess import Preprocessing
    from alexnet.models.registry import build_model, parameter_shapes

    arrays, meta = load(path)
    spec = model_spec(path, meta)
    weights = split(arrays, "model")
    try:
        shapes = parameter_shapes(spec.arch, spec.num_classes, **spec.options)
    except ValueError as e:
        raise UserError(f"checkpoint {path} names no model this version can build ({e})") from None
    check_weights(path, weights, shapes, spec.arch)
    bad = non_finite(arrays, ("model/",))
    if bad:
        raise UserError(f"checkpoint {path} has non-finite weights ({bad})")
    # the dropout variant decides what inference multiplies by (older checkpoints: inverted)
    model = build_model(spec.arch, spec.num_classes, init=None, dropout=spec.dropout,
                        dropout_variant=spec.dropout_variant, **spec.options)
    model.load_state_dict(weights)
    prep = Preprocessing.from_checkpoint(arrays, meta, model, f"checkpoint {path}")
    if device != "cpu" or precision != "fp32":
        model.to(device, precision)
    return model, meta, prep


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: ``ckpt-<step>.npz`` files, the last ``keep`` kept,
    plus ``best.npz`` (highest validation top-1)."""

    PREFIX, SUFFIX = "ckpt-", ".npz"

    def __init__(self, directory, keep=3):
        self.directory = directory
        self.keep = keep

    def path_for(self, step):
        return os.path.join(self.directory, f"{self.PREFIX}{step:08d}{self.SUFFIX}")

    @classmethod
    def step_of(cls, path):
        """The global step in a ckpt-<step>.npz name."""
        return int(os.path.basename(path)[len(cls.PREFIX) : -len(cls.SUFFIX)])

    @property
    def best_path(self):
        return os.path.join(self.directory, "best.npz")

    def list(self):
        """Completed checkpoints, oldest first (temp files from interrupted writes never match)."""
        if not os.path.isdir(self.directory):
            return []
        names = []
        for name in os.listdir(self.directory):
            stem = name[len(self.PREFIX) : -len(self.SUFFIX)]
            if name.startswith(self.PREFIX) and name.endswith(self.SUFFIX) and stem.isdigit():
                names.append((int(stem), name))
        return [os.path.join(self.directory, n) for _, n in sorted(names)]

    def latest(self):
        paths = self.list()
        return paths[-1] if paths else None

    def save(self, step, arrays, meta, is_best=False):
        os.makedirs(self.directory, exist_ok=True)
        path = self.path_for(step)
        save(path, arrays, meta)
        if is_best:
            self._publish_best(path)
        for old in self.list()[: -self.keep] if self.keep > 0 else []:
            os.unlink(old)
        return path

    def _publish_best(self, path):
        """best.npz as a hard link to the checkpoint (no second copy of the weights), swapped in
        atomically, by app/files.py's rule (through a symbolic link, its target); a plain copy
        where the filesystem has no hard links."""
        target = check_output(self.best_path)
        directory = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=TEMP_SUFFIX, dir=directory)
        os.close(fd)
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            def copy(f):
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, f)

            atomic_write(self.best_path, copy)
            return
        os.replace(tmp, target)
        fsync_dir(directory)

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
import os
import tempfile
import zipfile

import numpy as np

from alexnet.app.errors import UserError
from alexnet.app.files import TEMP_SUFFIX, atomic_write, fsync_dir

FORMAT = "alexnet-checkpoint-v1"
META_KEY = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"


def save(path, arrays, meta):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-serialisable dict) to ``path``,
    atomically (``atomic_write``)."""
    meta = dict(meta, format=FORMAT)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


def estimate_size(arrays):
    """Bytes a checkpoint of ``arrays`` takes on disk (uncompressed .npz: the data plus a few
    hundred bytes of zip and .npy headers per member, and the metadata)."""
    return sum(np.asarray(v).nbytes + 300 + 2 * len(k) for k, v in arrays.items()) + 64 * 1024


def load(path):
    """Read a checkpoint: (arrays dict, meta dict). Every array is read eagerly, so a truncated or
    corrupt file fails here with a clear UserError rather than later, mid-training."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found")
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
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})".splitlines()[0]) from None
    if META_KEY not in arrays:
        raise UserError(f"{path} is not an alexnet checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"checkpoint {path} has corrupt metadata") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet checkpoint (format {meta.get('format')!r})")
    return arrays, meta


def split(arrays, prefix):
    """The arrays under ``prefix/`` with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def check_model(path, meta, weights, model):
    """Raise a UserError naming the difference when the checkpoint does not fit ``model``."""
    arch, classes = meta.get("arch"), meta.get("num_classes")
    if arch != model.arch or classes != model.num_classes:
        raise UserError(
            f"checkpoint {path} is for {arch} with {classes} classes, but the model here is "
            f"{model.arch} with {model.num_classes} classes")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        raise UserError(f"checkpoint {path} does not match {model.arch}: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in own.items():
        if weights[k].shape != v.shape:
            raise UserError(f"checkpoint {path}: {k} has shape {weights[k].shape}, {model.arch} needs {v.shape}")


def load_model(path, device="cpu", precision="fp32"):
    """Rebuild the model a checkpoint was trained as, load its weights, and say how it takes its
    input; on the GPU, computing in `precision` (engine/precision.py), whatever it was trained in.
    Returns (model, meta, preprocessing: app/preprocess.py). Used by eval, predict, plot,
    saliency, neighbors and export, which have no config of their own."""
    from alexnet.app.preprocess import Preprocessing
    from alexnet.models.registry import build_model

    arrays, meta = load(path)
    try:
        # the dropout variant decides what inference multiplies by (older checkpoints: inverted),
        # the architecture options which layers there are
        model = build_model(meta["arch"], meta["num_classes"], dropout=meta.get("dropout", 0.5),
                            dropout_variant=meta.get("dropout_variant", "inverted"),
                            **meta.get("model_options", {}))
    except (KeyError, ValueError) as e:
        raise UserError(f"checkpoint {path} names no model this version can build ({e})") from None
    weights = split(arrays, "model")
    check_model(path, meta, weights, model)
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
        atomically; a plain copy where the filesystem has no hard links."""
        fd, tmp = tempfile.mkstemp(prefix=".best.npz.", suffix=TEMP_SUFFIX, dir=self.directory)
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
        os.replace(tmp, self.best_path)
        fsync_dir(self.directory)

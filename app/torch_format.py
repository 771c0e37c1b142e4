"""Reading `torch.save` files (e.g. torchvision's alexnet-owt-*.pth) without PyTorch, and safely.

A .pth file is a pickle, and unpickling runs whatever callables the file names: a file from the
internet that says `os.system` gets a shell. So nothing here calls `pickle.load`. `_Unpickler`
resolves exactly the globals a state dict needs and refuses every other one before it exists:

    collections.OrderedDict          the state dict itself (and its per-tensor hook dicts)
    torch._utils._rebuild_tensor_v2  a tensor: (storage, offset, size, stride, ...) -- replaced by
                                     a function of ours that only records those numbers
    torch.<Type>Storage              the element type of a storage, e.g. torch.FloatStorage

Storages come through `persistent_load` as ("storage", type, key, location, numel[, view]) and are
read by us, from the archive, as raw little-endian bytes; tensors become NumPy arrays through
checked strides. Nothing in the file can make this module call anything else.

Two layouts (torch/serialization.py):
- zip (PyTorch >= 1.6, the default): <name>/data.pkl, <name>/data/<key> (one raw file per
  storage), <name>/byteorder ("little" or "big", absent in older files: little).
- legacy (torch.save(..., _use_new_zipfile_serialization=False), PyTorch < 1.6): five pickles in a
  row -- magic number, protocol version 1001, system info, the object, the list of storage keys --
  then each storage as an int64 element count and its bytes, in the order of that list.
The even older tar layout (PyTorch < 0.1.10) is refused.
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from alexnet.app.errors import UserError, one_line

MAX_PICKLE_BYTES = 64 << 20
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<name>Storage -> NumPy element type ("bf16" has no NumPy type: widened to float32 below)
STORAGE_TYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
                 "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                 "ByteStorage": "u1", "BoolStorage": "?"}


class Refused(pickle.UnpicklingError):
    """The pickle asked for something a state dict never contains."""


class _StorageType:
    """What `torch.FloatStorage` and friends unpickle to: just the element type's name."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Storage:
    """One storage: its key in the archive, element type, element count; `data` once read."""
    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, None


class _TensorRef:
    """A tensor as _rebuild_tensor_v2's arguments; made into an array once the storages are read
    (the legacy layout stores them after the pickle that references them)."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_):
    """Stands in for torch._utils._rebuild_tensor_v2; the trailing requires_grad, backward hooks
    and metadata arguments mean nothing for weights."""
    return _TensorRef(storage, storage_offset, size, stride)


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_TYPES})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file, encoding="utf-8")     # as torch.load: Python 2 era files
        self.storages = storages          # key -> _Storage, shared by every tensor that views it

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"it asks for {module}.{name}, which a PyTorch state dict never contains "
                          f"(only tensors, their storages and OrderedDicts are read)")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], (str, bytes))
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise Refused(f"it holds a persistent object {str(pid)[:60]} that is not a tensor storage")
        if len(pid) == 6 and pid[5] is not None:
            raise Refused("it holds a storage view (PyTorch < 0.4 files); re-save it with a current PyTorch")
        key = pid[2].decode() if isinstance(pid[2], bytes) else pid[2]
        dtype = STORAGE_TYPES[pid[1].name]
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, dtype, pid[4])
        elif (storage.dtype, storage.numel) != (dtype, pid[4]):
            raise UserError(f"storage {key} is declared twice with different types or sizes")
        return storage


def layout(head):
    """Which torch.save layout a file's first 512 bytes show: "zip" (PyTorch >= 1.6), "legacy" (a
    pickle), "tar" (PyTorch < 0.1.10), or None for none of them."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def load(path):
    """Everything the file holds, with every tensor as a NumPy array (read-only). Raises
    UserError for anything that is not a well-formed torch.save file of tensors."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    kind = layout(head)
    if kind == "zip":
        read = _read_zip
    elif kind == "legacy":
        read = _read_legacy
    elif kind == "tar":
        raise UserError(f"{path} is a PyTorch file in the tar layout of PyTorch < 0.1.10; re-save it with "
                        f"a current PyTorch (torch.save(torch.load(...)))")
    else:
        raise UserError(f"{path} is not a PyTorch file (neither a torch.save zip archive nor a pickle)")
    try:
        return read(path)
    except Refused as e:
        raise UserError(f"refusing to load {path}: {e}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, struct.error, UnicodeDecodeError, OverflowError, RecursionError) as e:
        raise UserError(f"{path} is truncated or not a PyTorch state dict ({one_line(e)})") from None


def _read_zip(path):
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UserError("a zip archive without exactly one <name>/data.pkl, so not a torch.save file")
        prefix = pickles[0][:-len("data.pkl")]
        # a state dict's pickle is kilobytes (the numbers are in the storages): refuse to inflate
        # a large one, e.g. a compressed bomb, into memory
        size = z.getinfo(pickles[0]).file_size
        if size > MAX_PICKLE_BYTES:
            raise UserError(f"its data.pkl is {size} bytes, far more than a state dict needs")
        order = "<"
        if prefix + "byteorder" in z.namelist():
            order = {b"little": "<", b"big": ">"}.get(z.read(prefix + "byteorder").strip())
            if order is None:
                raise UserError("its byteorder record is neither little nor big")
        storages = {}
        obj = _Unpickler(io.BytesIO(z.read(pickles[0])), storages).load()
        for s in storages.values():
            name = f"{prefix}data/{s.key}"
            try:
                info = z.getinfo(name)
            except KeyError:
                raise UserError(f"storage {s.key} is missing from the archive") from None
            # the size is checked before reading, so a corrupt count cannot make us read gigabytes
            if info.file_size != s.numel * _itemsize(s.dtype):
                raise UserError(f"storage {s.key} holds {info.file_size} bytes, its tensor needs "
                                f"{s.numel * _itemsize(s.dtype)}")
            s.data = _as_array(z.read(name), s.dtype, order)
    return _materialize(obj)


def _read_legacy(path):
    storages = {}
    with open(path, "rb") as f:
        # the header pickles go through the same restricted unpickler: nothing is trusted
        if _Unpickler(f, storages).load() != LEGACY_MAGIC:
            raise UserError("a pickle, but not a torch.save file (no PyTorch magic number)")
        if _Unpickler(f, storages).load() != LEGACY_PROTOCOL:
            raise UserError("a legacy torch.save file of an unknown protocol version")
        sys_info = _Unpickler(f, storages).load()
        order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
        obj = _Unpickler(f, storages).load()
        keys = _Unpickler(f, storages).load()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise UserError("its list of storages does not match the storages its tensors use")
        for key in keys:
            s = storages[str(key)]
            (count,) = struct.unpack(order + "q", f.read(8))
            if count != s.numel:
                raise UserError(f"storage {s.key} holds {count} elements, its tensor needs {s.numel}")
            nbytes = count * _itemsize(s.dtype)
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise UserError(f"the file ends inside storage {s.key}")
            s.data = _as_array(raw, s.dtype, order)
    return _materialize(obj)


def _itemsize(dtype):
    return 2 if dtype == "bf16" else np.dtype(dtype).itemsize


def _as_array(raw, dtype, order):
    """Raw storage bytes -> a flat NumPy array (bfloat16 widened to float32: its 16 bits are the
    top half of a float32)."""
    if dtype == "bf16":
        return (np.frombuffer(raw, order + "u2").astype(np.uint32) << 16).view(np.float32)
    a = np.frombuffer(raw, np.dtype(dtype).newbyteorder(order) if dtype not in ("?", "i1", "u1") else dtype)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def _materialize(obj):
    """Replace every tensor reference in nested dicts, lists and tuples by its array."""
    if isinstance(obj, _TensorRef):
        return _tensor(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _tensor(ref):
    """The array a tensor views: `size` elements from `offset` with `stride` (in elements), all of
    it checked to lie inside the storage before any memory is touched."""
    s = ref.storage
    if not (isinstance(s, _Storage) and s.data is not None and isinstance(ref.offset, int)
            and isinstance(ref.size, tuple) and isinstance(ref.stride, tuple) and len(ref.size) == len(ref.stride)
            and all(isinstance(v, int) and v >= 0 for v in ref.size + ref.stride) and ref.offset >= 0):
        raise UserError("a tensor with a malformed storage, offset, size or stride")
    last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride))
    if 0 not in ref.size and last >= s.numel:
        raise UserError(f"a tensor of size {ref.size} reaches past the end of its storage ({s.numel} elements)")
    flat = s.data[ref.offset:] if 0 not in ref.size else s.data[:0]
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat, shape=ref.size, strides=[st * itemsize for st in ref.stride],
                                           writeable=False)
    # a whole storage in order (every weight of a state dict) needs no copy: the array keeps the
    # storage's bytes, read-only; a transposed or partial view gets its own compact copy
    if view.flags.c_contiguous and view.size == s.numel:
        return view
    return np.array(view)

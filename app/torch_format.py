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
checked strides. Nothing in the file can make this module call anything else, and nothing it
does outlives the load: the objects it resolves (the storage types, the tensor builder) are made
afresh for each load, so a file that alters them (a BUILD opcode can set their attributes)
alters only its own reading.

A file small enough to download in a blink must not take the reader's memory or time, so every
limit is checked before what it bounds is made: the pickle's size and opcode count, and its memo
indices (a 4-byte index makes the unpickler size its memo table to it), before it is unpickled;
nesting depth and shared objects (a 1 KB pickle of lists that hold one list twice, 30 levels deep,
is 2^30 lists when walked naively: each object here is walked once) while the result is walked;
every storage's byte count against the bytes the file has for it, and every tensor's element
count against its storage, and the bytes of all the copies made so far against the storages'
(COPY_FACTOR), before an array is made.

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
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from alexnet.app.errors import UserError, one_line

# A state dict's pickle is kilobytes (the numbers are in the storages), a few thousand opcodes
# even for models far larger than AlexNet, nested a handful of levels deep.
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 1 << 18
MAX_NESTING = 64
MAX_DIMS = 32
# A tensor that views part of a storage, or views it out of order, becomes a copy (_tensor); the
# copies of one load together may take at most COPY_FACTOR times the bytes of its storages, plus
# COPY_SLACK. Without a bound a 6 MB file holding one 4 MB storage viewed by 60,000 tensors would
# be 240 GB of copies. A real state dict stays far below: torch.save of a model's state_dict
# (torchvision's alexnet-owt-*.pth among them) gives each tensor a whole storage of its own, in
# order, which is never copied (0x); a converted one (Caffe's weights saved through PyTorch) holds
# at worst transposed or sliced views, each element copied once (1x); tensors that share a storage
# on purpose (slices of one flat parameter buffer, a tied weight saved as W and as W.t()) copy each
# element once, or twice where a slice is also saved transposed (2x). The slack covers a small file
# whose few small views are still more than twice its few stored bytes.
COPY_FACTOR = 2
COPY_SLACK = 16 << 20
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


class _Copies:
    """The bytes the copies of one load's tensors may still take (COPY_FACTOR), given its storages."""
    __slots__ = ("stored", "limit", "left")

    def __init__(self, storages):
        self.stored = sum(s.data.nbytes for s in storages.values() if s.data is not None)
        self.limit = self.left = COPY_FACTOR * self.stored + COPY_SLACK

    def take(self, nbytes):
        """Count a copy of `nbytes` before it is made; refused past the limit."""
        if nbytes > self.left:
            raise UserError(f"its tensors view their storages over and over: as arrays they would take over "
                            f"{self.limit:,} bytes, {COPY_FACTOR} times its storages' {self.stored:,} plus "
                            f"{COPY_SLACK >> 20} MiB, which no state dict needs (it holds each weight once)")
        self.left -= nbytes


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file, encoding="utf-8")     # as torch.load: Python 2 era files
        self.storages = storages          # key -> _Storage, shared by every tensor that views it
        # what the file may name, made for this load alone: a bound method takes no attributes,
        # and a storage type the file alters is its own
        self.allowed = {("collections", "OrderedDict"): collections.OrderedDict,
                        ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor_v2}
        self.allowed.update({("torch", name): _StorageType(name) for name in STORAGE_TYPES})

    def rebuild_tensor_v2(self, storage, storage_offset, size, stride, *_):
        """Stands in for torch._utils._rebuild_tensor_v2; the trailing requires_grad, backward hooks
        and metadata arguments mean nothing for weights."""
        return _TensorRef(storage, storage_offset, size, stride)

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise Refused(f"it asks for {module}.{name}, which a PyTorch state dict never contains "
                          f"(only tensors, their storages and OrderedDicts are read)")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and pid[1].name in STORAGE_TYPES
                and isinstance(pid[2], (str, bytes))
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
    from alexnet.app.files import check_input

    size = check_input(path)
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
        raise UserError(f"{path} is a tar archive: PyTorch's tar layout of PyTorch < 0.1.10 is not read here; "
                        f"re-save it with a current PyTorch (torch.save(torch.load(...)))")
    else:
        raise UserError(f"{path} is not a PyTorch file (neither a torch.save zip archive nor a pickle)")
    try:
        return read(path, size)
    except Refused as e:
        raise UserError(f"refusing to load {path}: {e}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, struct.error, UnicodeDecodeError, OverflowError, RecursionError) as e:
        raise UserError(f"{path} is truncated or not a PyTorch state dict ({one_line(e)})") from None


def _unpickle(f, storages):
    """One pickle from `f` (at its start) through the restricted reader, once its opcodes passed
    the limits (module docstring)."""
    start = f.tell()
    count = 0
    for op, arg, _ in pickletools.genops(f):
        count += 1
        if count > MAX_PICKLE_OPS:
            raise Refused(f"its pickle has over {MAX_PICKLE_OPS:,} opcodes, far more than a state dict needs")
        # picklers number memo entries 0, 1, 2...: an index beyond the opcodes so far is not one
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg < count:
            raise Refused(f"its pickle stores an object at memo index {arg:,}, past any it could fill")
    f.seek(start)
    return _Unpickler(f, storages).load()


class _Window:
    """A file read from its position on, never past `limit` bytes (a longer pickle is refused)
    nor past its end: a length the file declares is never handed to read() as a size to allocate.
    No peek: the unpickler then reads exactly its pickle, and the storages follow it."""

    def __init__(self, f, limit):
        size = os.fstat(f.fileno()).st_size
        self.f, self.end = f, min(f.tell() + limit, size)
        self.limited = self.end < size

    def read(self, n=-1):
        left = self.end - self.f.tell()
        if self.limited and (n < 0 or n > left):
            raise Refused(f"its pickle is over {MAX_PICKLE_BYTES:,} bytes, far more than a state dict needs")
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self, n=-1):
        line = self.f.readline(self.end - self.f.tell() if n < 0 else min(n, self.end - self.f.tell()))
        if self.limited and not line.endswith(b"\n"):
            raise Refused(f"its pickle is over {MAX_PICKLE_BYTES:,} bytes, far more than a state dict needs")
        return line

    def tell(self):
        return self.f.tell()

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)


def _read_zip(path, size):
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UserError("a zip archive without exactly one <name>/data.pkl, so not a torch.save file")
        prefix = pickles[0][:-len("data.pkl")]
        # the sizes are the archive's word, checked before anything is inflated into memory
        pickle_size = z.getinfo(pickles[0]).file_size
        if pickle_size > MAX_PICKLE_BYTES:
            raise UserError(f"its data.pkl is {pickle_size} bytes, far more than a state dict needs")
        order = "<"
        if prefix + "byteorder" in z.namelist():
            if z.getinfo(prefix + "byteorder").file_size > 16:
                raise UserError("its byteorder record is neither little nor big")
            order = {b"little": "<", b"big": ">"}.get(z.read(prefix + "byteorder").strip())
            if order is None:
                raise UserError("its byteorder record is neither little nor big")
        storages = {}
        obj = _unpickle(io.BytesIO(z.read(pickles[0])), storages)
        declared = 0
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
            declared += info.file_size
            if declared > size:
                raise UserError(f"its storages declare more bytes than the file's {size:,} (compressed, or damaged)")
        for s in storages.values():
            s.data = _as_array(z.read(f"{prefix}data/{s.key}"), s.dtype, order)
    return _materialize(obj, storages)


def _read_legacy(path, size):
    storages = {}
    with open(path, "rb") as raw:
        def next_pickle():
            return _unpickle(_Window(raw, MAX_PICKLE_BYTES), storages)

        # the header pickles go through the same restricted unpickler: nothing is trusted
        if next_pickle() != LEGACY_MAGIC:
            raise UserError("a pickle, but not a torch.save file (no PyTorch magic number)")
        if next_pickle() != LEGACY_PROTOCOL:
            raise UserError("a legacy torch.save file of an unknown protocol version")
        sys_info = next_pickle()
        order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
        obj = next_pickle()
        keys = next_pickle()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise UserError("its list of storages does not match the storages its tensors use")
        for key in keys:
            s = storages[str(key)]
            (count,) = struct.unpack(order + "q", raw.read(8))
            if count != s.numel:
                raise UserError(f"storage {s.key} holds {count} elements, its tensor needs {s.numel}")
            nbytes = count * _itemsize(s.dtype)
            if nbytes > size - raw.tell():            # before read() is asked for that many bytes
                raise UserError(f"the file ends inside storage {s.key} ({nbytes:,} bytes declared, "
                                f"{size - raw.tell():,} left)")
            s.data = _as_array(raw.read(nbytes), s.dtype, order)
    return _materialize(obj, storages)


def _itemsize(dtype):
    return 2 if dtype == "bf16" else np.dtype(dtype).itemsize


def _as_array(raw, dtype, order):
    """Raw storage bytes -> a flat NumPy array (bfloat16 widened to float32: its 16 bits are the
    top half of a float32)."""
    if dtype == "bf16":
        return (np.frombuffer(raw, order + "u2").astype(np.uint32) << 16).view(np.float32)
    a = np.frombuffer(raw, np.dtype(dtype).newbyteorder(order) if dtype not in ("?", "i1", "u1") else dtype)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def _materialize(obj, storages):
    """Replace every tensor reference in nested dicts, lists and tuples by its array. Each object
    is walked once, however often the file shares it (the result shares it too); a structure
    that contains itself, or nests deeper than MAX_NESTING, is refused, and so are copies beyond
    COPY_FACTOR times `storages` (key -> _Storage, read)."""
    done, open_now, copies = {}, set(), _Copies(storages)

    def walk(o, depth):
        if not isinstance(o, (_TensorRef, dict, list, tuple)):
            return o
        if id(o) in done:
            return done[id(o)]
        if id(o) in open_now:
            raise Refused("it holds a structure that contains itself, which a state dict never does")
        if depth > MAX_NESTING:
            raise Refused(f"it nests containers over {MAX_NESTING} deep, which a state dict never does")
        open_now.add(id(o))
        if isinstance(o, _TensorRef):
            result = _tensor(o, copies)
        elif isinstance(o, dict):
            result = type(o)((k, walk(v, depth + 1)) for k, v in o.items())
        else:
            result = type(o)(walk(v, depth + 1) for v in o)
        open_now.discard(id(o))
        done[id(o)] = result
        return result

    return walk(obj, 0)


def _tensor(ref, copies):
    """The array a tensor views: `size` elements from `offset` with `stride` (in elements), all of
    it checked to lie inside the storage before any memory is touched, and no larger than its
    storage (stride 0 could otherwise make 1 stored number into 10^9 copies); a copy is counted
    in `copies` (_Copies) before it is made."""
    s = ref.storage
    if not (isinstance(s, _Storage) and s.data is not None and isinstance(ref.offset, int)
            and isinstance(ref.size, tuple) and isinstance(ref.stride, tuple) and len(ref.size) == len(ref.stride)
            and all(isinstance(v, int) and v >= 0 for v in ref.size + ref.stride) and ref.offset >= 0):
        raise UserError("a tensor with a malformed storage, offset, size or stride")
    if len(ref.size) > MAX_DIMS:
        raise UserError(f"a tensor with {len(ref.size)} dimensions")
    count = 1
    for n in ref.size:
        count *= n
    if count > s.numel:
        raise UserError(f"a tensor of size {ref.size} has {count:,} elements, more than its storage's {s.numel:,}")
    last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride))
    if count and last >= s.numel:
        raise UserError(f"a tensor of size {ref.size} reaches past the end of its storage ({s.numel} elements)")
    flat = s.data[ref.offset:] if count else s.data[:0]
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat, shape=ref.size, strides=[st * itemsize for st in ref.stride],
                                           writeable=False)
    # a whole storage in order (every weight of a state dict) needs no copy: the array keeps the
    # storage's bytes, read-only; a transposed or partial view gets its own compact copy
    if view.flags.c_contiguous and view.size == s.numel:
        return view
    copies.take(view.nbytes)
    return np.array(view)

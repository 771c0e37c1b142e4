"""The files a command reads and writes, under one rule for every command.

Writing (checkpoints, export, import, plot, saliency, neighbors, experiment, config.json, log.jsonl,
the run lock; prepare and the demo write a new folder and rename it into place):

    a path that does not exist      created
    a regular file                  replaced atomically (atomic_write)
    a symbolic link                 written through: the file it leads to is replaced atomically
                                    (created if missing) and the link stays, as `>` in a shell
    anything else                   refused with one line: a folder, a character or block device
                                    (`--onnx /dev/null` as root would otherwise become a file), a
                                    FIFO, a socket
    one of the command's inputs     refused with one line (the same file by device and inode, so a
                                    second name or a link to it counts too)
    in a folder that is missing     refused with one line that names the folder, for a file the user
                                    names (`--onnx`, `--out FILE`: a missing folder there is most
                                    likely a typo, and no folder is made silently); a command that
                                    makes its own output folder (a run directory, plot's plots/,
                                    saliency and experiment --out, prepare) makes it with its
                                    parents, and is refused only where it cannot (a file in the
                                    way, a folder it may not write to)
    inside a dataset it reads       refused with one line (`check_outside_dataset`)

`check_output` applies the rule (commands call it early, before any work, and atomic_write again
right before the rename). atomic_write: a temporary in the target's folder, fsync, rename, fsync
the folder; the temporaries it leaves when killed have names that app/rundir.py recognises.

Reading a file from someone else (`check_input`, `read_capped`): a missing path, or one that is not
a regular file (`--classes /dev/zero` would read for ever), is refused before it is opened, and a
text or small binary input is read with a size cap.
"""
import os
import re
import stat
import tempfile

from alexnet.app.errors import UserError

TEMP_SUFFIX = ".tmp"

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def temp_name_pattern(target_regex):
    """A regex for the temporaries ``atomic_write`` makes for targets matching ``target_regex``
    (mkstemp: prefix "." + target + ".", 8 characters of [a-z0-9_], suffix ".tmp"), so that
    the leftovers of killed writes can be told from anyone else's files."""
    return rf"\.(?:{target_regex})\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}"


def kind_of(mode):
    """'a folder', 'a FIFO', ... for a stat mode that is not a regular file's."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat(path, what):
    """os.stat(path) following links, None when nothing is there (or a file stands where a folder of
    the path should be); a loop or a permission is one line."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise UserError(f"cannot use {what} {path}: {e.strerror}") from None


def check_output(path, inputs=(), folder_must_exist=False):
    """The file to write for output ``path`` (the module docstring's rule): ``path`` itself, or
    the file a symbolic link leads to; UserError for what must not be replaced. ``inputs``: the
    paths this command reads (missing ones are skipped). ``folder_must_exist``: the command writes
    into the output's folder without making it (a file the user names: --onnx, --out FILE; and
    atomic_write itself); otherwise the folder may be missing if it can be made (the command makes
    it with os.makedirs before it writes: plot's plots/, saliency's --out)."""
    link = os.path.islink(path)
    target = os.path.realpath(path) if link else path
    st = _stat(target, "output")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} exists and is {kind_of(st.st_mode)}, not a regular file: refusing to write "
                        f"over it (give a file name)")
    # a link's own folder exists: it is the folder of the file it leads to that must, made by no one
    _check_folder(path, target, folder_must_exist or link)
    for source in inputs if st is not None else ():
        if source is not None and same_file(source, target):
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise UserError(f"{path} is also an input of this command{same}: refusing to overwrite it "
                            f"(write to another file)")
    return target


def _check_folder(path, target, must_exist):
    """Refuse, in one line and before any work, an output whose folder cannot take it: missing
    (where ``must_exist``), under something that is not a folder, or not writable (a new file and
    atomic_write's temporary are made in it). Without this the error came after the work, as a
    raw "[Errno 2] No such file or directory"."""
    folder = os.path.dirname(target) or "."
    where = f"{path}: it leads to {target}, whose folder" if target != path else f"{path}: the folder"
    existing = folder                           # the nearest part of it that exists
    while (st := _stat(existing, "output folder")) is None:
        parent = os.path.dirname(existing.rstrip(os.sep)) or "."
        if parent == existing:
            raise UserError(f"cannot write {where} {folder} cannot be made")
        existing = parent
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"cannot write {path}: {existing} is not a folder")
    if existing != folder and must_exist:
        raise UserError(f"cannot write {where} {folder} does not exist (make it first, or write elsewhere)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: the folder {existing} is not writable ({_why_not(existing)})")


def _why_not(folder):
    try:
        return "a read-only file system" if os.statvfs(folder).f_flag & os.ST_RDONLY else "permission denied"
    except (OSError, AttributeError):
        return "permission denied"


def check_outside_dataset(path, root):
    """Refuse output ``path`` (a file or a folder the command writes) when it would land where the
    dataset ``root`` the command reads is read from: the dataset folder itself, its train/ and val/
    splits and every class folder in them, each compared after following links (a class folder
    that is a link to elsewhere counts where it leads), and all of a prepared dataset's folder. A
    new picture in train/<class>/ would be a training image of that class, and a new folder in
    train/ a class, the next time the folder is read; the root's other folders are never read, so
    a run directory beside train/ is fine. It costs a listing of the two splits, not of the images."""
    try:
        real = os.path.realpath(path)
        areas = _dataset_areas(root)
    except ValueError:                          # a NUL in a path: the dataset's own check says so
        return
    for area, what in areas:
        if real == area or (what != "dataset folder" and real.startswith(area.rstrip(os.sep) + os.sep)):
            where = (f"is the dataset folder {root}" if what == "dataset folder" else
                     f"is {'the' if real == area else 'inside the'} {what} of the dataset {root}")
            raise UserError(f"{path} {where}, an input of this command: refusing to write there (write "
                            f"outside the dataset's splits)")


def check_not_an_image_of(path, root, images):
    """Refuse output ``path`` when it already exists as one of ``images``, the files of dataset
    ``root`` (a hard link to one, from anywhere: by device and inode; a stat per image, so only
    where the output exists). check_outside_dataset covers the dataset's own folders."""
    try:
        st = os.stat(path)
    except OSError:
        return                                  # nothing there yet: no image of the dataset
    for image in images:
        try:
            other = os.stat(image)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise UserError(f"{path} is one of the files of the dataset {root} ({image}), an input of this "
                            f"command: refusing to overwrite it (write to another file)")


def _dataset_areas(root):
    """[(real path, what it is)] where dataset ``root`` is read from (check_outside_dataset)."""
    real_root = os.path.realpath(root)
    if os.path.isfile(os.path.join(root, "meta.json")):        # a prepared dataset: all of it
        return [(real_root, "prepared dataset folder")]
    areas = []                                 # the most particular first: the one a message names
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        areas += [(os.path.realpath(os.path.join(folder, n)), f"class folder {split}/{n}") for n in names
                  if os.path.isdir(os.path.join(folder, n))]
        areas.append((os.path.realpath(folder), f"{split}/ folder"))
    return areas + [(real_root, "dataset folder")]


def same_file(a, b):
    """Whether paths `a` and `b` are one existing file (device and inode: links and other names
    count); False when either is missing or unreadable."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_input(path, what="file"):
    """Refuse, in one line, an input that is missing or not a regular file (a device, a FIFO: reading
    one would never end or never start). Returns its size in bytes."""
    st = _stat(path, what)
    if st is None:
        raise UserError(f"{what} {path} not found")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file")
    return st.st_size


def read_capped(path, limit, what="file"):
    """The bytes of input ``path``, refused (one line) above ``limit`` bytes before they are read."""
    size = check_input(path, what)
    if size > limit:
        raise UserError(f"{what} {path} is {size:,} bytes, more than the {limit:,} such a file can need")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)             # not limit + 1: read() reserves what it is asked for
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) != size:                       # it changed after the check
        more = "+" if len(data) > size else ""
        raise UserError(f"{what} {path} changed while it was read ({size:,} bytes, then {len(data):,}{more})")
    return data


def atomic_write(path, write, inputs=()):
    """Call ``write(f)`` on a binary file that becomes ``path`` only once complete (``path`` is
    checked by ``check_output`` with ``inputs`` first: through a symbolic link it is its target
    that is replaced).

    temp file in the same directory -> write -> flush + fsync -> os.replace -> fsync the directory,
    so after a crash or power loss ``path`` is either the previous complete file or the new one.
    A failed write (a full disk) removes its temporary and raises the OSError with ``filename``
    set to ``path``, the file the user knows.
    """
    target = check_output(path, inputs, folder_must_exist=True)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as e:
        e.filename = path
        raise
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the permissions of any file.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_output(path, inputs, folder_must_exist=True)  # again: the writing took time, the rename is final
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            e.filename = path
        raise
    fsync_dir(directory)


def write_png(path, image, inputs=()):
    """A PIL image as a PNG file, by atomic_write's rule."""
    atomic_write(path, lambda f: image.save(f, format="PNG"), inputs)


def write_text(path, text, inputs=()):
    """A UTF-8 text file, by atomic_write's rule."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), inputs)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory):
    """Make a rename durable: the directory entry must reach the disk too."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

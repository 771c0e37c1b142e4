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
    """os.stat(path) following links, None when nothing is there; a loop or a permission is one line."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot use {what} {path}: {e.strerror}") from None


def check_output(path, inputs=()):
    """The file to write for output ``path`` (the module docstring's rule): ``path`` itself, or
    the file a symbolic link leads to; UserError for what must not be replaced. ``inputs``: the
    paths this command reads (missing ones are skipped)."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    st = _stat(target, "output")
    if st is None:
        return target
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} exists and is {kind_of(st.st_mode)}, not a regular file: refusing to write "
                        f"over it (give a file name)")
    for source in inputs:
        if source is not None and same_file(source, target):
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise UserError(f"{path} is also an input of this command{same}: refusing to overwrite it "
                            f"(write to another file)")
    return target


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
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:                       # it grew after the check
        raise UserError(f"{what} {path} is more than the {limit:,} bytes such a file can need")
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
    target = check_output(path, inputs)
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
        check_output(path, inputs)      # again: the writing took time, and the rename is final
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

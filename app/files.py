"""Writing files so that a crash never leaves half of one: atomic_write (a temporary in the same
folder, fsync, rename, fsync the folder) and the names of the temporaries it leaves when killed,
which app/rundir.py recognises and removes.
"""
import os
import re
import tempfile


TEMP_SUFFIX = ".tmp"


def temp_name_pattern(target_regex):
    """A regex for the temporaries ``atomic_write`` makes for targets matching ``target_regex``
    (mkstemp: prefix "." + target + ".", 8 characters of [a-z0-9_], suffix ".tmp"), so that
    the leftovers of killed writes can be told from anyone else's files."""
    return rf"\.(?:{target_regex})\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}"


def atomic_write(path, write):
    """Call ``write(f)`` on a binary file that becomes ``path`` only once complete.

    temp file in the same directory -> write -> flush + fsync -> os.replace -> fsync the directory,
    so after a crash or power loss ``path`` is either the previous complete file or the new one.
    A failed write (a full disk) removes its temporary and raises the OSError with ``filename``
    set to ``path``, the file the user knows.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=directory)
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
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            e.filename = path
        raise
    fsync_dir(directory)


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

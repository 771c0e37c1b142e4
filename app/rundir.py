"""The run directory as a resource one process owns: a lock held for the run's life, the cleanup
of temporaries that killed writes left behind, appends to log.jsonl that never leave half a
record, and the one-line message for a write that failed (a full disk above all).

The lock is ``flock`` on ``RUN_DIR/.lock``. The kernel drops it when the process ends, however it
ends (exit, exception, SIGKILL, a crashed machine's NFS lease), so a dead run never leaves a stale
lock and no "is that pid still alive?" guess is needed. The file also holds the holder's pid, host
and start time, read by a second trainer to say who is in the way. flock locks belong to an open
file description, not to a process: the probe below opens the file separately and is refused
even inside the process that holds the lock (fcntl's POSIX locks would not be, and closing any
descriptor of the file would drop them).
"""

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
import time

from alexnet.app import files
from alexnet.app.errors import UserError

LOCK_NAME = ".lock"

# What this project's atomic writes leave when killed mid-write (files.atomic_write's
# mkstemp names: "." + target + "." + 8 random characters + ".tmp"), per folder of a run. Only
# these are removed: anything else in a run directory belongs to someone else.
_TEMPORARIES = {
    ".": re.compile(files.temp_name_pattern(r"config\.json")),
    "checkpoints": re.compile(files.temp_name_pattern(r"ckpt-\d+\.npz|best\.npz")),
}


class RunLock:
    """Hold RUN_DIR/.lock for the life of a ``with`` block; refuse with the holder's details
    (UserError) when another process holds it. Creates RUN_DIR. ``kind`` and ``user`` name the
    folder and its user in that message (`alexnet experiment` locks its --out the same way)."""

    def __init__(self, run_dir, log=None, kind="run directory", user="trainer"):
        self.run_dir, self.kind, self.user = run_dir, kind, user
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.log = log or (lambda msg: None)
        self._fd = None

    def acquire(self):
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the {self.kind} {self.run_dir}: {e.strerror}") from None
        files.check_output(self.path)           # a FIFO or a device named .lock is not a lock file
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot create the run directory's lock file {self.path}: {e.strerror}") from None
        try:
            _flock_soon(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(_in_use_message(self.run_dir, self.path, self.kind, self.user)) from None
            # Some network and FUSE filesystems have no locks at all: say so, and carry on.
            self.log(f"warning: cannot lock {self.path} ({e.strerror}): nothing stops a second trainer "
                     f"from writing into {self.run_dir} at the same time")
            return
        self._fd = fd
        _write_holder(fd)

    def release(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no stale pid for a reader to wonder about
            except OSError:
                pass
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _flock_soon(fd, tries=10):
    """The exclusive lock, retried for a fifth of a second: check_not_in_use holds a shared lock
    for an instant, and a trainer starting in that instant must not take it for a run."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES) or i == tries - 1:
                raise
            time.sleep(0.02)


def check_not_in_use(run_dir):
    """Refuse early (before any work) when a live process holds RUN_DIR's lock. Creates nothing:
    a run directory that does not exist yet is not in use."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)         # a FIFO in its place must not hang us
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise UserError(_in_use_message(run_dir, path)) from None
    finally:
        os.close(fd)  # also drops the shared lock taken just to look


def _write_holder(fd):
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the details are missing


def _in_use_message(run_dir, path, kind="run directory", user="trainer"):
    holder = None
    for _ in range(20):  # the holder writes its details right after taking the lock
        try:
            with open(path) as f:
                holder = json.loads(f.read() or "null")
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict):
            break
        time.sleep(0.025)
    if isinstance(holder, dict):
        pid = holder.get("pid")
        who = f"process {pid} on host {holder.get('host')}, started {holder.get('started')}"
        stop = f" (kill -TERM {pid} saves a checkpoint and stops it)" if holder.get("host") == socket.gethostname() else ""
    else:
        who, stop = "another process", ""
    return (f"{kind} {run_dir} is in use by another {user}: {who}; wait for it to end or stop "
            f"it{stop}, or choose another --out")


def remove_stale_temporaries(run_dir):
    """Delete the temporaries of writes that a kill cut short; returns (count, bytes).
    Call only while holding the lock: a live run's temporary is a write in progress."""
    count = size = 0
    for sub, pattern in _TEMPORARIES.items():
        folder = os.path.join(run_dir, sub)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not pattern.fullmatch(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    os.unlink(path)
                    count, size = count + 1, size + st.st_size
            except OSError:
                pass
    return count, size


def append_line(path, text):
    """Append one line to a file, all or nothing: a write cut short (a full disk) is truncated
    away, so the next record never lands glued to half of this one. The file follows
    app/files.py's rule for outputs (never a device or a FIFO; through a link, its target)."""
    data = (text.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(files.check_output(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def end_cut_line(path):
    """A record cut short by a kill gets its newline, so the next append starts a line of its
    own (readers skip the fragment). A FIFO or a device in its place is refused before it is
    opened (opening a FIFO would wait for a writer)."""
    path = files.check_output(path)
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except OSError:
        return  # missing or empty
    if last != b"\n":
        append_line(path, "")


def fmt_bytes(n):
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def write_failed_message(path, error, needed, newest, resume_hint):
    """One line for a write that failed: which file, why, how much space it needs (a full disk),
    which checkpoint survives and how to continue from it."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {fmt_bytes(shutil.disk_usage(os.path.dirname(path) or '.').free)} free there"
        except OSError:
            free = ""
        why = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        head = f"{why}: could not write {path} (it needs about {fmt_bytes(needed)}{free})"
        todo = f"make {fmt_bytes(needed)} free there, then"
    else:
        head = f"could not write {path}: {error.strerror or error}"
        todo = "fix that, then"
    if newest:
        tail = f"the newest good checkpoint is {newest}: {todo} resume with: {resume_hint(newest)}"
    else:
        tail = f"no checkpoint was written yet: {todo} start again"
    return f"{head}; nothing half-written was left behind; {tail}"

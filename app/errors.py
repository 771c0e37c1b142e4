"""Which errors the command line reports as one line, and which show their traceback.

An error meant for the user becomes one line, `alexnet: error: ...`, and exit status 2: bad input
(UserError: arguments, files, data, a refused resume), the machine's limits (OSError: a full disk,
a permission; MemoryError), a GPU, compiler or MPI job that is not usable. Anything else is a bug
in this program, whatever its type: a ValueError from a broadcast in a layer is not the user's
fault, so it prints its traceback, says that it is a bug, and exits with status 1.
ALEXNET_DEBUG=1 prints the traceback of a user's error too.
"""
import os
import sys
import traceback


class UserError(Exception):
    """Bad input from the user (arguments, files, data): printed as `alexnet: error: ...`."""


def _environment_errors():
    """The lower floors' errors that say something about this machine, not about our code: no
    usable GPU, no C++ compiler for the kernel harness, MPI processes that cannot talk."""
    from alexnet.engine.comm import CommError
    from alexnet.kernels.harness import HarnessUnavailable
    from alexnet.kernels.loader import CudaUnavailable

    return CommError, HarnessUnavailable, CudaUnavailable


def is_reported(e):
    """Whether exception `e` is the user's to fix (one line) rather than a bug (a traceback)."""
    # these first, importing nothing: after a MemoryError the address space can still be full
    # (the half-built arrays live on in the traceback's frames, and memory freed to malloc is not
    # given back), so the imports of _environment_errors (subprocess, ctypes, shared libraries to
    # map) would fail in turn, and "out of memory" become that ImportError's traceback, exit 1
    if isinstance(e, (UserError, OSError, MemoryError)):
        return True
    return isinstance(e, _environment_errors())


def one_line(e):
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(e).strip()
    if isinstance(e, MemoryError):
        return "out of memory" + (f": {text.splitlines()[0]}" if text else "")
    return text.splitlines()[0] if text else type(e).__name__


def debugging():
    return os.environ.get("ALEXNET_DEBUG", "") not in ("", "0")


def report(e, where="", then=""):
    """Print `e` as the command line reports it; returns the exit status (2 for the user's
    errors, 1 for a bug). `where` and `then` go before and after the message (a rank's
    "rank 1 of 2: ", "; stopping every rank")."""
    if is_reported(e):
        if debugging():
            traceback.print_exception(e, file=sys.stderr)
        print(f"alexnet: error: {where}{one_line(e)}{then}", file=sys.stderr, flush=True)
        return 2
    traceback.print_exception(e, file=sys.stderr)
    print(f"alexnet: internal error: {where}{type(e).__name__} (traceback above){then}: this is a bug in "
          "alexnet, not in your input; please report it with the traceback", file=sys.stderr, flush=True)
    return 1

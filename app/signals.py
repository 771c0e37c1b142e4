"""SIGINT (Ctrl-C) and SIGTERM while training: save, say how to resume, stop.

SIGTERM is what docker stop, Kubernetes and Slurm's preemption and time limit send. Either signal
asks the training loop to save a checkpoint and stop after the current step; `signum` is the first
one received. A second Ctrl-C stops at once, unsaved, for a user who will not wait (StopNow). A
second SIGTERM is ignored: a scheduler may send it to every process of a job, and cutting the save
short would lose what the first one asked to keep; SIGKILL is the way to stop at once.
"""
import signal
import threading


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, without saving."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """A `with` block inside which SIGINT and SIGTERM request a stop instead of interrupting."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._old = {}

    @property
    def requested(self):
        return self.signum is not None

    def adopt(self, signum):
        """Act on a signal the ranks agreed on (app/distributed.py), received here or not."""
        if signum is not None and self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.HANDLED:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise StopNow(signum)

    def __exit__(self, *exc):
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}
        return False


def signal_name(signum):
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name

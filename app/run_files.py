"""The files of one run, as the trainer writes them (app/rundir.py holds the mechanisms underneath:
the lock, the cleanup, the appends that never leave half a record, the message for a full disk):

    RUN_DIR/.lock                  flock'ed for the run's life; the holder's pid, host, start time
    RUN_DIR/config.json            the run's TrainConfig (app/config.py)
    RUN_DIR/log.jsonl              one JSON record per line: epoch, step, checkpoint
    RUN_DIR/checkpoints/ckpt-<step>.npz   the last `keep` checkpoints; best.npz, the best val top-1

Under mpiexec rank 0 alone writes (`strategy.lead_does`), and every rank learns how it went, so a
failed write stops all of them with the same line.
"""
import contextlib
import json
import os

from alexnet.app import checkpoint as ckpt
from alexnet.app import rundir
from alexnet.app.errors import UserError
from alexnet.app.files import atomic_write


def resume_hint(path):
    return f"alexnet train --resume {path}"


class RunFiles:
    def __init__(self, run_dir, keep, strategy, log):
        self.run_dir, self.strategy, self.log = run_dir, strategy, log
        self.ckpts = ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints"), keep)
        self.log_path = os.path.join(run_dir, "log.jsonl")
        self.resumed_from = None            # the checkpoint this session continued from
        self.resumed_step = 0

    def refuse_a_finished_run(self):
        """A new run must not write into a run directory that has checkpoints already."""
        if self.ckpts.list():
            raise UserError(f"run directory {self.run_dir} already has checkpoints: continue it with "
                            f"--resume {self.run_dir}, or choose another --out")

    def newest_good(self):
        """The newest checkpoint a user can continue from: this session's, or the one it resumed."""
        return self.ckpts.latest() or self.resumed_from

    def write_failed(self, error, path, needed):
        """The UserError for a write that failed: the file, the space it needs, what survives."""
        if isinstance(error.filename, str):
            path = error.filename
        return UserError(rundir.write_failed_message(path, error, needed, self.newest_good(), resume_hint))

    # ---- writing -----------------------------------------------------------------------------------
    def save_checkpoint(self, step, arrays, meta, is_best=False, check=None):
        """Write ckpt-<step>.npz (and best.npz); rank 0 writes, after `check()` (which may refuse
        with a UserError), and every rank gets the path or the error."""
        def write():
            if check is not None:
                check()
            try:
                return self.ckpts.save(step, arrays, meta, is_best=is_best)
            except OSError as e:
                raise self.write_failed(e, self.ckpts.path_for(step), self._checkpoint_size(arrays)) from None

        return self.strategy.lead_does(write)

    def _checkpoint_size(self, arrays):
        """Bytes the next checkpoint takes: the size of the last one written, else an estimate."""
        latest = self.ckpts.latest()
        try:
            return os.path.getsize(latest) if latest else ckpt.estimate_size(arrays)
        except OSError:
            return ckpt.estimate_size(arrays)

    def append_log(self, record):
        line = json.dumps(record)

        def append():
            try:
                rundir.append_line(self.log_path, line)
            except OSError as e:
                raise self.write_failed(e, self.log_path, len(line) + 1) from None

        self.strategy.lead_does(append)

    # ---- the run's life ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self):
        """Rank 0 holds the run directory's lock for the run; every rank learns whether it got it."""
        lock = rundir.RunLock(self.run_dir, self.log)
        self.strategy.lead_does(lock.acquire)
        try:
            yield
        finally:
            if self.strategy.lead:
                lock.release()

    def open(self, config):
        """With the lock held: check again what the trainer checked without it (another trainer may
        have written here in between), remove what killed writes left, write config.json."""
        def open_here():
            later = [p for p in self.ckpts.list() if ckpt.CheckpointDir.step_of(p) > self.resumed_step]
            if later and self.resumed_from is None:
                self.refuse_a_finished_run()
            if later:
                raise UserError(f"{self.run_dir} already has a later checkpoint ({os.path.basename(later[-1])}) "
                                f"than {os.path.basename(self.resumed_from)}: continue from the latest, or give "
                                f"--out NEW_RUN_DIR to branch off from this one")
            count, size = rundir.remove_stale_temporaries(self.run_dir)
            if count:
                self.log(f"removed {count} temporary file{'s' * (count > 1)} ({rundir.fmt_bytes(size)}) left in "
                         f"{self.run_dir} by writes that a kill cut short")
            config_path = os.path.join(self.run_dir, "config.json")
            try:
                rundir.end_cut_line(self.log_path)
                if self.resumed_from is None or not os.path.exists(config_path):
                    text = json.dumps(config.to_json(), indent=1).encode()
                    atomic_write(config_path, lambda f: f.write(text))
            except OSError as e:
                raise self.write_failed(e, config_path, 4096) from None

        self.strategy.lead_does(open_here)

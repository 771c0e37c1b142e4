"""Multi-process training measured: one process with 2 threads against 2 MPI ranks with 1 thread
each, at the same global batch, on the full AlexNet (docs/distributed.md has the figures).

    python bench/scaling.py [--batches 32,128] [--steps 3] [--json FILE]

For each global batch B it times the training step of app/trainer.py (train_step: forward, loss,
backward, the gradients summed over the ranks, the update) on synthetic images:

    alone    1 process, ALEXNET_THREADS=2 (app/distributed.py Alone: no MPI at all)
    data     mpiexec -n 2, 1 thread each, B/2 images per rank (DataParallel)
    towers   mpiexec -n 2, 1 thread each, the paper's two towers (TowerParallel)

and reports images/s (B / the median step time after one warm-up step), the seconds per step a
rank spends blocked waiting for the others (all collectives, and the gradient allreduce alone),
and the bytes each rank sends per step (as a ring algorithm sends them: engine/comm.py). The ratio
of data's images/s to alone's is the scaling this machine gets; the target is >= 0.8 at batch 128.
Without mpi4py or mpiexec only `alone` runs, and the report says why.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def worker(mode, batch, steps):
    """One process of a measurement (rank 0 prints a JSON line)."""
    import numpy as np

    from alexnet.app import distributed
    from alexnet.app.trainer import train_step
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.engine.threads import num_threads, shares
    from alexnet.models.alexnet import AlexNet

    world = distributed.connect()
    strategy = distributed.strategy(world, mode if mode != "alone" else "data", "cpu")
    model = strategy.build(AlexNet(1000, init="paper", seed=0))
    optimizer, criterion = SGD(model), SoftmaxCrossEntropy()
    strategy.attach(model)
    lo, hi = shares(batch, world.size)[world.rank] if mode == "data" else (0, batch)
    rng = np.random.default_rng(world.rank)
    x = rng.standard_normal((hi - lo, 3, 227, 227)).astype(np.float32)
    labels = rng.integers(0, 1000, hi - lo)
    times, waits, grad_waits, sent = [], [], [], []
    for i in range(steps + 1):                        # the first step warms the workspace up
        wait0, sent0 = world.wait_seconds, world.sent_bytes
        grad0 = strategy.sync.wait_seconds if getattr(strategy, "sync", None) else 0.0
        t0 = time.perf_counter()
        train_step(model, criterion, optimizer, strategy, x, labels, strategy.batch_count(hi - lo, model))
        elapsed = time.perf_counter() - t0
        if i:
            times.append(elapsed)
            waits.append(world.wait_seconds - wait0)
            grad_waits.append((strategy.sync.wait_seconds if getattr(strategy, "sync", None) else 0.0) - grad0)
            sent.append(world.sent_bytes - sent0)
    if world.rank == 0:
        step = statistics.median(times)
        print(json.dumps({"mode": mode, "ranks": world.size, "threads": num_threads(), "batch": batch,
                          "step_s": step, "images_per_s": batch / step, "wait_s": statistics.median(waits),
                          "grad_wait_s": statistics.median(grad_waits), "sent_bytes": int(statistics.median(sent)),
                          "steps": times}), flush=True)


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install -e '.[mpi]')"
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    return (found, "") if found else (None, "no mpiexec (pip install mpich)")


def measure(mode, batch, steps, mpiexec):
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_THREADS"}
    cmd = [sys.executable, HERE, "--worker", mode, "--batches", str(batch), "--steps", str(steps)]
    if mode == "alone":
        env["ALEXNET_THREADS"] = "2"
    else:
        cmd = [mpiexec, "-n", "2"] + cmd
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"scaling: {mode} at batch {batch} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,128", help="global batch sizes (default 32,128)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--worker", choices=("alone", "data", "towers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        return worker(args.worker, batches[0], args.steps)
    mpiexec, why = _mpiexec()
    rows = []
    print(f"{'batch':>5} {'mode':<7} {'ranks x threads':>15} {'step s':>8} {'img/s':>7} {'vs alone':>8} "
          f"{'wait s':>7} {'grad wait s':>11} {'sent MB/step':>12}")
    for batch in batches:
        base = None
        for mode in ("alone", "data", "towers"):
            if mode != "alone" and mpiexec is None:
                print(f"{batch:>5} {mode:<7} skipped: {why}")
                continue
            r = measure(mode, batch, args.steps, mpiexec)
            base = base or r["images_per_s"]
            r["vs_alone"] = r["images_per_s"] / base
            rows.append(r)
            print(f"{batch:>5} {mode:<7} {r['ranks']:>9} x {r['threads']:<3} {r['step_s']:>8.2f} "
                  f"{r['images_per_s']:>7.1f} {r['vs_alone']:>8.2f} {r['wait_s']:>7.3f} {r['grad_wait_s']:>11.3f} "
                  f"{r['sent_bytes'] / 1e6:>12.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count()}, "results": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

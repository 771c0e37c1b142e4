"""Training fed end to end on the GPU: one timed epoch of a synthetic prepared dataset, against the
step alone, and the CPU cores the loader needs.

    python bench/gpu_train.py [--backend cupy|cpu-harness] [--images 10000] [--val 1000]
                              [--precision bf16] [--workers N] [--batch 128] [--data DIR] [--out DIR]

1. Writes a prepared dataset (app/data.py's format: 256x256 uint8 shards, 10 classes, the
   per-pixel mean) of --images training and --val validation images, or reuses --data. Each
   image is one of 64 random base images, shifted and tinted by its class: writing costs copies,
   not random numbers, and the pixels are not constant.
2. The loader alone, on the CPU: how many images per second app/gpu_input.py's loader work
   (fill_slot: read from the memory-mapped shard, draw the augmentation, copy the uint8 crop
   window) supplies on one thread, i.e. per core, and on --workers threads.
3. The step alone: images/s of the training step on batches already on the device
   (bench/gpu_step.py OurStep, replayed as a CUDA graph), in --precision.
4. One epoch of `alexnet train` on the dataset (app/trainer.py with the GPU input pipeline and
   CUDA graphs, --workers loader threads), validation included: images/s end to end (the epoch
   record's, training steps only, data waits included), data_wait, the whole run's seconds,
   and the ratio to the step alone (issue 19's target: >= 0.9 with at most 16 loader cores).
   The cores the step rate needs = step images/s / loader images/s per core.

Writes DIR/gpu_train.json, and `end_to_end` into DIR/gpu_step.json (next to bench/gpu_step.py's
modes). DIR defaults to $OUT, else ./gpu_out.

--backend cpu-harness (CPU mode, what CI runs): alexnet-small's 73x73 images, 96 + 32 of them;
parts 1 and 2 as on a GPU; part 3 skipped; the GPU input pipeline run over the epoch on the CPU
harness and checked bit for bit against the CPU pipeline's batches; the epoch trained with
--device cpu. Its figures time the CPU, not a GPU.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, for gpu_step.OurStep

CLASSES = 10


# ---- 1. the dataset ----------------------------------------------------------------------------------
def write_dataset(root, side, train, val, shard_size=2048):
    """A prepared dataset at `root` (app/data.py's format) of `train` + `val` synthetic images."""
    from numpy.lib.format import open_memmap

    from alexnet.app.data import PREPARED_FORMAT
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (64, side, side, 3)).astype(np.uint8)
    os.makedirs(root)
    mean = np.zeros((side, side, 3))
    for split, count in (("train", train), ("val", val)):
        labels = (np.arange(count) % CLASSES).astype(np.int32)
        for s, lo in enumerate(range(0, count, shard_size)):
            n = min(shard_size, count - lo)
            shard = open_memmap(os.path.join(root, f"{split}-{s:05d}.npy"), mode="w+", dtype=np.uint8,
                                shape=(n, side, side, 3))
            for i in range(n):
                k = lo + i
                shard[i] = np.roll(base[k % 64], k % side, axis=1)
                shard[i, :, :, labels[k] % 3] += np.uint8(5 * (labels[k] + 1))
            if split == "train":
                mean += shard.sum(axis=0, dtype=np.float64)
            shard.flush()
        np.save(os.path.join(root, f"{split}-labels.npy"), labels)
    np.save(os.path.join(root, "mean.npy"), (mean / train).astype(np.float32))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump([f"class{c}" for c in range(CLASSES)], f)
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump({"format": PREPARED_FORMAT, "size": side, "shard_size": shard_size,
                   "counts": {"train": train, "val": val}, "skipped": {}, "source": "bench/gpu_train.py"}, f)


# ---- 2. the loader alone -------------------------------------------------------------------------------
def epoch_batches(root, model, batch):
    """TrainBatches of epoch 0 over the dataset, as the trainer makes them for `model`."""
    from alexnet.app.data import TrainBatches, open_dataset
    from alexnet.app.preprocess import Preprocessing
    from alexnet.models.registry import sizes
    input_size, resize_size = sizes(model)
    ds = open_dataset(root, resize_size)
    return TrainBatches(ds.train, batch, Preprocessing(ds.mean, 1 / 64, resize_size, input_size), seed=0, epoch=0)


def loader_rate(batches, workers, limit):
    """Images/s that fill_slot supplies on `workers` threads over the first `limit` batches."""
    from alexnet.app.gpu_input import Slot, fill_slot
    count = min(limit, batches.num_batches)
    slots = [Slot(batches.batch_size, batches.prep.input_size, np.empty) for _ in range(workers)]

    def fill(j):
        slot = slots[j % workers]
        fill_slot(batches, j, slot)
        return slot.count
    fill(0)                                                   # warm the page cache and the code
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        images = sum(pool.map(fill, range(count)))
    return images / (time.perf_counter() - t0)


# ---- 3. the step alone, and 4. the epoch ----------------------------------------------------------------
def step_rate(rt, model, precision, batch):
    """Images/s of the training step on device-resident batches, replayed as a CUDA graph."""
    from gpu_step import Clock, OurStep, back_to_back

    from alexnet.models.registry import build_model, sizes
    step = OurStep(rt, lambda: build_model(model, CLASSES, init="he", seed=0), precision, batch, sizes(model)[0],
                   CLASSES)
    ms = back_to_back(step.graphed(rt.xp), 20, 3, Clock.cupy(rt.xp))
    return batch / ms * 1e3


def train_epoch(root, run_dir, args, device):
    """One epoch of the trainer on the dataset; (its epoch record from log.jsonl, wall seconds)."""
    from alexnet.app.config import TrainConfig
    from alexnet.app.trainer import Trainer
    config = TrainConfig(data=root, model=args.model, epochs=1, batch_size=args.batch, init="he", input_scale=1 / 64,
                         dropout=0.5, device=device, precision=args.precision if device == "cuda" else "fp32",
                         workers=args.workers, log_every=20)
    t0 = time.perf_counter()
    code = Trainer(config, run_dir, progress=False, log=lambda msg: print(f"  train: {msg}")).run()
    seconds = time.perf_counter() - t0
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    epoch = [r for r in records if r["type"] == "epoch"]
    if code != 0 or not epoch:
        raise RuntimeError(f"the training run ended with exit status {code} and {len(epoch)} epoch records")
    return epoch[-1], seconds


def pipeline_matches(rt, batches):
    """The GPU input pipeline on `rt` against TrainBatches for every batch of the epoch: bit for bit?"""
    from alexnet.app.gpu_input import GpuPrefetcher
    for b, (x, labels), _ in GpuPrefetcher(batches, range(batches.num_batches), 2, rt):
        want, want_labels = batches(b)
        if not (np.array_equal(np.asarray(x).view(np.uint32), want.view(np.uint32))
                and np.array_equal(np.asarray(labels), want_labels)):
            return False
    return True


# ---- main ---------------------------------------------------------------------------------------------------
def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("cupy", "cpu-harness"), default="cupy")
    ap.add_argument("--images", type=int, default=None, help="training images (10000; 96 on the CPU harness)")
    ap.add_argument("--val", type=int, default=None, help="validation images (1000; 32 on the CPU harness)")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--workers", type=int, default=min(16, max(1, (os.cpu_count() or 2) - 1)),
                    help="loader threads (default: the cores but one, at most 16)")
    ap.add_argument("--batch", type=int, default=None, help="(128; 16 on the CPU harness)")
    ap.add_argument("--data", help="a prepared dataset to use instead of writing one")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    args = ap.parse_args(argv)
    gpu = args.backend == "cupy"
    args.model = "alexnet" if gpu else "alexnet-small"
    args.images = args.images or (10_000 if gpu else 96)
    args.val = args.val or (1000 if gpu else 32)
    args.batch = args.batch or (128 if gpu else 16)
    return args


def measure(rt, args, root, report):
    """Parts 2-4 on the dataset at `root`; fills `report`."""
    gpu = rt.name == "cupy"
    batches = epoch_batches(root, args.model, args.batch)
    one, many = loader_rate(batches, 1, 16), loader_rate(batches, args.workers, 64)
    report["loader"] = {"images_per_s_per_core": one, "images_per_s": many, "threads": args.workers,
                        "cpus": os.cpu_count()}
    print(f"2. loader (read + draws + uint8 crop copy): {one:.0f} images/s on one thread, {many:.0f} on {args.workers}")
    if gpu:
        step = step_rate(rt, args.model, args.precision, args.batch)
        print(f"3. the step alone ({args.precision}, CUDA graph): {step:.0f} images/s")
    else:
        step = None
        report["pipeline_matches_cpu"] = pipeline_matches(rt, batches)
        print("3. the step alone: skipped (needs a GPU); the GPU input pipeline on the harness matches the CPU's "
              f"batches: {report['pipeline_matches_cpu']}")
    with tempfile.TemporaryDirectory() as tmp:
        record, seconds = train_epoch(root, os.path.join(tmp, "run"), args, "cuda" if gpu else "cpu")
    report["end_to_end"] = {
        "images_per_s": record["images_per_s"], "step_images_per_s": step, "data_wait": record["data_wait"],
        "ratio_to_step": record["images_per_s"] / step if step else None, "run_seconds": seconds,
        "val_top1": record["val_top1"], "precision": args.precision if gpu else "fp32", "workers": args.workers,
        "batch": args.batch, "images": args.images, "device": "cuda" if gpu else "cpu",
        "cores_needed_for_step_rate": step / one if step else None}
    print(f"4. one epoch with validation: {record['images_per_s']:.0f} images/s, data wait "
          f"{100 * record['data_wait']:.0f}%, {seconds:.1f} s in all")


def main(argv=None):
    args = parse(argv)
    from alexnet.engine import backend
    from alexnet.kernels import harness, loader
    os.makedirs(args.out, exist_ok=True)
    report = {"backend": args.backend, "args": vars(args)}
    try:
        rt = backend.kernel_runtime(args.backend)
    except (loader.CudaUnavailable, harness.HarnessUnavailable) as e:
        print(f"gpu_train: {e}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or os.path.join(tmp, "data")
        if not args.data:
            t0 = time.perf_counter()
            write_dataset(root, 256 if args.model == "alexnet" else 73, args.images, args.val)
            print(f"1. wrote {args.images} + {args.val} images to {root} in {time.perf_counter() - t0:.1f} s")
        measure(rt, args, root, report)
    with open(os.path.join(args.out, "gpu_train.json"), "w") as f:
        json.dump(report, f, indent=1)
    step_json = os.path.join(args.out, "gpu_step.json")
    merged = json.load(open(step_json)) if os.path.exists(step_json) else {}
    merged["end_to_end"] = report["end_to_end"]
    with open(step_json, "w") as f:
        json.dump(merged, f, indent=1)
    ok = report.get("pipeline_matches_cpu", True)
    print(f"gpu_train: {'pass' if ok else 'FAILED'}; wrote {args.out}/gpu_train.json and end_to_end in gpu_step.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

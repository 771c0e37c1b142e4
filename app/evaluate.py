"""Validation: loss, top-1 and top-5 of a model on a split, with the centre crop or the paper's 10
views (section 4.1: "averaging the predictions made by the network's softmax layer on the ten
patches"), sharded over data-parallel ranks."""
import contextlib
import sys
import warnings

import numpy as np

from alexnet.app.distributed import CollectiveError


def topk_correct(probs, labels, k):
    """How many rows have their label among the k highest scores."""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]  # (N, k), unordered
    return int((top == labels[:, None]).any(axis=1).sum())


@contextlib.contextmanager
def quiet_numerics():
    """No NumPy RuntimeWarnings for overflow, NaN or division by zero inside the block.

    Training reports a non-finite loss itself, as one line that names the step and the last good
    checkpoint; the warnings NumPy prints on the way there (LRN's squares, Winograd's products
    overflowing) would only precede it. np.errstate covers this thread; the warnings filter
    covers the layers' chunk threads (engine/threads.py), which do not inherit errstate."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        yield


def evaluate(model, source, prep, batch_size=128, ten_crop=False, workers=2, device="cpu", progress=False,
             desc="val", stop=None, part=None, combine=None):
    """Loss, top-1 and top-5 accuracy of ``model`` on ``source``, its images turned into inputs by
    ``prep`` (app/preprocess.py). Returns a dict with loss, top1, top5 (fractions) and count, or
    None when ``stop()`` became true between batches (a signal: the caller saves and exits).
    Sharded over data-parallel ranks: ``part`` (rank, ranks) is this rank's slice of each batch,
    and ``combine`` sums (loss, top-1, top-5, count) over the ranks."""
    from tqdm import tqdm

    from alexnet.app.data import EvalBatches, Prefetcher
    from alexnet.app.preprocess import probabilities

    batches = EvalBatches(source, batch_size, prep, ten_crop, part=part)
    sums = np.zeros(4)                                   # loss, top-1 and top-5 counts, images
    bar = tqdm(total=batches.num_batches, desc=desc, unit="batch", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    with quiet_numerics():
        loader = Prefetcher(batches, range(batches.num_batches), workers)
        try:
            for _, (views, labels), _ in loader:
                bar.update(1)
                if stop is not None and stop():
                    return None
                if len(labels) == 0:
                    continue
                probs = probabilities(model, views, device)  # (N, K)
                sums += (float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).sum()),
                         topk_correct(probs, labels, 1), topk_correct(probs, labels, 5), len(labels))
        finally:
            loader.close()  # the loader threads end before the warnings filter is restored
            bar.close()
    if combine is not None:
        sums = combine(sums)
    loss_sum, c1, c5, n = float(sums[0]), int(sums[1]), int(sums[2]), int(sums[3])
    if n == 0:
        raise CollectiveError("no validation image could be decoded")
    return {"loss": loss_sum / n, "top1": c1 / n, "top5": c5 / n, "count": n}

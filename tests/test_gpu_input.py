"""The GPU input pipeline (app/gpu_input.py) on the CPU harness: the batches it makes on the "device"
are the CPU pipeline's (app/data.py TrainBatches) bit for bit, for every augmentation, both kinds
of mean, a data-parallel rank's slice of each batch, a short last batch, a resumed epoch, and a
real folder and prepared dataset. (On the harness pinned memory is ordinary memory and the copy
stream is program order; the overlap itself needs a GPU: bench/gpu_train.py measures it there.)"""
import numpy as np
import pytest

from alexnet.app import data
from alexnet.app.gpu_input import GpuPrefetcher, loader_for
from alexnet.app.preprocess import Preprocessing


class Images:
    """A split of 23 random 20x20 images, 3 classes."""
    image_side = 20

    def __init__(self):
        r = np.random.default_rng(0)
        self.imgs = r.integers(0, 256, (23, 20, 20, 3)).astype(np.uint8)
        self.labels = np.arange(23) % 3

    def __len__(self):
        return len(self.labels)

    def load(self, indices, with_kept=False):
        loaded = self.imgs[indices], self.labels[indices]
        return loaded + (np.ones(len(indices), bool),) if with_kept else loaded


def same_batches(batches, rt, indices=None, workers=2):
    """Every batch of GpuPrefetcher against TrainBatches' own; returns how many were compared."""
    indices = list(range(batches.num_batches)) if indices is None else indices
    seen = []
    for b, (x, labels), wait in GpuPrefetcher(batches, indices, workers, rt):
        want, want_labels = batches(b)
        assert x.dtype == np.float32 and wait >= 0
        np.testing.assert_array_equal(x.view(np.uint32), want.view(np.uint32), err_msg=f"batch {b}")
        np.testing.assert_array_equal(labels, want_labels)
        seen.append(b)
    assert seen == indices
    return len(seen)


@pytest.mark.parametrize("augment", ["paper", "crops", "none"])
@pytest.mark.parametrize("mean", ["per pixel", "per channel"])
@pytest.mark.parametrize("part", [None, (1, 2)], ids=["one process", "rank 1 of 2"])
def test_the_gpu_pipeline_makes_the_cpu_pipelines_batches(harness_rt, augment, mean, part):
    m = (np.random.default_rng(1).uniform(0, 255, (20, 20, 3)) if mean == "per pixel"
         else np.array([[[120.0, 110.0, 100.0]]])).astype(np.float32)
    batches = data.TrainBatches(Images(), 6, Preprocessing(m, 1 / 64, 20, 15), seed=3, epoch=1, augment=augment,
                                part=part)
    assert same_batches(batches, harness_rt) == 4            # 23 images: 6 + 6 + 6 + 5


def test_a_resumed_epoch_and_one_loader_thread(harness_rt):
    batches = data.TrainBatches(Images(), 4, Preprocessing(np.full((1, 1, 3), 99, np.float32), 1.0, 20, 17), 0, 2)
    same_batches(batches, harness_rt, indices=[3, 4, 5], workers=1)


@pytest.mark.parametrize("prepared", [False, True], ids=["image folder", "prepared shards"])
def test_real_datasets(harness_rt, tmp_path, prepared):
    from conftest import make_folder
    root = make_folder(tmp_path / "folder", n_train=5, n_val=1, size=24)
    if prepared:
        data.prepare_dataset(root, str(tmp_path / "prepared"), 24, shard_size=4, workers=1, progress=False)
        root = str(tmp_path / "prepared")
    ds = data.open_dataset(root, 24)
    batches = data.TrainBatches(data.SubsetSource(ds.train, 13), 5, Preprocessing(ds.mean, 1 / 64, 24, 21), 0, 0)
    assert same_batches(batches, harness_rt) == 3


def test_stopping_early_closes_the_loader(harness_rt):
    batches = data.TrainBatches(Images(), 4, Preprocessing(np.zeros((1, 1, 3), np.float32), 1.0, 20, 17), 0, 0)
    loader = GpuPrefetcher(batches, range(batches.num_batches), 2, harness_rt)
    for b, _, _ in loader:
        break
    assert b == 0 and loader._pool._shutdown


def test_the_cpu_keeps_its_own_loader():
    batches = data.TrainBatches(Images(), 4, Preprocessing(np.zeros((1, 1, 3), np.float32), 1.0, 20, 17), 0, 0)
    assert type(loader_for(batches, range(2), 1, "cpu", None)) is data.Prefetcher

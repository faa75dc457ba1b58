"""vit_training.seeding: per-sample augmentation seeds and the generators reseeded in place."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from vit_training.seeding import SampleRandomState, sample_seed


def test_sample_seeds_are_fixed_distinct_and_64_bit() -> None:
    seeds = {sample_seed(0, epoch, index) for epoch in range(4) for index in range(2_000)}
    assert len(seeds) == 8_000  # no two (epoch, index) pairs share a stream
    assert all(0 <= seed < 2**64 for seed in seeds)
    assert sample_seed(7, 3, 5) == sample_seed(7, 3, 5)
    assert len({sample_seed(7, 3, 5), sample_seed(7, 5, 3), sample_seed(5, 3, 7), sample_seed(8, 3, 5)}) == 4
    # Neighbouring indices give unrelated seeds: about half of the 64 bits differ.
    flipped = [bin(sample_seed(0, 0, i) ^ sample_seed(0, 0, i + 1)).count("1") for i in range(500)]
    assert 28 < np.mean(flipped) < 36
    with pytest.raises(ValueError, match="non-negative integers, got seed=0, epoch=-1"):
        sample_seed(0, -1, 3)


def test_reseeded_generators_repeat_their_draws_in_any_instance() -> None:
    first, second = SampleRandomState(), SampleRandomState()
    numpy_a, python_a = first.reseed(12345)
    draws_a = (numpy_a.random(4).tolist(), numpy_a.integers(0, 100, 3).tolist(), python_a.random(), python_a.randint(0, 9))
    first.reseed(99)  # something else in between
    for state in (first, second, pickle.loads(pickle.dumps(second))):  # DataLoader workers get pickled copies
        numpy_b, python_b = state.reseed(12345)
        draws_b = (numpy_b.random(4).tolist(), numpy_b.integers(0, 100, 3).tolist(), python_b.random(),
                   python_b.randint(0, 9))
        assert draws_b == draws_a
    numpy_c, python_c = second.reseed(12346)
    assert numpy_c.random(4).tolist() != draws_a[0] and python_c.random() != draws_a[2]
    # The same objects are handed back every time, so a pipeline can keep them.
    assert first.reseed(1)[0] is first.numpy and first.reseed(2)[1] is first.python


def test_seed_pipeline_repeats_an_albumentations_pipeline() -> None:
    import albumentations as A

    pipeline = A.Compose([A.RandomCrop(8, 8), A.HorizontalFlip(p=0.5)])
    image = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16, 1)
    state = SampleRandomState()

    def crops(seed: int | None) -> list[np.ndarray]:
        state.seed_pipeline(pipeline, seed)
        return [pipeline(image=image)["image"] for _ in range(4)]

    first = crops(sample_seed(0, 0, 3))
    assert all(np.array_equal(a, b) for a, b in zip(first, crops(sample_seed(0, 0, 3)), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, crops(sample_seed(0, 0, 4)), strict=True))
    assert all(crop.shape == (8, 8, 1) for crop in crops(None))  # fresh entropy: still a working pipeline

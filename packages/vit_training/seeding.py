"""Per-sample random streams for data augmentation.

A training sample draws its augmentation from generators seeded by (run seed, epoch, sample
index): the same sample in the same epoch gets the same crop, flip and colour in any process,
DataLoader worker or resumed run, whatever order the samples are loaded in.

albumentations 2 draws from its own pair of generators (a numpy `Generator` and a Python
`random.Random`), not from torch's. `SampleRandomState` keeps one such pair per pipeline and
reseeds it in place for every sample, which is several times cheaper than building fresh
generators (numpy's SeedSequence, `default_rng`, `random.Random`); those cost more than resizing
a small image.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

__all__ = ["SampleRandomState", "sample_seed"]

_MASK64 = (1 << 64) - 1
# An odd increment selects one of PCG64's streams; any fixed odd constant will do.
_PCG_INCREMENT = 0xDA3E39CB94B95BDB_5851F42D4C957F2D | 1


def _splitmix64(value: int) -> int:
    """One step of SplitMix64 (Steele et al. 2014): a bijective 64-bit mix whose outputs look independent."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 64-bit augmentation seed of sample `index` in `epoch` of a run seeded with `seed`.

    Each number is mixed in by a SplitMix64 step, so neighbouring (epoch, index) pairs get
    unrelated seeds (seed + epoch * N + index would give overlapping streams).

    Raises:
        ValueError: a negative argument.
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"sample_seed takes non-negative integers, got seed={seed}, epoch={epoch}, index={index}")
    mixed = _splitmix64(seed & _MASK64)
    mixed = _splitmix64(mixed ^ (epoch & _MASK64))
    return _splitmix64(mixed ^ (index & _MASK64))


class SampleRandomState:
    """A numpy and a Python generator, reseeded in place for each sample.

    A transform holds one and calls, once per sample::

        random_state.seed_pipeline(pipeline, sample_seed(seed, epoch, index))

    The same seed always gives the same draws, from this object or any other.
    """

    def __init__(self) -> None:
        self.numpy = np.random.Generator(np.random.PCG64(0))
        self.python = random.Random(0)

    def reseed(self, seed: int) -> tuple[np.random.Generator, random.Random]:
        """Set both generators to the streams of `seed` (any integer) and return them."""
        seed &= _MASK64
        state = self.numpy.bit_generator.state
        state["state"] = {"state": (_splitmix64(seed) << 64) | _splitmix64(seed ^ _MASK64), "inc": _PCG_INCREMENT}
        state["has_uint32"], state["uinteger"] = 0, 0
        self.numpy.bit_generator.state = state
        self.python.seed(seed)
        return self.numpy, self.python

    def seed_pipeline(self, pipeline: Any, seed: int | None) -> None:
        """Give an albumentations pipeline the streams of `seed` (None: fresh entropy).

        Every step of the pipeline then draws from the one reseeded pair (albumentations'
        ``set_random_state``), so the same seed gives the same augmentation.
        """
        if seed is None:
            pipeline.set_random_state(np.random.default_rng(), random.Random())
        else:
            pipeline.set_random_state(*self.reseed(seed))

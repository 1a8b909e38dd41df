"""The Hamming distances of the near-duplicate search on NumPy 1 and 2: the portable bit count (NumPy 1 has no
``bitwise_count``) gives NumPy 2's result, alone and inside ``near_pairs``."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lora_studio.dataset_tools import image_hash
from lora_studio.dataset_tools.image_hash import Fingerprint, near_pairs, popcount_swar


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = [0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA, 0xFF00FF00FF00FF00]
    return np.concatenate([np.array(edges, dtype=np.uint64), rng.integers(0, 2**64 - 1, 2000, dtype=np.uint64,
                                                                          endpoint=True)])


def test_the_portable_count_is_python_s_and_numpy_2_s():
    values = _values()
    counts = popcount_swar(values)
    assert counts.dtype == np.uint8 and counts.shape == values.shape
    assert counts.tolist() == [int(v).bit_count() for v in values]
    grid = values[:40, None] ^ values[None, :50]  # the shape near_pairs gives it
    assert popcount_swar(grid).tolist() == [[int(v).bit_count() for v in row] for row in grid]
    if hasattr(np, "bitwise_count"):  # NumPy 2: the function near_pairs uses, equal to the portable one
        assert image_hash.popcount is np.bitwise_count
        assert np.array_equal(np.bitwise_count(values), counts)
        assert np.array_equal(np.bitwise_count(grid), popcount_swar(grid))


def test_near_pairs_on_numpy_1(monkeypatch):
    """The fallback path: the same pairs and distances as NumPy 2's count (or Python's, on NumPy 1)."""
    rng = random.Random(0)
    prints = []
    for seed in range(12):
        img = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
        img.paste(Image.new("RGB", (40, 30), tuple(rng.randrange(256) for _ in range(3))),
                  (rng.randrange(50), rng.randrange(60)))
        prints.append(Fingerprint.of(img))
        if seed % 3 == 0:  # an edited copy: a near-duplicate pair
            prints.append(Fingerprint.of(ImageEnhance.Brightness(img).enhance(1.1).resize((80, 80))))
    expected = near_pairs(prints)
    assert len(expected) >= 4
    monkeypatch.setattr(image_hash, "popcount", popcount_swar)
    assert near_pairs(prints) == expected
    monkeypatch.setattr(image_hash, "popcount", lambda x: np.vectorize(lambda v: int(v).bit_count())(x))
    assert near_pairs(prints) == expected


@pytest.mark.parametrize("value", [0, 2**64 - 1, 12345])
def test_a_single_value_counts_without_an_overflow_warning(value, recwarn):
    assert int(popcount_swar(np.uint64(value))) == value.bit_count()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]

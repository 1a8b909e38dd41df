"""Perceptual hashes (PIL + numpy) to find the same picture saved twice, re-sized, re-compressed or brightened.

Two 64-bit hashes of the greyscale picture:
  * pHash: the 8x8 lowest frequencies of a 32x32 DCT, each bit "above the median of those 64" (the DC term left out
    of the median). It follows the picture's layout of light and dark and ignores small edits.
  * dHash: 8 rows of 9 pixels, each bit "brighter than its right neighbour". It follows the gradients.

Pairs within both Hamming thresholds (``NEAR_PHASH``, ``NEAR_DHASH``) are candidates; a candidate is a near-duplicate
when the brightness-normalised 32x32 greyscale thumbnails also correlate at ``NEAR_CORRELATION`` or more. Pictures
that share one plain layout (a figure centred on white in two poses) often pass the 64-bit hashes; the thumbnail
check keeps them apart, while a copy re-saved, resized, re-compressed or brightened stays above 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIDE = 32  # the pHash's DCT size
LOW = 8  # the low-frequency block kept: 8x8 = 64 bits
NEAR_PHASH = 10  # at most this many of 64 pHash bits differ ...
NEAR_DHASH = 12  # ... and at most this many of 64 dHash bits
NEAR_CORRELATION = 0.98  # and the thumbnails correlate at least this much
THUMB = 32


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(HASH_SIDE)


def _grey(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    grey = img.convert("L")
    if grey.width > 4 * size[0] and grey.height > 4 * size[1]:  # a cheap box shrink first: big photos
        grey = grey.reduce(max(1, min(grey.width // (2 * size[0]), grey.height // (2 * size[1]))))
    return np.asarray(grey.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def phash(img: Image.Image) -> int:
    """The 64-bit DCT hash of ``img``."""
    pixels = _grey(img, (HASH_SIDE, HASH_SIDE))
    coeffs = (_DCT @ pixels @ _DCT.T)[:LOW, :LOW]
    median = np.median(coeffs.ravel()[1:])
    return _pack(coeffs > median)


def dhash(img: Image.Image) -> int:
    """The 64-bit gradient hash of ``img``."""
    pixels = _grey(img, (LOW + 1, LOW))
    return _pack(pixels[:, 1:] > pixels[:, :-1])


def thumbnail(img: Image.Image) -> tuple[np.ndarray, float]:
    """The 32x32 greyscale picture with zero mean and unit norm (so brightness and contrast changes drop out; all
    zeros for a flat picture), and its mean grey level."""
    pixels = _grey(img, (THUMB, THUMB)).ravel()
    level = float(pixels.mean())
    pixels -= level
    norm = np.linalg.norm(pixels)
    return (pixels / norm if norm > 1e-6 * pixels.size else np.zeros_like(pixels)).astype(np.float32), level


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What the duplicate search compares: the two hashes, the normalised thumbnail and the mean grey level."""
    phash: int
    dhash: int
    thumb: np.ndarray
    level: float = 0.0

    @classmethod
    def of(cls, img: Image.Image) -> "Fingerprint":
        thumb, level = thumbnail(img)
        return cls(phash(img), dhash(img), thumb, level)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


_M1, _M2, _M4, _H01 = (np.uint64(m) for m in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F,
                                               0x0101010101010101))


def popcount_swar(x: np.ndarray) -> np.ndarray:
    """The set bits of each element of a uint64 array, as uint8: the classic bit-parallel count (pairs, nibbles,
    bytes, then one multiply sums the bytes into the top one). NumPy 1 has no ``bitwise_count``."""
    shape = np.shape(x)
    x = np.array(x, dtype=np.uint64, ndmin=1)  # an array, even for one value: array arithmetic wraps silently
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return ((x * _H01) >> np.uint64(56)).astype(np.uint8).reshape(shape)  # the multiply wraps modulo 2**64


# NumPy 2's own (one instruction where the CPU has it), else the same result from the portable count
popcount = getattr(np, "bitwise_count", popcount_swar)


def correlation(a: Fingerprint, b: Fingerprint) -> float:
    """1.0 for the same picture (up to brightness and contrast), about 0 for unrelated ones. A flat picture (one
    colour) matches only another flat one of about the same grey level."""
    if not a.thumb.any() or not b.thumb.any():
        return 1.0 if not a.thumb.any() and not b.thumb.any() and abs(a.level - b.level) < 8 else 0.0
    return float(a.thumb @ b.thumb)


def near_pairs(prints: list[Fingerprint], max_phash: int = NEAR_PHASH, max_dhash: int = NEAR_DHASH,
               min_correlation: float = NEAR_CORRELATION) -> list[tuple[int, int, int, float]]:
    """(i, j, pHash distance, correlation) for every near-duplicate pair i < j. The hashes are compared in blocks
    of rows, so memory stays small for thousands of images."""
    if len(prints) < 2:
        return []
    p = np.array([f.phash for f in prints], dtype=np.uint64)
    d = np.array([f.dhash for f in prints], dtype=np.uint64)
    pairs = []
    block = 512
    for start in range(0, len(prints), block):
        dp = popcount(p[start:start + block, None] ^ p[None, :])
        dd = popcount(d[start:start + block, None] ^ d[None, :])
        for i, j in zip(*np.nonzero((dp <= max_phash) & (dd <= max_dhash))):
            i, j = int(i) + start, int(j)
            if i < j:
                corr = correlation(prints[i], prints[j])
                if corr >= min_correlation:
                    pairs.append((i, j, int(dp[i - start, j]), corr))
    return pairs

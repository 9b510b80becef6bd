"""scikit-learn's handwritten digits: 1,797 real 8 x 8 images, offline.

The images ship inside scikit-learn (``sklearn.datasets.load_digits`` reads a file
bundled with the package; nothing is downloaded). Pixel intensities 0..16 are mapped
linearly to [-1, 1]: x0 = v / 8 - 1.

**The split is fixed.** ``split="test"`` is a stratified 20 % of every class, chosen by a
permutation drawn from ``torch.Generator().manual_seed(0)`` (class by class, digits 0 to
9, ``round(0.2 * n_class)`` images each): 359 test images and 1,438 train images, the
same on every machine. Both splits keep the original order of the data set.

**Upsampling.** ``size=16`` (or any multiple of 8) repeats every pixel in a block
(nearest neighbour). It adds no information; it only makes each training step cost
about (size / 8)^2 times more.

>>> images, labels = digits("train")
>>> images.shape, labels.shape, images.dtype, labels.dtype
(torch.Size([1438, 1, 8, 8]), torch.Size([1438]), torch.float32, torch.int64)
>>> float(images.min()), float(images.max())
(-1.0, 1.0)

Introduced in chapter 01 (used from chapter 03 on).
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "digits", "digits_split_indices"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
_SPLITS = ("all", "train", "test")


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[torch.Tensor, torch.Tensor]:
    """Read the bundled file once; callers must clone before returning."""
    from sklearn.datasets import load_digits  # local import: scikit-learn is slow to import

    bunch = load_digits()
    values = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8) in 0..16
    images = (values / 8.0 - 1.0).unsqueeze(1)  # (1797, 1, 8, 8) in [-1, 1]
    labels = torch.as_tensor(bunch.target, dtype=torch.long)  # (1797,)
    return images, labels


@functools.lru_cache(maxsize=1)
def _split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    _, labels = _load_all()
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    test_parts = []
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()  # (n_c,) original indices
        n_test = int(math.floor(DIGITS_TEST_FRACTION * len(members) + 0.5))
        perm = torch.randperm(len(members), generator=generator)
        test_parts.append(members[perm[:n_test]])
    test = torch.sort(torch.cat(test_parts)).values
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test] = True
    train = torch.nonzero(~is_test).flatten()
    return train, test


def digits_split_indices(split: str) -> torch.Tensor:
    """Indices into the full data set (``split="all"``) of a split, sorted ascending.

    Args:
        split: "all", "train" or "test".

    Returns:
        (N,) long tensor of indices; "train" and "test" are disjoint and cover "all".

    Introduced in chapter 03.
    """
    if split not in _SPLITS:
        raise ValueError(f"digits: split must be one of {list(_SPLITS)}, got {split!r}")
    if split == "all":
        return torch.arange(len(_load_all()[1]))
    train, test = _split_indices()
    return (train if split == "train" else test).clone()


def digits(split: str = "all", *, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Real handwritten digits x0 with their labels y.

    Args:
        split: "all" (1,797 images), "train" (1,438) or "test" (359); the split is the
            fixed stratified one described in the module docstring.
        size: side of the returned images: 8 (native) or a multiple of 8 (nearest
            neighbour upsampling, which adds no information).

    Returns:
        images: x0, (N, 1, size, size) float32 in [-1, 1] (pixel v in 0..16 -> v / 8 - 1).
        labels: y, (N,) int64 in 0..9.

    The file is read once per process (``functools.lru_cache``); every call returns
    fresh tensors, so modifying them in place is safe.

    Introduced in chapter 01.
    """
    if split not in _SPLITS:
        raise ValueError(f"digits: split must be one of {list(_SPLITS)}, got {split!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8 != 0:
        raise ValueError(f"digits: size must be 8 or a multiple of 8 (16, 24, ...), got {size!r}")
    images, labels = _load_all()
    index = digits_split_indices(split)
    x0 = images[index]  # (N, 1, 8, 8), advanced indexing copies
    y = labels[index]  # (N,)
    if size != 8:
        factor = size // 8
        x0 = x0.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # (N, 1, size, size)
    return x0.contiguous(), y

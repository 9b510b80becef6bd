"""A learner's own images, and larger data sets that are already on disk.

The course never downloads anything. ``image_folder`` reads the PNG / JPEG files of a
folder; ``optional_dataset`` reads MNIST or CIFAR-10 only if their standard files are
already present under ``root`` and otherwise raises an error explaining where to put
them.

Pixel values v in 0..255 become x0 = v / 127.5 - 1 in [-1, 1].

>>> import tempfile
>>> from PIL import Image
>>> folder = tempfile.mkdtemp()
>>> Image.new("RGB", (40, 30), (255, 0, 0)).save(f"{folder}/red.png")
>>> x0 = image_folder(folder, size=16)
>>> x0.shape, float(x0[0, 0].mean()), float(x0[0, 1].mean())
(torch.Size([1, 3, 16, 16]), 1.0, -1.0)

Introduced in chapter 00 (the full-scale profile).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "OPTIONAL_DATASETS", "image_folder", "optional_dataset"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
OPTIONAL_DATASETS: tuple[str, ...] = ("mnist", "cifar10")


def _to_unit_range(values: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)) / 127.5 - 1.0


def image_folder(path: str | Path, *, size: int = 16, channels: int = 3) -> torch.Tensor:
    """Load every PNG / JPEG image directly inside ``path`` (not in sub-folders).

    Each image is centre-cropped to a square (the shorter side), resized to
    ``size`` x ``size`` with PIL's bicubic filter (which low-passes when it shrinks) and
    converted to RGB (``channels=3``) or grey levels (``channels=1``). Files are read in
    sorted name order, so the result is deterministic.

    Args:
        path: a folder holding ``*.png``, ``*.jpg`` or ``*.jpeg`` files (any case).
        size: output side in pixels, >= 2.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        x0: (N, channels, size, size) float32 in [-1, 1].

    Raises:
        ValueError: the folder does not exist, holds no images, an image cannot be read,
            or ``size`` / ``channels`` are invalid.

    Introduced in chapter 00.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"image_folder: size must be an int >= 2, got {size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"image_folder: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"image_folder: {str(folder)!r} is not an existing folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image_folder: no image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    mode = "RGB" if channels == 3 else "L"
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                w, h = image.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                image = image.crop((left, top, left + side, top + side))
                image = image.resize((size, size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(image, dtype=np.uint8).reshape(size, size, channels))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"image_folder: cannot read {str(file)!r} as an image ({error})") from error
    stacked = np.stack(arrays)  # (N, size, size, C)
    return _to_unit_range(stacked).permute(0, 3, 1, 2).contiguous()  # (N, C, size, size)


# ---------------------------------------------------------------- optional data sets

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}


def _not_found(name: str, root: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"optional_dataset: {name} was not found under {str(root)!r}. The course never downloads data; "
        f"to use {name}, copy its standard files there yourself ({expected}). "
        "The offline data sets (toy2d, digits, shapes, image_folder) need no files."
    )


def _find(candidates: list[Path]) -> Path | None:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian header, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"optional_dataset: {str(path)!r} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"optional_dataset: {str(path)!r} holds {data.size} values, header says {dims}")
    return data.reshape(dims)


def _load_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    folders = [root, root / "MNIST" / "raw", root / "mnist"]
    found = []
    for stem in _MNIST_FILES[split]:
        path = _find([f / (stem + ext) for f in folders for ext in ("", ".gz")])
        if path is None:
            raise _not_found("mnist", root, f"{stem}[.gz] in the folder, in MNIST/raw/ or in mnist/")
        found.append(path)
    images = _read_idx(found[0])  # (N, 28, 28)
    labels = _read_idx(found[1])  # (N,)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"optional_dataset: MNIST files disagree: images {images.shape}, labels {labels.shape}")
    return _to_unit_range(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# Everything a CIFAR-10 "python version" batch (a pickled dict of bytes, a uint8 array and int
# lists) asks the unpickler to import: numpy's array reconstruction, old and new (numpy 2 moved
# numpy.core to numpy._core), and _codecs.encode, which protocol-2 pickles written by Python 3 use
# for bytes. Anything else (os.system, builtins.eval, ...) would run code: refused.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that imports only what CIFAR-10 batches contain (``_CIFAR_GLOBALS``)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy >= 2: the same code, no warning
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 batch file, unpickled with :class:`_CifarUnpickler` (no code execution)."""
    with open(path, "rb") as handle:
        try:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"optional_dataset: {str(path)!r} is not a CIFAR-10 batch: it asks to import "
                             f"{error}, which CIFAR-10 batches never contain (refused: unpickling it could run "
                             "code)") from None
        except (EOFError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"optional_dataset: {str(path)!r} is not a readable CIFAR-10 batch ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"optional_dataset: {str(path)!r} is not a CIFAR-10 batch (expected a dict with "
                         "b'data' and b'labels')")
    return batch


def _load_cifar10(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    folders = [root / "cifar-10-batches-py", root]
    images, labels = [], []
    for stem in _CIFAR_FILES[split]:
        path = _find([f / stem for f in folders])
        if path is None:
            raise _not_found("cifar10", root, f"the python version: cifar-10-batches-py/{stem} and the other batches")
        batch = _read_cifar_batch(path)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return _to_unit_range(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def optional_dataset(name: str, root: str | Path, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or CIFAR-10 from files already on disk (never downloaded).

    Looks for the standard distribution files under ``root``:

    - ``"mnist"``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``), in
      ``root``, ``root/MNIST/raw`` (torchvision's layout) or ``root/mnist``.
    - ``"cifar10"``: the "python version" batches ``data_batch_1`` .. ``data_batch_5``
      and ``test_batch`` in ``root/cifar-10-batches-py`` or ``root``. These are Python pickles;
      they are read with an unpickler that admits only what CIFAR-10 batches contain (numpy
      arrays, bytes, lists), so a file that would run code raises a ValueError instead.

    Args:
        name: "mnist" or "cifar10".
        root: folder to search.
        split: "train" or "test".

    Returns:
        images: x0 in [-1, 1], (N, 1, 28, 28) for MNIST, (N, 3, 32, 32) for CIFAR-10.
        labels: y, (N,) int64.

    Raises:
        ValueError: unknown ``name`` or ``split``, or malformed files.
        FileNotFoundError: the files are absent; the message says what to put where.

    Introduced in chapter 00 (the full-scale profile).
    """
    if name not in OPTIONAL_DATASETS:
        raise ValueError(f"optional_dataset: name must be one of {list(OPTIONAL_DATASETS)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"optional_dataset: split must be 'train' or 'test', got {split!r}")
    folder = Path(root).expanduser()
    if name == "mnist":
        return _load_mnist(folder, split)
    return _load_cifar10(folder, split)

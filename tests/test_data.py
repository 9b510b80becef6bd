"""Tests of course_lib.data: toy2d, digits, shapes, image_folder, optional_dataset, load."""

from __future__ import annotations

import gzip
import math
import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.data import DATASET_NAMES, load
from course_lib.data.digits import digits, digits_split_indices
from course_lib.data.folder import image_folder, optional_dataset
from course_lib.data.shapes import COLOR_NAMES, COLOR_VALUES, SHAPE_NAMES, SIZE_NAMES, ShapesBatch, caption, shapes
from course_lib.data.toy2d import TOY2D_NAMES, toy2d


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- toy2d


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_shape_dtype_and_scale(name):
    x0 = toy2d(name, 20_000, generator=gen(0))
    assert x0.shape == (20_000, 2) and x0.dtype == torch.float32
    assert torch.isfinite(x0).all()
    assert x0.mean(0).abs().max() < 0.06, x0.mean(0)
    assert abs(float(x0.var(0).mean()) - 1.0) < 0.06, x0.var(0)


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_is_reproducible(name):
    a = toy2d(name, 100, generator=gen(3))
    b = toy2d(name, 100, generator=gen(3))
    c = toy2d(name, 100, generator=gen(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_eight_gaussians_are_around_eight_centres():
    x0 = toy2d("eight_gaussians", 4000, generator=gen(0))
    angles = torch.arange(8) * (math.pi / 4)
    centres = 1.4 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)  # (8, 2)
    distance, nearest = torch.cdist(x0, centres).min(1)
    assert float(distance.max()) < 0.6  # 0.6 = 6 std of a cluster
    counts = torch.bincount(nearest, minlength=8)
    assert int(counts.min()) > 400  # every mode is present, about 500 each


def test_checkerboard_fills_only_the_dark_cells():
    x0 = toy2d("checkerboard", 8000, generator=gen(0))
    half = math.sqrt(3.0)
    assert float(x0.abs().max()) <= half + 1e-6
    cells = torch.floor((x0 + half) / (half / 2)).clamp(0, 3).long()  # (n, 2) column, row
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    occupied = torch.unique(cells[:, 0] * 4 + cells[:, 1])
    assert len(occupied) == 8


def test_moons_has_two_arcs():
    x0 = toy2d("moons", 4000, generator=gen(0))
    raw = x0 * 0.71 + torch.tensor([0.5, 0.25])  # undo the documented scaling
    upper = torch.linalg.norm(raw, dim=1)  # distance to (0, 0), 1 on the upper moon
    lower = torch.linalg.norm(raw - torch.tensor([1.0, 0.5]), dim=1)  # 1 on the lower moon
    assert float(((torch.minimum((upper - 1).abs(), (lower - 1).abs())) < 0.35).float().mean()) > 0.99


def test_toy2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown data set 'circles'.*moons.*spirals"):
        toy2d("circles", 10)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        toy2d("moons", 0)
    with pytest.raises(ValueError, match="n must be a positive int, got -3"):
        toy2d("moons", -3)
    with pytest.raises(ValueError, match="n must be a positive int, got 2.5"):
        toy2d("moons", 2.5)


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range():
    for split, n in (("all", 1797), ("train", 1438), ("test", 359)):
        images, labels = digits(split)
        assert images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert float(images.min()) == -1.0 and float(images.max()) == 1.0
        # v / 8 - 1 with v in 0..16: multiples of 1/8
        torch.testing.assert_close(images * 8, torch.round(images * 8), rtol=0, atol=1e-5)
        assert set(labels.tolist()) == set(range(10))


def test_digits_split_is_disjoint_covering_stratified_and_fixed():
    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    _, labels = digits("all")
    train_y, test_y = digits("train")[1], digits("test")[1]
    torch.testing.assert_close(labels[train], train_y)
    torch.testing.assert_close(labels[test], test_y)
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((test_y == c).sum()) == math.floor(0.2 * n_c + 0.5)
    # the split is a constant of the course: a change to it must be deliberate
    assert test[:8].tolist() == [1, 2, 6, 10, 13, 16, 22, 25]
    images_a, _ = digits("test")
    images_b, _ = digits("test")
    torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)


def test_digits_returns_fresh_tensors():
    images, labels = digits("train")
    images.fill_(0.0)
    labels.fill_(0)
    again, again_labels = digits("train")
    assert float(again.min()) == -1.0 and int(again_labels.max()) == 9


def test_digits_upsampling_is_nearest_neighbour():
    small, _ = digits("test")
    big, _ = digits("test", size=16)
    assert big.shape == (359, 1, 16, 16)
    torch.testing.assert_close(F.avg_pool2d(big, 2), small)
    torch.testing.assert_close(big[:, :, ::2, ::2], big[:, :, 1::2, 1::2])


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be one of \['all', 'train', 'test'\], got 'valid'"):
        digits("valid")
    with pytest.raises(ValueError, match="size must be 8 or a multiple of 8.*got 12"):
        digits(size=12)
    with pytest.raises(ValueError, match="split must be one of"):
        digits_split_indices("validation")


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [16, 28])
def test_shapes_batch_contents(size):
    batch = shapes(400, size=size, generator=gen(0))
    assert isinstance(batch, ShapesBatch) and len(batch) == 400
    assert batch.images.shape == (400, 3, size, size) and batch.images.dtype == torch.float32
    assert float(batch.images.min()) >= -1.0 and float(batch.images.max()) <= 1.0
    for ids, names in ((batch.labels, SHAPE_NAMES), (batch.color_ids, COLOR_NAMES), (batch.size_ids, SIZE_NAMES)):
        assert ids.dtype == torch.int64 and ids.shape == (400,)
        assert set(ids.tolist()) == set(range(len(names)))  # every value occurs in 400 draws
    for tensor in (batch.masks, batch.edges):
        assert tensor.shape == (400, 1, size, size)
        assert set(torch.unique(tensor).tolist()) <= {0.0, 1.0}
    assert bool((batch.edges <= batch.masks).all())  # edges lie on the shape
    assert bool((batch.edges.sum((1, 2, 3)) > 0).all())
    assert bool((batch.edges.sum((1, 2, 3)) < batch.masks.sum((1, 2, 3))).any())  # interiors exist
    # coverage a = (image - background) / (colour - background), read in a channel where the
    # colour is +1 (every colour has one): the mask is a >= 1/2
    channel = COLOR_VALUES[batch.color_ids].argmax(1)  # (n,)
    coverage = (batch.images[torch.arange(400), channel] + 1) / 2  # (n, size, size)
    torch.testing.assert_close(batch.masks[:, 0], (coverage >= 0.5).float())
    colour = COLOR_VALUES[batch.color_ids][:, :, None, None]  # (n, 3, 1, 1)
    interior = (batch.masks - batch.edges).expand(-1, 3, -1, -1) > 0
    close = (batch.images - colour).abs() < 1e-6
    assert bool(close[interior].all())
    # large shapes cover more pixels than small ones
    area = batch.masks.sum((1, 2, 3))
    assert float(area[batch.size_ids == 1].min()) > float(area[batch.size_ids == 0].mean())
    for k in range(5):
        assert batch.captions[k] == caption(int(batch.labels[k]), int(batch.color_ids[k]), int(batch.size_ids[k]))


def test_shapes_background_is_black_away_from_the_shape():
    batch = shapes(50, size=16, generator=gen(1))
    far = F.max_pool2d(batch.masks, 3, stride=1, padding=1) == 0  # not even next to the mask
    assert bool((batch.images[far.expand(-1, 3, -1, -1)] == -1.0).all())


def test_shapes_caption_text():
    assert caption(0, 0, 0) == "a small red circle"
    assert caption(2, 3, 1) == "a large yellow triangle"
    with pytest.raises(ValueError, match="label must be in 0..3, got 4"):
        caption(4, 0, 0)


def test_shapes_reproducible_and_fast():
    a = shapes(64, generator=gen(5))
    b = shapes(64, generator=gen(5))
    c = shapes(64, generator=gen(6))
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    start = time.perf_counter()
    shapes(1000, size=16, generator=gen(0))
    assert time.perf_counter() - start < 1.0


def test_shapes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        shapes(0)
    with pytest.raises(ValueError, match="size must be an int >= 8.*got 4"):
        shapes(3, size=4)


# ---------------------------------------------------------------- image folder and optional sets


def test_image_folder_loads_sorted_resized_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 10), (255, 255, 255)).save(tmp_path / "b_white.jpg", quality=100)
    Image.new("RGB", (12, 12), (0, 0, 255)).save(tmp_path / "a_blue.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    x0 = image_folder(tmp_path, size=8)
    assert x0.shape == (2, 3, 8, 8) and x0.dtype == torch.float32
    torch.testing.assert_close(x0[0], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 8, 8))
    torch.testing.assert_close(x0[1], torch.ones(3, 8, 8), atol=0.02, rtol=0)
    grey = image_folder(tmp_path, size=4, channels=1)
    assert grey.shape == (2, 1, 4, 4)
    assert float(grey[0].mean()) < -0.5 and float(grey[1].mean()) > 0.95


def test_image_folder_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="is not an existing folder"):
        image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        image_folder(tmp_path)
    with pytest.raises(ValueError, match="size must be an int >= 2, got 0"):
        image_folder(tmp_path, size=0)
    with pytest.raises(ValueError, match="channels must be 1 .* or 3 .*got 2"):
        image_folder(tmp_path, channels=2)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def test_optional_dataset_reads_local_mnist_and_cifar(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    pixels = rng.integers(0, 256, size=(5, 28, 28))
    _write_idx(raw / "t10k-images-idx3-ubyte", pixels, compress=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]), compress=False)
    images, labels = optional_dataset("mnist", tmp_path, split="test")
    assert images.shape == (5, 1, 28, 28) and labels.tolist() == [3, 1, 4, 1, 5]
    torch.testing.assert_close(images[:, 0], torch.from_numpy(pixels).float() / 127.5 - 1)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = rng.integers(0, 256, size=(2, 3072)).astype(np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": data, b"labels": [7, 2]}, handle)
    images, labels = load("cifar10", root=tmp_path, split="test")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [7, 2]
    torch.testing.assert_close(images.reshape(2, -1), torch.from_numpy(data).float() / 127.5 - 1)


def test_optional_dataset_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist was not found.*never downloads"):
        optional_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar10 was not found.*never downloads"):
        optional_dataset("cifar10", tmp_path, split="test")
    with pytest.raises(ValueError, match=r"name must be one of \['mnist', 'cifar10'\], got 'imagenet'"):
        optional_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'all'"):
        optional_dataset("mnist", tmp_path, split="all")


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled with pickle.load."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_are_read_without_running_code(tmp_path, monkeypatch, protocol):
    """optional_dataset('cifar10') admits only what a CIFAR-10 batch holds; a payload is refused."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 8], b"data": data,
             b"filenames": [b"a.png", b"b.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    images, labels = optional_dataset("cifar10", tmp_path, split="test")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 8]

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [_RunsCode()]}, protocol=protocol))
    with pytest.raises(ValueError, match=r"not a CIFAR-10 batch: it asks to import (posix|nt|os)\.system"):
        optional_dataset("cifar10", tmp_path, split="test")
    assert not (tmp_path / "pwned").exists()
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=protocol))
    with pytest.raises(ValueError, match="expected a dict with b'data' and b'labels'"):
        optional_dataset("cifar10", tmp_path, split="test")


# ---------------------------------------------------------------- load


def test_load_dispatches_by_name():
    torch.testing.assert_close(load("spirals", n=10, generator=gen(0)), toy2d("spirals", 10, generator=gen(0)))
    images, labels = load("digits", split="test", size=16)
    assert images.shape == (359, 1, 16, 16)
    assert load("shapes", n=3, size=28, generator=gen(0)).images.shape == (3, 3, 28, 28)
    assert set(TOY2D_NAMES) < set(DATASET_NAMES)
    with pytest.raises(ValueError, match=r"unknown data set 'mnist_fashion'.*'digits'"):
        load("mnist_fashion")


def test_palette_fraction_is_one_on_real_shapes_and_zero_off_the_palette():
    from course_lib.data.shapes import palette_fraction

    real = shapes(200, generator=torch.Generator().manual_seed(3)).images
    assert palette_fraction(real) == 1.0
    shifted = real.clone()
    fg = shifted.amax(dim=1, keepdim=True) > -0.5
    shifted = torch.where(fg, torch.full_like(shifted, 0.2), shifted)  # grey foreground
    assert palette_fraction(shifted) < 0.05
    half = torch.cat([real[:100], shifted[100:]])
    assert 0.3 < palette_fraction(half) < 0.7
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        palette_fraction(real[:, :1])
    with pytest.raises(ValueError, match="no foreground"):
        palette_fraction(torch.full((2, 3, 4, 4), -1.0))


def test_shape_mask_draws_the_shape_where_asked():
    import math

    from course_lib.data.shapes import shape_mask

    circle = shape_mask(0, 8.0, 8.0, 4.0)
    assert abs(float(circle.sum()) - math.pi * 16) < 4  # the disc's area, to a pixel rim
    moved = shape_mask(0, 5.0, 8.0, 4.0)
    assert torch.equal(moved, torch.roll(circle, -3, dims=-1))  # x moves it along the width
    for label in range(4):
        assert 0 < float(shape_mask(label, 8.0, 8.0, 5.0).sum()) < 256
    with pytest.raises(ValueError, match="label must be an int"):
        shape_mask(4, 8.0, 8.0, 4.0)
    with pytest.raises(ValueError, match="radius must be > 0"):
        shape_mask(0, 8.0, 8.0, 0.0)
    with pytest.raises(ValueError, match=r"x must be a number in \[0, 16\]"):
        shape_mask(0, 20.0, 8.0, 4.0)

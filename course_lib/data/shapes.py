"""Procedurally rendered coloured shapes with labels, captions, masks and edge maps.

Each image shows one shape (``SHAPE_NAMES``) in one colour (``COLOR_NAMES``) and one of
two sizes (``SIZE_NAMES``) at a random position on a plain black background. Next to the
RGB image a batch carries everything the conditional chapters need: the class label
(guidance), a caption such as "a small red circle" (text conditioning), the binary mask
and its edge map (ControlNet).

Rendering: a shape of half-extent r (pixels) centred at (c_x, c_y) is tested on a
4 x 4 sub-pixel grid per pixel; the fraction of covered sub-pixels is the coverage
a in [0, 1] (anti-aliasing). The image is background + a * (colour - background), the
mask is a >= 1/2, and the edge map marks mask pixels with a non-mask pixel among their
8 neighbours (outside the image counts as non-mask).

Half-extent r: "small" draws r / size in [0.19, 0.24], "large" in [0.30, 0.38]; the
centre is uniform where the whole shape fits inside the image.

>>> import torch
>>> batch = shapes(4, size=16, generator=torch.Generator().manual_seed(0))
>>> batch.images.shape, batch.masks.shape, batch.labels.dtype
(torch.Size([4, 3, 16, 16]), torch.Size([4, 1, 16, 16]), torch.int64)
>>> batch.captions[0] == caption(int(batch.labels[0]), int(batch.color_ids[0]), int(batch.size_ids[0]))
True

Introduced in chapter 11 (used again in chapters 12, 13 and 15).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["COLOR_NAMES", "COLOR_VALUES", "SHAPE_NAMES", "SIZE_NAMES", "ShapesBatch", "caption", "palette_fraction", "read_colour", "read_size", "segment", "shape_mask", "shapes"]

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZE_NAMES: tuple[str, ...] = ("small", "large")

# RGB in [-1, 1] for each entry of COLOR_NAMES; the background is black (-1, -1, -1).
COLOR_VALUES = torch.tensor(
    [
        [1.0, -1.0, -1.0],  # red
        [-1.0, 1.0, -1.0],  # green
        [-1.0, -1.0, 1.0],  # blue
        [1.0, 1.0, -1.0],  # yellow
        [1.0, -1.0, 1.0],  # magenta
        [-1.0, 1.0, 1.0],  # cyan
    ]
)
BACKGROUND = -1.0
_RADIUS_RANGE = {0: (0.19, 0.24), 1: (0.30, 0.38)}  # size id -> r / size
_SUPERSAMPLE = 4


@dataclass
class ShapesBatch:
    """A batch of rendered shapes.

    Attributes:
        images: (n, 3, size, size) float32 RGB in [-1, 1].
        labels: (n,) int64 shape class, index into ``SHAPE_NAMES``.
        color_ids: (n,) int64 index into ``COLOR_NAMES``.
        size_ids: (n,) int64 index into ``SIZE_NAMES`` (0 small, 1 large).
        captions: n strings "a {size} {colour} {shape}".
        masks: (n, 1, size, size) float32 in {0, 1}, 1 on the shape.
        edges: (n, 1, size, size) float32 in {0, 1}, the boundary pixels of the mask.

    Introduced in chapter 11.
    """

    images: torch.Tensor
    labels: torch.Tensor
    color_ids: torch.Tensor
    size_ids: torch.Tensor
    captions: list[str]
    masks: torch.Tensor
    edges: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def caption(label: int, color_id: int, size_id: int) -> str:
    """The caption "a {size} {colour} {shape}" of one image, e.g. "a small red circle".

    >>> caption(0, 0, 0)
    'a small red circle'

    Introduced in chapter 15.
    """
    for value, names, what in ((label, SHAPE_NAMES, "label"), (color_id, COLOR_NAMES, "color_id"),
                               (size_id, SIZE_NAMES, "size_id")):
        if not 0 <= int(value) < len(names):
            raise ValueError(f"caption: {what} must be in 0..{len(names) - 1}, got {value!r}")
    return f"a {SIZE_NAMES[size_id]} {COLOR_NAMES[color_id]} {SHAPE_NAMES[label]}"


def _inside(label: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Whether the offsets (dx, dy) from the centre lie inside the shape of half-extent r.

    label: (n, 1, 1); dx, dy: (n, P, P) offsets in pixels (y points down); r: (n, 1, 1).
    """
    ax, ay = dx.abs(), dy.abs()
    circle = dx**2 + dy**2 <= r**2
    square = torch.maximum(ax, ay) <= 0.8 * r  # 0.8 r keeps the area close to the circle's
    # upright isosceles triangle: apex (0, -r), base corners (+-r, r)
    triangle = (dy <= r) & (ax <= (dy + r) / 2)
    arm = r / 3
    cross = ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    inside = torch.stack([circle, square, triangle, cross], dim=0)  # (4, n, P, P)
    return torch.gather(inside, 0, label.expand_as(dx).unsqueeze(0)).squeeze(0)  # (n, P, P)


def _coverage(labels: torch.Tensor, centre: torch.Tensor, r: torch.Tensor, size: int) -> torch.Tensor:
    """The anti-aliased coverage (n, 1, size, size) of shapes ``labels`` (n,) at ``centre`` (n, 2) (x, y)
    with half-extent ``r`` (n,), in pixels."""
    # sub-pixel sample positions, pixel k covers [k, k + 1)
    P = size * _SUPERSAMPLE
    coords = (torch.arange(P, dtype=torch.float32) + 0.5) / _SUPERSAMPLE  # (P,)
    dx = coords[None, None, :] - centre[:, 0, None, None]  # (n, 1, P)
    dy = coords[None, :, None] - centre[:, 1, None, None]  # (n, P, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (n, P, P)
    inside = _inside(labels[:, None, None], dx, dy, r[:, None, None])  # (n, P, P)
    return F.avg_pool2d(inside.to(torch.float32).unsqueeze(1), _SUPERSAMPLE)  # (n, 1, size, size)


def shape_mask(label: int, x: float, y: float, radius: float, *, size: int = 16) -> torch.Tensor:
    """The mask (1, 1, size, size) of one shape drawn where you say: ``SHAPE_NAMES[label]`` centred at
    pixel coordinates (x, y) (y points down) with half-extent ``radius`` pixels, exactly as
    :func:`shapes` renders its masks. Chapter 13's explorer draws controls with it.

    >>> import torch
    >>> m = shape_mask(0, 8.0, 8.0, 4.0)
    >>> m.shape, int(m.sum()), bool(m[0, 0, 8, 8])
    (torch.Size([1, 1, 16, 16]), 52, True)
    """
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(SHAPE_NAMES):
        raise ValueError(f"shape_mask: label must be an int in 0..{len(SHAPE_NAMES) - 1} ({SHAPE_NAMES}), got {label!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"shape_mask: size must be an int >= 8, got {size!r}")
    for name, value in (("x", x), ("y", y), ("radius", radius)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= size:
            raise ValueError(f"shape_mask: {name} must be a number in [0, {size}] (pixels), got {value!r}")
    if radius <= 0:
        raise ValueError(f"shape_mask: radius must be > 0 pixels, got {radius!r}")
    coverage = _coverage(torch.tensor([label]), torch.tensor([[float(x), float(y)]]), torch.tensor([float(radius)]), size)
    return (coverage >= 0.5).to(torch.float32)


def shapes(n: int, *, size: int = 16, generator: torch.Generator | None = None) -> ShapesBatch:
    """Render ``n`` random coloured shapes.

    Args:
        n: number of images, n >= 1.
        size: image side in pixels, 8 <= size (16 and 28 are the course's sizes).
        generator: source of every random draw (class, colour, size, radius, position);
            the same seed gives the same batch.

    Returns:
        A ``ShapesBatch``: images (n, 3, size, size) in [-1, 1], labels, color_ids,
        size_ids (n,), captions, masks and edges (n, 1, size, size) in {0, 1}.

    Introduced in chapter 11.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"shapes: n must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"shapes: size must be an int >= 8 (16 and 28 are typical), got {size!r}")
    labels = torch.randint(0, len(SHAPE_NAMES), (n,), generator=generator)  # (n,)
    color_ids = torch.randint(0, len(COLOR_NAMES), (n,), generator=generator)  # (n,)
    size_ids = torch.randint(0, len(SIZE_NAMES), (n,), generator=generator)  # (n,)
    lo = torch.tensor([_RADIUS_RANGE[0][0], _RADIUS_RANGE[1][0]])[size_ids]
    hi = torch.tensor([_RADIUS_RANGE[0][1], _RADIUS_RANGE[1][1]])[size_ids]
    r = size * (lo + (hi - lo) * torch.rand(n, generator=generator))  # (n,) half-extent in pixels
    # centre uniform in [r, size - r] so that the shape stays inside the image
    centre = r[:, None] + (size - 2 * r[:, None]) * torch.rand(n, 2, generator=generator)  # (n, 2) (x, y)

    coverage = _coverage(labels, centre, r, size)  # (n, 1, size, size)

    colour = COLOR_VALUES[color_ids][:, :, None, None]  # (n, 3, 1, 1)
    images = BACKGROUND + coverage * (colour - BACKGROUND)  # (n, 3, size, size)
    masks = (coverage >= 0.5).to(torch.float32)  # (n, 1, size, size)
    outside = F.pad(1.0 - masks, (1, 1, 1, 1), value=1.0)  # (n, 1, size + 2, size + 2)
    near_outside = F.max_pool2d(outside, kernel_size=3, stride=1)  # (n, 1, size, size)
    edges = masks * near_outside  # (n, 1, size, size)
    captions = [caption(int(a), int(b), int(c)) for a, b, c in zip(labels, color_ids, size_ids)]
    return ShapesBatch(images=images, labels=labels, color_ids=color_ids, size_ids=size_ids,
                       captions=captions, masks=masks, edges=edges)


def palette_fraction(images: torch.Tensor, *, tolerance: float = 0.3, foreground: float = 0.5) -> float:
    """The share of foreground pixels whose colour lies on the ``shapes`` palette.

    A rendered pixel is background + a (colour - background) for a coverage a in [0, 1], so in
    ``p + 1`` (background at 0) it lies on the segment from 0 to ``COLOR_VALUES[k] + 1`` for one k.
    A pixel is foreground when max(p + 1) > ``foreground``; it is on the palette when its distance
    to the nearest such segment is below ``tolerance`` (both in units of the [0, 2] range). Real
    shapes score 1; an orange (1, 0, -1) or a grey pixel scores 0. Chapters 11 and 13.

    >>> import torch
    >>> round(palette_fraction(shapes(64, generator=torch.Generator().manual_seed(0)).images), 3)
    1.0
    >>> orange = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    >>> palette_fraction(orange)
    0.0
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (N, 3, H, W) in [-1, 1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    p = images.detach().float().clamp(-1, 1).permute(0, 2, 3, 1).reshape(-1, 3) + 1.0
    p = p[p.max(dim=1).values > foreground]
    if len(p) == 0:
        raise ValueError("no foreground pixels: every pixel is background")
    c = COLOR_VALUES.to(p.device) + 1.0                           # (6, 3) segment end points
    a = ((p @ c.T) / (c * c).sum(dim=1)).clamp(0.0, 1.0)          # (n, 6) closest coverage on each
    distance = (p[:, None, :] - a[..., None] * c[None]).norm(dim=-1).min(dim=1).values
    return float((distance < tolerance).float().mean())


def segment(images: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """The foreground mask of images on the black background: 1 where the brightest channel is >= ``threshold``.

    Every palette colour has a channel at +1, so a rendered pixel of coverage a has that channel at
    -1 + 2a, which is >= 0 exactly when a >= 1/2: on real ``shapes`` this gives back their ``masks``
    exactly. On a sample it segments the shape the model drew (chapter 13's control adherence).
    Returns (N, 1, H, W) float32 in {0, 1}.

    >>> import torch
    >>> batch = shapes(64, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.equal(segment(batch.images), batch.masks))
    True
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (N, 3, H, W) in [-1, 1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [-1, 1] (the image range), got {threshold!r}")
    return (images.detach().amax(dim=1, keepdim=True) >= threshold).float()


# Area of a shape of half-extent r, in units of r^2 (see _inside): circle pi, square (1.6 r)^2,
# triangle (base 2r, height 2r) 2, cross two 2r x 2r/3 arms minus their overlap 20/9.
_AREA_FACTOR = torch.tensor([torch.pi, 2.56, 2.0, 20.0 / 9.0])


def _check_images(fn: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{fn}: images must be a tensor (N, 3, H, W) in [-1, 1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")


def read_colour(images: torch.Tensor) -> torch.Tensor:
    """The palette colour an image shows: the index into ``COLOR_NAMES`` (N,) nearest to the mean of its
    foreground pixels (:func:`segment`). An image without foreground gets -1 (no colour).

    With the shape classifier and :func:`read_size` it reads a caption back from an image (chapter 15's
    caption adherence). On rendered shapes it is exact (tests/test_shapes.py).

    >>> import torch
    >>> batch = shapes(256, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.equal(read_colour(batch.images), batch.color_ids))
    True
    """
    _check_images("read_colour", images)
    x = images.detach().float().clamp(-1, 1)
    fg = segment(x)  # (N, 1, H, W)
    count = fg.sum(dim=(1, 2, 3))  # (N,)
    mean = (x * fg).sum(dim=(2, 3)) / count.clamp(min=1)[:, None]  # (N, 3)
    nearest = torch.cdist(mean, COLOR_VALUES.to(mean.device)).argmin(dim=1)
    return torch.where(count > 0, nearest, torch.full_like(nearest, -1))


def read_size(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The size id (N,) an image shows (0 small, 1 large), read from the area of its :func:`segment`.

    Given the shape ``labels`` (N,) (the requested or the classified shape), the half-extent is
    r = sqrt(area / a_shape), with a_shape the shape's area for r = 1 (circle pi, square 2.56, triangle
    2, cross 20/9); r / size above 0.27, halfway between the small (at most 0.24) and the large (at
    least 0.30) ranges, reads as large. An image without foreground reads as small.

    >>> import torch
    >>> batch = shapes(256, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.equal(read_size(batch.images, batch.labels), batch.size_ids))
    True
    """
    _check_images("read_size", images)
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"read_size: labels must be an integer tensor ({images.shape[0]},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(SHAPE_NAMES)):
        raise ValueError(f"read_size: labels must lie in [0, {len(SHAPE_NAMES) - 1}] ({SHAPE_NAMES}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    area = segment(images.float()).sum(dim=(1, 2, 3))  # (N,)
    r = (area / _AREA_FACTOR.to(area.device)[labels.long()]).sqrt()
    threshold = 0.5 * (_RADIUS_RANGE[0][1] + _RADIUS_RANGE[1][0]) * images.shape[-1]
    return (r > threshold).long()

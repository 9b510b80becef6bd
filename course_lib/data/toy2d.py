"""Two-dimensional toy data sets, generated in torch from a ``torch.Generator``.

Five classic 2-D distributions for diffusion experiments that train in seconds:

=================  ==========================================================
``moons``          two interleaved half circles (noise std 0.08 before scaling)
``swiss_roll``     the 2-D swiss roll r(t) = t (cos t, sin t), t in [1.5 pi, 4.5 pi]
``eight_gaussians``  eight Gaussians (std 0.1) on a circle of radius 1.4
``checkerboard``   uniform on the 8 dark cells of a 4 x 4 board on [-sqrt 3, sqrt 3]^2
``spirals``        two interleaved Archimedean spirals
=================  ==========================================================

**Scale.** Every data set is returned after a fixed affine map (constants below, exact
or measured once on 4 million points) to mean approximately 0 and *root-mean-square*
per-coordinate standard deviation approximately 1, i.e. ``x.var(0).mean() ~= 1``. One
scalar divides both coordinates, so circles stay circles. ``eight_gaussians`` and
``checkerboard`` are defined directly on that scale.

Randomness comes only from ``generator`` (no NumPy / scikit-learn randomness), so the
same seed gives the same points:

>>> import torch
>>> x = toy2d("moons", 1000, generator=torch.Generator().manual_seed(0))
>>> x.shape, x.dtype
(torch.Size([1000, 2]), torch.float32)
>>> bool(x.mean(0).abs().max() < 0.1) and bool(abs(x.var(0).mean() - 1) < 0.1)
True

Introduced in chapter 02.
"""

from __future__ import annotations

import math

import torch

__all__ = ["TOY2D_NAMES", "toy2d"]

TOY2D_NAMES: tuple[str, ...] = ("moons", "swiss_roll", "eight_gaussians", "checkerboard", "spirals")

# (mean_x, mean_y, scale): raw points are mapped to (raw - mean) / scale.
#   moons: mean (1/2, 1/4) exact; scale measured (RMS std of the raw points).
#   swiss_roll: mean (2, 2 / (3 pi)) exact for t ~ U[1.5 pi, 4.5 pi]; scale exact + noise.
#   spirals: mean 0 by symmetry; scale measured.
_STANDARDIZE: dict[str, tuple[float, float, float]] = {
    "moons": (0.5, 0.25, 0.71),
    "swiss_roll": (2.0, 2.0 / (3.0 * math.pi), 6.81),
    "spirals": (0.0, 0.0, 4.73),
}


def _moons(n: int, generator: torch.Generator | None) -> torch.Tensor:
    upper = torch.rand(n, generator=generator) < 0.5  # (n,) which moon
    t = math.pi * torch.rand(n, generator=generator)  # (n,) angle along the moon
    x = torch.where(upper, torch.cos(t), 1.0 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], dim=1) + 0.08 * torch.randn(n, 2, generator=generator)  # (n, 2)


def _swiss_roll(n: int, generator: torch.Generator | None) -> torch.Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator))  # (n,)
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)  # (n, 2)
    return pts + 0.5 * torch.randn(n, 2, generator=generator)


def _spirals(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # sqrt makes the density along the arm roughly uniform per unit length
    theta = 3.0 * math.pi * torch.sqrt(torch.rand(n, generator=generator))  # (n,)
    arm = torch.randint(0, 2, (n,), generator=generator)  # (n,) 0 or 1
    phi = theta + math.pi * arm
    pts = theta[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)  # (n, 2)
    return pts + 0.4 * torch.randn(n, 2, generator=generator)


def _eight_gaussians(n: int, generator: torch.Generator | None) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=generator)  # (n,) cluster index
    angle = k.to(torch.float32) * (math.pi / 4.0)
    centres = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
    # per-coordinate variance: 1.4^2 / 2 + 0.1^2 = 0.99
    return centres + 0.1 * torch.randn(n, 2, generator=generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # 4 x 4 board of cells, keep the 8 with (row + col) even; uniform inside a cell.
    cell = torch.randint(0, 8, (n,), generator=generator)  # (n,)
    row = cell // 2  # 0..3
    col = 2 * (cell % 2) + (row % 2)  # 0..3 with (row + col) even
    u = torch.rand(n, 2, generator=generator)  # (n, 2) position inside the cell
    grid = torch.stack([col, row], dim=1).to(torch.float32) + u  # (n, 2) in [0, 4]^2
    # [0, 4] -> [-sqrt 3, sqrt 3]: each coordinate is then U[-sqrt 3, sqrt 3], std exactly 1
    return (grid - 2.0) * (math.sqrt(3.0) / 2.0)


_GENERATORS = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
}


def toy2d(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points x0 of a 2-D toy distribution.

    Args:
        name: one of ``TOY2D_NAMES``: "moons", "swiss_roll", "eight_gaussians",
            "checkerboard", "spirals".
        n: number of points, n >= 1.
        generator: source of every random draw; the same seed gives the same points.

    Returns:
        x0: (n, 2) float32, mean ~= 0 and RMS per-coordinate std ~= 1 (see the module
        docstring for the exact constants).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones) or ``n <= 0``.

    Introduced in chapter 02.
    """
    if name not in _GENERATORS:
        raise ValueError(f"toy2d: unknown data set {name!r}; expected one of {list(TOY2D_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"toy2d: n must be a positive int, got {n!r}")
    x0 = _GENERATORS[name](n, generator)  # (n, 2)
    if name in _STANDARDIZE:
        mx, my, scale = _STANDARDIZE[name]
        x0 = (x0 - torch.tensor([mx, my])) / scale
    return x0.to(torch.float32).contiguous()  # (n, 2)

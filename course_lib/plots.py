r"""The course's figures: image grids, 2-D scatter plots and trajectories, schedules, losses.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show``. Figures
are created with ``pyplot`` (so that Jupyter's inline backend knows how to draw them) and
immediately closed in pyplot's registry: a notebook cell that ends with ``fig`` (or
``display(fig)``) shows the figure exactly once, and nothing accumulates in memory. Pass
``ax=`` to draw into an axes of your own figure instead. Works headless with the Agg backend.

Conventions: images are tensors (N, C, H, W) with values in [-1, 1] (C = 1 grey or C = 3
RGB); 2-D points are (N, 2); time t in [0, 1] with t = 0 data and t = 1 noise. Every axis has
a label and every figure a title.

>>> import torch
>>> fig = image_grid(torch.zeros(6, 1, 8, 8), nrow=3, title="six blank digits")
>>> len(fig.axes), fig.axes[0].get_title()
(1, 'six blank digits')

Introduced in chapter 01 (figures are used in every chapter).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .schedules import Schedule

__all__ = [
    "SCHEDULE_QUANTITIES",
    "image_grid",
    "scatter2d",
    "trajectories2d",
    "schedule_plot",
    "denoising_strip",
    "loss_curve",
]


# ------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------
def _new_figure(nrows: int = 1, ncols: int = 1, figsize=(4.0, 3.0), squeeze: bool = True):
    """plt.subplots, then close the figure in pyplot's registry (it stays drawable)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=squeeze, layout="constrained")
    plt.close(fig)
    return fig, axes


def _check_ax(ax) -> None:
    if ax is not None and not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")


def _as_array(values, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / list; finite values only."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or array of numbers, got {type(values).__name__} ({err})") from None
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values")
    return array


def _images_hwc(images, name: str = "images") -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) in [0, 1] for imshow (display clips to the range)."""
    array = _as_array(images, name)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (N, C, H, W) with N >= 1 and C = 1 (grey) or 3 (RGB), got {array.shape}"
        )
    return np.clip((array.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)  # (N, H, W, C)


def _imshow(ax: Axes, image_hwc: np.ndarray):
    """Show one (H, W, C) image in [0, 1]: grey with a fixed colour range, or RGB."""
    if image_hwc.shape[-1] == 1:
        return ax.imshow(image_hwc[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    return ax.imshow(image_hwc, interpolation="nearest")


def _no_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------
def image_grid(images, nrow: int = 8, title: str | None = None, labels: Sequence | None = None,
               ax: Axes | None = None, *, padding: int = 1) -> Figure:
    r"""Show N images as one grid, ``nrow`` images per row.

    Args:
        images: x, (N, C, H, W) with values in [-1, 1] (C = 1 or 3), a tensor or array.
            Values outside [-1, 1] (an unclipped sample) are displayed clipped; the data
            are not changed.
        nrow: number of images per row (as in ``torchvision.utils.make_grid``).
        title: the axes title (default "N images").
        labels: optional sequence of N labels (class, time, ...) written on the images.
        ax: optional Axes to draw into.
        padding: pixels of white border between images.

    Returns:
        The Figure (one Axes with one image).

    Introduced in chapter 01.
    """
    _check_ax(ax)
    hwc = _images_hwc(images)  # (N, H, W, C)
    N, H, W, C = hwc.shape
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer (images per row), got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    if labels is not None and len(labels) != N:
        raise ValueError(f"labels must have one entry per image ({N}), got {len(labels)}")
    cols = min(nrow, N)
    rows = -(-N // cols)
    canvas = np.ones((rows * (H + padding) + padding, cols * (W + padding) + padding, C))
    for k in range(N):
        r, c = divmod(k, cols)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        canvas[top:top + H, left:left + W] = hwc[k]
    if ax is None:
        scale = 0.55 if max(H, W) <= 16 else 0.9
        fig, ax = _new_figure(figsize=(max(2.0, scale * cols + 0.4), max(1.6, scale * rows + 0.6)))
    else:
        fig = ax.figure
    _imshow(ax, canvas)
    if labels is not None:
        for k, label in enumerate(labels):
            r, c = divmod(k, cols)
            ax.text(padding + c * (W + padding) - 0.5, padding + r * (H + padding) - 0.5, str(label),
                    fontsize=7, color="tab:orange", va="top", ha="left")
    _no_ticks(ax)
    ax.set_title(title if title is not None else f"{N} images")
    ax.set_xlabel(f"{N} images of {H}x{W} pixels, {nrow} per row (values in [-1, 1])", fontsize=8)
    return fig


def denoising_strip(images, times: Sequence[float], title: str | None = None) -> Figure:
    r"""Images at a sequence of times, one column per time labelled "t = ...".

    Args:
        images: (K, C, H, W) one image at K times, or (K, B, C, H, W) B images (one row each)
            at K times; values in [-1, 1].
        times: the K times t_k in [0, 1] (t = 0 data, t = 1 noise), one per column.
        title: the figure title (default "x_t at K times").

    Returns:
        The Figure, with B rows of K axes.

    Introduced in chapter 01.
    """
    array = _as_array(images, "images")
    if array.ndim == 4:
        array = array[:, None]  # (K, 1, C, H, W)
    if array.ndim != 5 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"images must have shape (K, C, H, W) or (K, B, C, H, W), got {tuple(np.shape(images))}")
    K, B = array.shape[:2]
    times = _as_array(times, "times")
    if times.ndim != 1 or times.shape[0] != K:
        raise ValueError(f"times must be a 1-D sequence of K = {K} times (one per image), got shape {times.shape}")
    if ((times < 0) | (times > 1)).any():
        raise ValueError(f"times must lie in [0, 1], got values in [{times.min():.4g}, {times.max():.4g}]")
    hwc = _images_hwc(array.reshape(K * B, *array.shape[2:])).reshape(K, B, *array.shape[3:], array.shape[2])
    fig, axes = _new_figure(B, K, figsize=(max(2.5, 0.9 * K + 0.3), 0.95 * B + 0.6), squeeze=False)
    for k in range(K):
        for b in range(B):
            ax = axes[b, k]
            _imshow(ax, hwc[k, b])
            _no_ticks(ax)
            if b == 0:
                ax.set_title(f"t = {times[k]:.2f}", fontsize=8)
        axes[B - 1, k].set_xlabel(f"step {k}", fontsize=7)
    fig.suptitle(title if title is not None else f"$x_t$ at {K} times (t = 0 data, t = 1 noise)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------
# 2-D data
# ------------------------------------------------------------------------------------
def _points(points, name: str) -> np.ndarray:
    array = _as_array(points, name)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1, got {array.shape}")
    return array


def _set_lims(ax: Axes, lims) -> None:
    if lims is None:
        return
    if isinstance(lims, (int, float)) and not isinstance(lims, bool):
        if not lims > 0:
            raise ValueError(f"lims as a number must be positive (the box [-lims, lims]^2), got {lims}")
        ax.set_xlim(-lims, lims)
        ax.set_ylim(-lims, lims)
        return
    try:
        (x0, x1), (y0, y1) = lims
    except (TypeError, ValueError):
        raise ValueError(f"lims must be a number L (box [-L, L]^2) or ((x_lo, x_hi), (y_lo, y_hi)), got {lims!r}") from None
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"lims must be increasing pairs, got {lims!r}")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def scatter2d(points, title: str = "2-D samples", ax: Axes | None = None, s: float = 4.0,
              alpha: float = 0.5, lims=None) -> Figure:
    r"""Scatter plot of 2-D points, or of several named sets of points with a legend.

    Args:
        points: (N, 2) points, or a dict name -> (N_i, 2) points (one colour each).
        title: the axes title.
        ax: optional Axes to draw into.
        s: marker area in points^2.
        alpha: marker opacity in (0, 1].
        lims: None (automatic), a number L (the box [-L, L]^2) or ((x_lo, x_hi), (y_lo, y_hi)).

    Returns:
        The Figure (one Axes with one scatter per set of points).

    Introduced in chapter 02.
    """
    _check_ax(ax)
    sets = dict(points) if isinstance(points, Mapping) else {None: points}
    if not sets:
        raise ValueError("points must not be an empty dict")
    if not (0 < alpha <= 1):
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    if not s > 0:
        raise ValueError(f"s (marker area) must be positive, got {s}")
    arrays = {name: _points(p, f"points[{name!r}]" if name is not None else "points") for name, p in sets.items()}
    if ax is None:
        fig, ax = _new_figure(figsize=(3.6, 3.4))
    else:
        fig = ax.figure
    for name, array in arrays.items():
        label = None if name is None else f"{name} ({array.shape[0]})"
        ax.scatter(array[:, 0], array[:, 1], s=s, alpha=alpha, label=label, linewidths=0)
    if len(arrays) > 1 or next(iter(arrays)) is not None:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    _set_lims(ax, lims)
    ax.set_aspect("equal", adjustable="datalim" if lims is None else "box")
    ax.set_xlabel("$x_1$ (data units)")
    ax.set_ylabel("$x_2$ (data units)")
    ax.set_title(title)
    return fig


def trajectories2d(traj, n_show: int = 64, title: str = "Sampling trajectories", ax: Axes | None = None,
                   *, start_label: str = "start $x_1$ (noise)", end_label: str = "end $x_0$ (sample)",
                   lims=None) -> Figure:
    r"""Paths of 2-D particles through a sampler, with their start and end points.

    Args:
        traj: (K, B, 2): K >= 2 positions of B particles, in the order they were visited
            (``Trajectory.stacked()`` of :mod:`course_lib.samplers.loop`, with x_T prepended if
            you want the start).
        n_show: draw the first min(n_show, B) particles.
        title: the axes title.
        ax: optional Axes to draw into.
        start_label, end_label: legend entries of traj[0] and traj[-1].
        lims: as in :func:`scatter2d`.

    Returns:
        The Figure (one Axes: a LineCollection of paths, a scatter of starts, a scatter of ends).

    Introduced in chapter 02.
    """
    _check_ax(ax)
    array = _as_array(traj, "traj")
    if array.ndim != 3 or array.shape[2] != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"traj must have shape (K, B, 2) with K >= 2 steps and B >= 1 particles, got {array.shape}")
    if isinstance(n_show, bool) or not isinstance(n_show, int) or n_show < 1:
        raise ValueError(f"n_show must be a positive integer, got {n_show!r}")
    K, B, _ = array.shape
    shown = array[:, : min(n_show, B)].transpose(1, 0, 2)  # (n, K, 2)
    if ax is None:
        fig, ax = _new_figure(figsize=(3.8, 3.6))
    else:
        fig = ax.figure
    ax.add_collection(LineCollection(shown, colors="0.4", linewidths=0.6, alpha=0.6))
    ax.scatter(shown[:, 0, 0], shown[:, 0, 1], s=10, color="tab:blue", label=start_label, zorder=3)
    ax.scatter(shown[:, -1, 0], shown[:, -1, 1], s=10, color="tab:red", label=end_label, zorder=3)
    ax.autoscale_view()
    _set_lims(ax, lims)
    ax.set_aspect("equal", adjustable="datalim" if lims is None else "box")
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("$x_1$ (data units)")
    ax.set_ylabel("$x_2$ (data units)")
    ax.set_title(f"{title}\n({shown.shape[0]} of {B} particles, {K} points each)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------
# Schedules and training curves
# ------------------------------------------------------------------------------------
SCHEDULE_QUANTITIES = {
    # name: (method on a Schedule, title, y-axis label, log-scale y)
    "alpha": ("alpha", "signal scale", r"$\alpha_t$", False),
    "sigma": ("sigma", "noise scale", r"$\sigma_t$", False),
    "alpha_bar": ("alpha_bar", "signal variance", r"$\bar\alpha(t) = \alpha_t^2$", False),
    "snr": ("snr", "signal-to-noise ratio", r"SNR $= \alpha_t^2/\sigma_t^2$ (log scale)", True),
    "log_snr": ("log_snr", "log signal-to-noise ratio", r"$\lambda_t = \log$ SNR (nats)", False),
    "d_log_snr": ("d_log_snr", "rate of the log-SNR", r"$d\lambda_t/dt$ (nats per unit time)", False),
}
"""Quantities :func:`schedule_plot` can draw: name -> (Schedule method, title, y label, log y)."""


def schedule_plot(schedules, quantities: Sequence[str] = ("alpha_bar", "snr", "log_snr"), n: int = 200, *,
                  t_marker: float | None = None, axes: Sequence[Axes] | None = None,
                  title: str | None = None) -> Figure:
    r"""Curves of schedule quantities over t in [0, 1], one Axes per quantity.

    Args:
        schedules: a dict name -> :class:`~course_lib.schedules.Schedule` (one curve each), or
            one Schedule.
        quantities: names from :data:`SCHEDULE_QUANTITIES` (alpha, sigma, alpha_bar, snr,
            log_snr, d_log_snr). The log-SNR is clipped to [-20, 20] as in
            :meth:`Schedule.log_snr`, so SNR lies in [e^-20, e^20].
        n: number of times on the uniform grid of [0, 1].
        t_marker: optional time in [0, 1] marked by a vertical line and a dot on every curve.
        axes: optional sequence of Axes (one per quantity) to draw into.
        title: optional figure title.

    Returns:
        The Figure.

    Introduced in chapter 01.
    """
    if isinstance(schedules, Schedule):
        schedules = {repr(schedules): schedules}
    if not isinstance(schedules, Mapping) or not schedules:
        raise ValueError(f"schedules must be a Schedule or a non-empty dict name -> Schedule, got {type(schedules).__name__}")
    for name, schedule in schedules.items():
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedules[{name!r}] must be a course_lib Schedule, got {type(schedule).__name__}")
    if isinstance(quantities, str):
        quantities = (quantities,)
    quantities = tuple(quantities)
    unknown = [q for q in quantities if q not in SCHEDULE_QUANTITIES]
    if not quantities or unknown:
        raise ValueError(f"quantities must be a non-empty subset of {list(SCHEDULE_QUANTITIES)}, got {list(quantities)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (number of times), got {n!r}")
    if t_marker is not None and not (0.0 <= float(t_marker) <= 1.0):
        raise ValueError(f"t_marker must lie in [0, 1] (t = 0 data, t = 1 noise), got {t_marker}")
    if axes is None:
        fig, axes = _new_figure(1, len(quantities), figsize=(3.0 * len(quantities) + 0.4, 2.8), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(axes)
        if len(axes) != len(quantities) or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"axes must be {len(quantities)} matplotlib Axes (one per quantity), got {len(axes)} objects")
        fig = axes[0].figure
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)  # (n,)
    for ax, quantity in zip(axes, quantities):
        method, panel_title, ylabel, logy = SCHEDULE_QUANTITIES[quantity]
        for k, (name, schedule) in enumerate(schedules.items()):
            color = f"C{k % 10}"
            values = getattr(schedule, method)(t).numpy()
            ax.plot(t.numpy(), values, color=color, label=name, linewidth=1.5)
            if t_marker is not None:
                tm = torch.tensor(float(t_marker), dtype=torch.float64)
                ax.plot([float(t_marker)], [float(getattr(schedule, method)(tm))], "o", color=color, markersize=5)
        if t_marker is not None:
            ax.axvline(float(t_marker), color="0.5", linestyle="--", linewidth=0.8)
        if logy:
            ax.set_yscale("log")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("time $t$ (0 = data, 1 = noise)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


def loss_curve(losses, smoothing: float = 0.98, title: str = "Training loss", ax: Axes | None = None, *,
               logy: bool = False, xlabel: str = "training step", ylabel: str = "loss (per element)") -> Figure:
    r"""A training loss per step, raw (faint) and smoothed by a bias-corrected moving average.

    The smoothed curve is the exponential moving average m_k = smoothing m_{k-1}
    + (1 - smoothing) loss_k, divided by 1 - smoothing^(k+1) (Adam's bias correction,
    Kingma & Ba 2015, arXiv:1412.6980, Algorithm 1), so it starts at the first loss.

    Args:
        losses: (K,) loss values, a tensor, array or list.
        smoothing: the EMA factor in [0, 1); 0 draws only the raw curve.
        title: the axes title.
        ax: optional Axes to draw into.
        logy: log-scale y axis (needs positive losses).
        xlabel, ylabel: axis labels.

    Returns:
        The Figure (one Axes with one or two lines).

    Introduced in chapter 02.
    """
    _check_ax(ax)
    values = _as_array(losses, "losses")
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"losses must be a non-empty 1-D sequence, got shape {values.shape}")
    if not (0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    if logy and (values <= 0).any():
        raise ValueError("logy=True needs positive losses, got values <= 0")
    if ax is None:
        fig, ax = _new_figure(figsize=(4.2, 2.8))
    else:
        fig = ax.figure
    steps = np.arange(values.shape[0])
    if smoothing == 0.0:
        ax.plot(steps, values, color="C0", linewidth=1.2, label="loss")
    else:
        ax.plot(steps, values, color="C0", alpha=0.3, linewidth=0.8, label="loss")
        ema, smoothed = 0.0, np.empty_like(values)
        for k, value in enumerate(values):
            ema = smoothing * ema + (1.0 - smoothing) * value
            smoothed[k] = ema / (1.0 - smoothing ** (k + 1))
        ax.plot(steps, smoothed, color="C0", linewidth=1.6, label=f"moving average ({smoothing})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (last {min(100, values.shape[0])} steps: mean {values[-100:].mean():.4g})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return fig


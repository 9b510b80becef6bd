"""Tests of course_lib.plots: each function returns a Figure with the expected axes and artists,
labels every axis, leaves nothing open in pyplot, and rejects bad shapes with a ValueError."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from course_lib import plots  # noqa: E402
from course_lib.schedules import VE, VPCosine, VPLinear  # noqa: E402


@pytest.fixture(autouse=True)
def no_open_figures():
    """The library closes its figures in pyplot: nothing piles up, nothing shows twice in Jupyter."""
    before = len(plt.get_fignums())
    yield
    assert len(plt.get_fignums()) == before


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _labelled(ax):
    return ax.get_xlabel() != "" and ax.get_ylabel() != "" and ax.get_title() != ""


# ------------------------------------------------------------------------------------
# image_grid and denoising_strip
# ------------------------------------------------------------------------------------


def test_image_grid_layout_and_values():
    images = torch.linspace(-1, 1, 10 * 64).reshape(10, 1, 8, 8)
    fig = plots.image_grid(images, nrow=4, title="ramp")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "ramp" and "10 images of 8x8 pixels" in ax.get_xlabel()
    (im,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    data = np.asarray(im.get_array())
    # 3 rows x 4 columns of 8x8 images with 1-pixel borders
    assert data.shape == (3 * 9 + 1, 4 * 9 + 1)
    # the first image's top-left pixel is -1 -> 0 and the last image's last pixel is +1 -> 1
    assert data[1, 1] == pytest.approx(0.0) and data[2 * 9 + 1 + 7, 1 * 9 + 1 + 7] == pytest.approx(1.0)


def test_image_grid_rgb_labels_and_existing_axes():
    images = torch.rand(5, 3, 16, 16, generator=_gen()) * 2 - 1
    fig, ax = plt.subplots()
    try:
        out = plots.image_grid(images, nrow=5, labels=list("abcde"), ax=ax)
        assert out is fig
        assert [t.get_text() for t in ax.texts] == list("abcde")
        (im,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
        assert np.asarray(im.get_array()).shape == (18, 86, 3)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("images, kwargs, message", [
    (torch.zeros(4, 8, 8), {}, r"shape \(N, C, H, W\)"),
    (torch.zeros(4, 2, 8, 8), {}, "C = 1 \\(grey\\) or 3"),
    (torch.full((2, 1, 4, 4), float("nan")), {}, "images must be finite"),
    (torch.zeros(4, 1, 8, 8), {"nrow": 0}, "nrow must be a positive integer"),
    (torch.zeros(4, 1, 8, 8), {"labels": [1, 2]}, r"one entry per image \(4\), got 2"),
    (torch.zeros(4, 1, 8, 8), {"ax": "axes"}, "ax must be a matplotlib Axes"),
])
def test_image_grid_validates(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.image_grid(images, **kwargs)


def test_denoising_strip_columns_and_rows():
    times = [1.0, 0.5, 0.25, 0.0]
    one = torch.zeros(4, 1, 8, 8)
    fig = plots.denoising_strip(one, times)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["t = 1.00", "t = 0.50", "t = 0.25", "t = 0.00"]
    assert fig.get_suptitle() != ""
    many = torch.zeros(4, 3, 1, 8, 8)  # (K, B, C, H, W)
    fig = plots.denoising_strip(many, torch.tensor(times))
    assert len(fig.axes) == 12


@pytest.mark.parametrize("images, times, message", [
    (torch.zeros(3, 1, 8, 8), [1.0, 0.0], r"K = 3 times"),
    (torch.zeros(3, 8, 8), [1.0, 0.5, 0.0], r"\(K, C, H, W\) or \(K, B, C, H, W\)"),
    (torch.zeros(2, 1, 8, 8), [1.5, 0.0], r"times must lie in \[0, 1\]"),
])
def test_denoising_strip_validates(images, times, message):
    with pytest.raises(ValueError, match=message):
        plots.denoising_strip(images, times)


# ------------------------------------------------------------------------------------
# scatter2d and trajectories2d
# ------------------------------------------------------------------------------------


def test_scatter2d_single_and_named_sets():
    points = torch.randn(300, 2, generator=_gen())
    fig = plots.scatter2d(points, title="gauss", lims=3)
    (ax,) = fig.axes
    collections = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(collections) == 1 and collections[0].get_offsets().shape == (300, 2)
    assert _labelled(ax) and ax.get_xlim() == (-3, 3)
    assert ax.get_legend() is None
    fig = plots.scatter2d({"data": points, "samples": points[:50] + 1}, lims=((-4, 4), (-2, 5)))
    (ax,) = fig.axes
    assert len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["data (300)", "samples (50)"]
    assert ax.get_ylim() == (-2, 5)


@pytest.mark.parametrize("points, kwargs, message", [
    (torch.zeros(10, 3), {}, r"shape \(N, 2\)"),
    ({"a": torch.zeros(10, 2), "b": torch.zeros(4)}, {}, r"points\['b'\] must have shape \(N, 2\)"),
    ({}, {}, "must not be an empty dict"),
    (torch.zeros(10, 2), {"alpha": 0}, r"alpha must lie in \(0, 1\]"),
    (torch.zeros(10, 2), {"lims": ((1, 0), (0, 1))}, "increasing pairs"),
    (torch.zeros(10, 2), {"lims": "big"}, "lims must be a number"),
])
def test_scatter2d_validates(points, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.scatter2d(points, **kwargs)


def test_trajectories2d_paths_starts_and_ends():
    traj = torch.cumsum(torch.randn(12, 40, 2, generator=_gen()), dim=0)  # (K, B, 2)
    fig = plots.trajectories2d(traj, n_show=10)
    (ax,) = fig.axes
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == 10 and lines.get_segments()[0].shape == (12, 2)
    starts, ends = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(starts.get_offsets(), traj[0, :10].numpy())
    np.testing.assert_allclose(ends.get_offsets(), traj[-1, :10].numpy())
    assert _labelled(ax) and "10 of 40 particles" in ax.get_title()


@pytest.mark.parametrize("traj, kwargs, message", [
    (torch.zeros(1, 5, 2), {}, "K >= 2 steps"),
    (torch.zeros(5, 5, 3), {}, r"shape \(K, B, 2\)"),
    (torch.zeros(5, 5, 2), {"n_show": 0}, "n_show must be a positive integer"),
])
def test_trajectories2d_validates(traj, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.trajectories2d(traj, **kwargs)


# ------------------------------------------------------------------------------------
# schedule_plot and loss_curve
# ------------------------------------------------------------------------------------


def test_schedule_plot_curves_follow_the_schedules():
    schedules = {"linear": VPLinear(), "cosine": VPCosine(), "ve": VE()}
    fig = plots.schedule_plot(schedules, n=50, t_marker=0.3, title="three")
    assert len(fig.axes) == 3 and fig.get_suptitle() == "three"
    ab_ax, snr_ax, lam_ax = fig.axes
    assert snr_ax.get_yscale() == "log" and ab_ax.get_yscale() == "linear"
    for ax in fig.axes:
        assert _labelled(ax)
        assert len(ax.lines) == 3 + 3 + 1  # one curve and one marker per schedule, one vertical line
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    cosine_line = ab_ax.lines[2]  # curve, marker, then the next schedule
    np.testing.assert_allclose(cosine_line.get_ydata(), VPCosine().alpha_bar(t).numpy())
    np.testing.assert_allclose(lam_ax.lines[0].get_ydata(), VPLinear().log_snr(t).numpy())
    marker = ab_ax.lines[1]
    assert marker.get_xdata()[0] == pytest.approx(0.3)
    assert marker.get_ydata()[0] == pytest.approx(float(VPLinear().alpha_bar(torch.tensor(0.3, dtype=torch.float64))))
    assert [t.get_text() for t in ab_ax.get_legend().get_texts()] == ["linear", "cosine", "ve"]


def test_schedule_plot_one_schedule_and_given_axes():
    fig = plots.schedule_plot(VPCosine(), quantities="sigma")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    fig2, axes = plt.subplots(1, 2)
    try:
        out = plots.schedule_plot({"c": VPCosine()}, ("alpha", "d_log_snr"), axes=axes)
        assert out is fig2 and all(len(ax.lines) == 1 for ax in axes)
    finally:
        plt.close(fig2)


@pytest.mark.parametrize("schedules, kwargs, message", [
    ({}, {}, "non-empty dict name -> Schedule"),
    ({"x": "cosine"}, {}, r"schedules\['x'\] must be a course_lib Schedule"),
    ({"c": VPCosine()}, {"quantities": ("snr", "beta")}, r"quantities must be a non-empty subset"),
    ({"c": VPCosine()}, {"n": 1}, "n must be an integer >= 2"),
    ({"c": VPCosine()}, {"t_marker": 1.5}, r"t_marker must lie in \[0, 1\]"),
    ({"c": VPCosine()}, {"axes": [None]}, "axes must be 3 matplotlib Axes"),
])
def test_schedule_plot_validates(schedules, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.schedule_plot(schedules, **kwargs)


def test_loss_curve_raw_and_bias_corrected_average():
    losses = [2.0] * 5 + [1.0] * 5
    fig = plots.loss_curve(losses, smoothing=0.5)
    (ax,) = fig.axes
    raw, smooth = ax.lines
    np.testing.assert_allclose(raw.get_ydata(), losses)
    # bias correction: a constant sequence is its own average; then it decays toward 1
    np.testing.assert_allclose(smooth.get_ydata()[:5], 2.0)
    assert 1.0 < smooth.get_ydata()[-1] < 1.1
    assert _labelled(ax)
    fig = plots.loss_curve(torch.tensor(losses), smoothing=0.0, logy=True)
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_yscale() == "log"


@pytest.mark.parametrize("losses, kwargs, message", [
    ([], {}, "non-empty 1-D"),
    ([[1.0, 2.0]], {}, "non-empty 1-D"),
    ([1.0, float("inf")], {}, "losses must be finite"),
    ([1.0, 2.0], {"smoothing": 1.0}, r"smoothing must lie in \[0, 1\)"),
    ([1.0, -2.0], {"logy": True}, "needs positive losses"),
])
def test_loss_curve_validates(losses, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.loss_curve(losses, **kwargs)


def test_figures_render_to_png():
    """Every figure can be drawn by the Agg backend (a closed pyplot figure stays drawable)."""
    import io

    figs = [
        plots.image_grid(torch.zeros(3, 1, 8, 8)),
        plots.scatter2d(torch.zeros(5, 2)),
        plots.trajectories2d(torch.zeros(3, 4, 2)),
        plots.schedule_plot({"c": VPCosine()}, n=10),
        plots.denoising_strip(torch.zeros(2, 1, 8, 8), [1.0, 0.0]),
        plots.loss_curve([1.0, 0.5]),
    ]
    for fig in figs:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=40)
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"

r"""Interactive explorers (ipywidgets) that also work headless.

:class:`ScheduleExplorer` is chapter 01's noise-schedule explorer: pick a variance-preserving
schedule family and its parameters, and a time t; see alpha_bar(t), SNR(t) and the log-SNR
lambda_t against a reference (DDPM's linear schedule), a marker at t, and a digit noised at t,

.. math::  x_t = \alpha_t x_0 + \sigma_t \varepsilon,

with one fixed eps, so that moving t changes the image smoothly (Ho et al. 2020,
arXiv:2006.11239, eq. 4; the families are those of :mod:`course_lib.schedules`).

Everything the widget shows is computed by :meth:`ScheduleExplorer.update`, a plain method
that returns the numbers, the noised image and the figure: notebooks executed headless and
tests call it directly, and the widget's controls call it when they change.

>>> import torch
>>> explorer = ScheduleExplorer(image=torch.zeros(1, 8, 8), seed=0)
>>> state = explorer.update(family="cosine", t=0.5)
>>> round(state["alpha_t"] ** 2 + state["sigma_t"] ** 2, 6)
1.0
>>> state["x_t"].shape
torch.Size([1, 1, 8, 8])

Introduced in chapter 01.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass

import torch

from . import plots
from .schedules import Schedule, VPLinear, get_schedule

__all__ = ["ParameterRange", "FAMILIES", "ScheduleExplorer", "explore_schedules"]


@dataclass(frozen=True)
class ParameterRange:
    """A schedule parameter's default value and the range and step of its slider."""

    default: float
    low: float
    high: float
    step: float
    readout: str = ".3f"


FAMILIES: dict[str, dict[str, ParameterRange]] = {
    # Ho et al. 2020 (continuous limit, Song et al. 2021 eq. 32): beta(t) from beta_min to beta_max.
    "linear": {"beta_min": ParameterRange(0.1, 0.01, 5.0, 0.01, ".2f"),
               "beta_max": ParameterRange(20.0, 0.5, 50.0, 0.5, ".1f")},
    # Nichol & Dhariwal 2021, eq. 17: offset s.
    "cosine": {"s": ParameterRange(0.008, 0.0, 0.2, 0.001, ".3f")},
    # Chen 2023, Algorithm 1: start, end, tau.
    "sigmoid": {"start": ParameterRange(-3.0, -10.0, 5.0, 0.1, ".1f"),
                "end": ParameterRange(3.0, -5.0, 10.0, 0.1, ".1f"),
                "tau": ParameterRange(1.0, 0.1, 3.0, 0.05, ".2f")},
    # Rombach et al. 2022 (Stable Diffusion): sqrt(beta) linear from beta_start to beta_end.
    "scaled_linear": {"beta_start": ParameterRange(0.00085, 0.00001, 0.02, 0.00001, ".5f"),
                      "beta_end": ParameterRange(0.012, 0.0001, 0.05, 0.0001, ".4f")},
}
"""The explorer's schedule families: name -> {parameter: ParameterRange} (names as in
:func:`course_lib.schedules.get_schedule`)."""

_REFERENCE_LABEL = "linear DDPM (reference)"


def _default_image(index: int) -> torch.Tensor:
    """The index-th image of the digits data set, (1, 1, 8, 8) in [-1, 1] (imported lazily)."""
    from .data.digits import digits

    images, _ = digits("all")
    if not 0 <= index < images.shape[0]:
        raise ValueError(f"digit_index must lie in 0..{images.shape[0] - 1}, got {index}")
    return images[index:index + 1]  # (1, 1, 8, 8)


def _as_batch(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor of shape (H, W), (C, H, W) or (B, C, H, W), got {type(image).__name__}")
    if image.dim() == 2:
        image = image[None, None]
    elif image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[1] not in (1, 3) or image.numel() == 0:
        raise ValueError(f"image must have shape (H, W), (C, H, W) or (B, C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise ValueError(f"image must be a finite floating-point tensor, got dtype {image.dtype}")
    if float(image.min()) < -1.0 - 1e-6 or float(image.max()) > 1.0 + 1e-6:
        raise ValueError(f"image values must lie in [-1, 1], got [{float(image.min()):.4g}, {float(image.max()):.4g}]")
    return image.detach().to("cpu", torch.float32)


class ScheduleExplorer:
    r"""The noise-schedule explorer of chapter 01.

    Args:
        image: x0, (H, W), (C, H, W) or (B, C, H, W) in [-1, 1]; default: the first image of
            :func:`course_lib.data.digits.digits` (loaded on first use). The figure shows the
            first image of the batch; ``update`` noises the whole batch.
        seed: seed of the fixed noise eps ~ N(0, I) (same seed, same eps).
        eps: optional explicit noise of x0's shape (then ``seed`` is not used).
        reference: the schedule drawn for comparison (default ``VPLinear()``, the continuous
            limit of DDPM's linear schedule).
        digit_index: which digit to use when ``image`` is None.
        dpi: resolution of the figure drawn in the widget.

    Headless use: ``state = explorer.update(family="cosine", t=0.5, s=0.008)``.
    In Jupyter: ``explorer.widget()`` (or just ``explorer`` as a cell's last line).
    ``explorer.controls`` maps "family", "t" and every parameter name to its control;
    setting a control's ``value`` updates the state and the figure.

    Introduced in chapter 01.
    """

    def __init__(self, image: torch.Tensor | None = None, *, seed: int = 0, eps: torch.Tensor | None = None,
                 reference: Schedule | None = None, digit_index: int = 0, dpi: int = 72):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if reference is not None and not isinstance(reference, Schedule):
            raise ValueError(f"reference must be a course_lib Schedule, got {type(reference).__name__}")
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 300:
            raise ValueError(f"dpi must be an integer in [20, 300], got {dpi!r}")
        self.x0 = _as_batch(_default_image(digit_index) if image is None else image)  # (B, C, H, W)
        if eps is None:
            generator = torch.Generator().manual_seed(seed)
            eps = torch.randn(self.x0.shape, generator=generator)  # (B, C, H, W)
        elif not isinstance(eps, torch.Tensor) or eps.shape != self.x0.shape:
            raise ValueError(
                f"eps must be a tensor of x0's shape {tuple(self.x0.shape)}, got "
                f"{tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__}"
            )
        self.eps = eps.detach().to("cpu", torch.float32)
        self.reference = reference if reference is not None else VPLinear()
        self.dpi = dpi
        self.state: dict | None = None
        self.last_error: str | None = None
        self._widget = None
        self._syncing = False
        self.controls = self._make_controls()
        import ipywidgets as widgets

        self.readout = widgets.HTML(value="")
        self.output = widgets.Output()

    # --- the computation -------------------------------------------------------------
    def update(self, family: str | None = None, t: float | None = None, **params) -> dict:
        r"""Compute (and, once the widget exists, draw) the explorer's state.

        Args:
            family: one of :data:`FAMILIES` (default: the family control's value).
            t: the time in [0, 1] (default: the t control's value).
            **params: the family's parameters; those not given take their control's value.

        Returns:
            dict with ``family``, ``params``, ``schedule`` (the Schedule), ``schedule_repr``,
            ``t``, ``alpha_t``, ``sigma_t``, ``alpha_bar`` (= alpha_t^2), ``snr`` and
            ``log_snr`` (floats; the log-SNR clipped to [-20, 20] as in
            :meth:`Schedule.log_snr`), ``x_t`` = alpha_t x0 + sigma_t eps (B, C, H, W), and
            ``figure`` (the matplotlib Figure).

        Raises:
            ValueError: unknown family or parameter, t outside [0, 1], or parameters the
                schedule rejects (e.g. beta_max <= beta_min); the message is also shown in
                the widget's output area.
        """
        try:
            state = self._compute(family, t, params)
        except ValueError as err:
            self._show_error(err)
            raise
        self.state = state
        self.last_error = None
        self._sync_controls(state)
        if self._widget is not None:
            self._render(state)
        return state

    def _compute(self, family, t, params) -> dict:
        family = self.controls["family"].value if family is None else family
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
        unknown = sorted(set(params) - set(FAMILIES[family]))
        if unknown:
            raise ValueError(f"family {family!r} has parameters {list(FAMILIES[family])}, got unknown {unknown}")
        values = {name: float(self.controls[name].value) for name in FAMILIES[family]}
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"parameter {name} must be a finite number, got {value!r}")
            values[name] = float(value)
        t = float(self.controls["t"].value) if t is None else t
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be a number in [0, 1] (t = 0 data, t = 1 noise), got {t!r}")
        t = float(t)
        schedule = get_schedule(family, **values)  # raises ValueError on bad parameters
        t64 = torch.tensor(t, dtype=torch.float64)
        alpha_t, sigma_t = float(schedule.alpha(t64)), float(schedule.sigma(t64))
        log_snr = float(schedule.log_snr(t64))
        x_t = schedule.add_noise(self.x0, torch.tensor(t), self.eps)  # (B, C, H, W)
        state = {
            "family": family, "params": values, "schedule": schedule, "schedule_repr": repr(schedule),
            "t": t, "alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_bar": alpha_t**2,
            "snr": math.exp(log_snr), "log_snr": log_snr, "x_t": x_t,
        }
        state["figure"] = self._figure(state)
        return state

    def _figure(self, state: dict):
        """2 x 2 panels: alpha_bar, SNR, log-SNR (chosen vs reference, marker at t), and x0 | x_t."""
        fig, axes = plots._new_figure(2, 2, figsize=(7.6, 5.2))
        curves = {state["schedule_repr"]: state["schedule"], _REFERENCE_LABEL: self.reference}
        plots.schedule_plot(curves, ("alpha_bar", "snr", "log_snr"), n=101, t_marker=state["t"],
                            axes=[axes[0, 0], axes[0, 1], axes[1, 0]])
        ax = axes[1, 1]
        first = torch.cat([self.x0[0], torch.ones_like(self.x0[0][:, :, :1]),  # a white gap
                           state["x_t"][0]], dim=2)  # (C, H, 2W + 1)
        plots._imshow(ax, plots._images_hwc(first[None])[0])
        plots._no_ticks(ax)
        ax.set_title(f"$x_0$ (left) and $x_t$ at t = {state['t']:.2f} (right)", fontsize=9)
        ax.set_xlabel(f"$\\alpha_t$ = {state['alpha_t']:.3f}, $\\sigma_t$ = {state['sigma_t']:.3f}, "
                      f"SNR = {state['snr']:.3g}", fontsize=8)
        fig.suptitle(f"{state['schedule_repr']} vs {_REFERENCE_LABEL}", fontsize=10)
        return fig

    # --- the widget ------------------------------------------------------------------
    def _make_controls(self) -> dict:
        import ipywidgets as widgets

        style = {"description_width": "80px"}
        controls = {
            "family": widgets.Dropdown(options=list(FAMILIES), value="linear", description="schedule", style=style),
            "t": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="t",
                                     continuous_update=False, readout_format=".2f", style=style),
        }
        for family, parameters in FAMILIES.items():
            for name, spec in parameters.items():
                controls[name] = widgets.FloatSlider(
                    value=spec.default, min=spec.low, max=spec.high, step=spec.step, description=name,
                    continuous_update=False, readout_format=spec.readout, style=style)
        for control in controls.values():
            control.observe(self._on_change, names="value")
        return controls

    def _show_relevant(self, family: str) -> None:
        for fam, parameters in FAMILIES.items():
            for name in parameters:
                self.controls[name].layout.display = "" if fam == family else "none"

    def _on_change(self, change) -> None:
        if self._syncing:
            return
        family = self.controls["family"].value
        self._show_relevant(family)
        try:
            self.update()
        except ValueError:
            pass  # already shown in the output area by update

    def _sync_controls(self, state: dict) -> None:
        """Move the controls to the state's values (those inside the sliders' ranges)."""
        self._syncing = True
        try:
            values = {"family": state["family"], "t": state["t"], **state["params"]}
            for name, value in values.items():
                control = self.controls[name]
                if name == "family" or control.min <= value <= control.max:
                    control.value = value
            self._show_relevant(state["family"])
        finally:
            self._syncing = False

    def _render(self, state: dict) -> None:
        buffer = io.BytesIO()
        state["figure"].savefig(buffer, format="png", dpi=self.dpi)
        summary = (f"{state['schedule_repr']} at t = {state['t']:.3f}: alpha_t = {state['alpha_t']:.4f}, "
                   f"sigma_t = {state['sigma_t']:.4f}, alpha_bar = {state['alpha_bar']:.4f}, "
                   f"SNR = {state['snr']:.4g}, log-SNR = {state['log_snr']:.3f}")
        self.output.outputs = ({
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": summary},
            "metadata": {},
        },)
        self.readout.value = (
            f"<b>{html.escape(state['schedule_repr'])}</b> at <b>t = {state['t']:.3f}</b>: "
            f"&alpha;<sub>t</sub> = {state['alpha_t']:.4f}, &sigma;<sub>t</sub> = {state['sigma_t']:.4f}, "
            f"&alpha;&#772;(t) = {state['alpha_bar']:.4f}, SNR = {state['snr']:.4g}, "
            f"log-SNR &lambda;<sub>t</sub> = {state['log_snr']:.3f}"
        )

    def _show_error(self, err: Exception) -> None:
        self.last_error = f"{type(err).__name__}: {err}"
        self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": self.last_error + "\n"},)
        self.readout.value = f"<span style='color:#b00'>{html.escape(self.last_error)}</span>"

    def widget(self):
        """The ipywidgets VBox: controls, a readout of the numbers, and the output area.

        Built once (later calls return the same VBox) and drawn with the current controls.
        """
        if self._widget is None:
            import ipywidgets as widgets

            parameters = [self.controls[name] for fam in FAMILIES.values() for name in fam]
            self._widget = widgets.VBox([
                widgets.HBox([self.controls["family"], self.controls["t"]]),
                widgets.HBox(parameters, layout=widgets.Layout(flex_flow="row wrap")),
                self.readout,
                self.output,
            ])
            self._show_relevant(self.controls["family"].value)
            try:
                self.update()
            except ValueError:
                pass
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"ScheduleExplorer(x0 {tuple(self.x0.shape)}, reference={self.reference!r})"


def explore_schedules(image: torch.Tensor | None = None, seed: int = 0):
    """The noise-schedule explorer widget of chapter 01 (a VBox); see :class:`ScheduleExplorer`.

    Introduced in chapter 01.
    """
    return ScheduleExplorer(image=image, seed=seed).widget()

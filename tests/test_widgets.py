"""Tests of course_lib.widgets.ScheduleExplorer, headless: the numbers, the noised image,
the controls wired to update, and errors shown in the output area."""

from __future__ import annotations

import base64
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from course_lib.schedules import VPLinear, get_schedule  # noqa: E402
from course_lib.widgets import FAMILIES, ScheduleExplorer, explore_schedules  # noqa: E402


def _digit_like(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 8, 8, generator=g) * 2 - 1  # (1, 1, 8, 8) in [-1, 1]


@pytest.fixture
def explorer():
    return ScheduleExplorer(image=_digit_like(), seed=0)


CASES = [
    ("linear", {"beta_min": 0.1, "beta_max": 20.0}),
    ("linear", {"beta_min": 0.3, "beta_max": 12.0}),
    ("cosine", {"s": 0.008}),
    ("cosine", {"s": 0.05}),
    ("sigmoid", {"start": -3.0, "end": 3.0, "tau": 1.0}),
    ("sigmoid", {"start": -2.0, "end": 4.0, "tau": 0.5}),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
]


@pytest.mark.parametrize("family, params", CASES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.77, 1.0])
def test_update_numbers_agree_with_schedules(explorer, family, params, t):
    state = explorer.update(family=family, t=t, **params)
    schedule = get_schedule(family, **params)
    t64 = torch.tensor(t, dtype=torch.float64)
    assert state["family"] == family and state["params"] == params and state["t"] == t
    assert state["schedule_repr"] == repr(schedule)
    assert state["alpha_t"] == pytest.approx(float(schedule.alpha(t64)), abs=1e-12)
    assert state["sigma_t"] == pytest.approx(float(schedule.sigma(t64)), abs=1e-12)
    assert state["alpha_bar"] == pytest.approx(float(schedule.alpha_bar(t64)), abs=1e-12)
    assert state["log_snr"] == pytest.approx(float(schedule.log_snr(t64)), abs=1e-9)
    assert state["snr"] == pytest.approx(math.exp(state["log_snr"]), rel=1e-12)
    assert state["alpha_t"] ** 2 + state["sigma_t"] ** 2 == pytest.approx(1.0, abs=1e-9)  # all are VP
    expected_x_t = schedule.add_noise(explorer.x0, torch.tensor(t), explorer.eps)
    torch.testing.assert_close(state["x_t"], expected_x_t)
    assert isinstance(state["figure"], Figure) and len(state["figure"].axes) == 4


def test_update_ends_of_the_path(explorer):
    """t = 0 gives the data, t = 1 (almost) pure noise."""
    torch.testing.assert_close(explorer.update(family="cosine", t=0.0)["x_t"], explorer.x0)
    state = explorer.update(family="cosine", t=1.0)
    assert state["alpha_t"] < 1e-6
    torch.testing.assert_close(state["x_t"], explorer.eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_noised_image_statistics_match_alpha_and_sigma(family):
    """With x0 = 0, x_t = sigma_t eps; with a constant x0 = c, mean alpha_t c and std sigma_t."""
    x0 = torch.full((2048, 1, 8, 8), 0.5)
    explorer = ScheduleExplorer(image=x0, seed=3)
    state = explorer.update(family=family, t=0.4)
    x_t = state["x_t"]  # (2048, 1, 8, 8), 131072 values
    n = x_t.numel()
    assert abs(float(x_t.mean()) - 0.5 * state["alpha_t"]) < 5 * state["sigma_t"] / math.sqrt(n)
    assert float(x_t.std()) == pytest.approx(state["sigma_t"], rel=0.02)
    zero = ScheduleExplorer(image=torch.zeros(1, 8, 8), seed=3).update(family=family, t=0.4)
    torch.testing.assert_close(zero["x_t"], state["sigma_t"] * zero_eps(seed=3), rtol=1e-5, atol=1e-6)


def zero_eps(seed):
    return torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_fixed_eps_makes_t_smooth_and_seed_reproducible():
    a = ScheduleExplorer(image=_digit_like(), seed=5)
    b = ScheduleExplorer(image=_digit_like(), seed=5)
    c = ScheduleExplorer(image=_digit_like(), seed=6)
    torch.testing.assert_close(a.eps, b.eps)
    assert not torch.equal(a.eps, c.eps)
    x1 = a.update(family="linear", t=0.50)["x_t"]
    x2 = a.update(family="linear", t=0.51)["x_t"]
    assert float((x1 - x2).abs().max()) < 0.05  # one fixed eps: a small step in t, a small change
    eps = torch.ones(1, 1, 8, 8)
    d = ScheduleExplorer(image=torch.zeros(1, 1, 8, 8), eps=eps)
    state = d.update(family="cosine", t=0.5)
    torch.testing.assert_close(state["x_t"], torch.full((1, 1, 8, 8), state["sigma_t"]))


def test_update_keeps_unspecified_values_from_the_controls(explorer):
    state = explorer.update(family="sigmoid", t=0.2, tau=0.5)
    assert state["params"] == {"start": -3.0, "end": 3.0, "tau": 0.5}
    state = explorer.update(t=0.6)  # family and parameters stay
    assert state["family"] == "sigmoid" and state["params"]["tau"] == 0.5 and state["t"] == 0.6


def test_controls_trigger_updates():
    explorer = ScheduleExplorer(image=_digit_like(), seed=0)
    box = explorer.widget()
    assert box is explorer.widget()  # built once
    assert explorer.state is not None and explorer.state["family"] == "linear"
    explorer.controls["t"].value = 0.9
    assert explorer.state["t"] == 0.9
    assert explorer.state["alpha_t"] == pytest.approx(float(VPLinear().alpha(torch.tensor(0.9, dtype=torch.float64))))
    explorer.controls["family"].value = "cosine"
    assert explorer.state["family"] == "cosine" and explorer.state["t"] == 0.9
    # only the cosine parameter is visible
    assert explorer.controls["s"].layout.display == ""
    assert explorer.controls["beta_min"].layout.display == "none"
    explorer.controls["s"].value = 0.1
    assert explorer.state["params"] == {"s": 0.1}
    # the output area holds the figure and the numbers
    (output,) = explorer.output.outputs
    assert output["output_type"] == "display_data"
    assert base64.b64decode(output["data"]["image/png"])[:4] == b"\x89PNG"
    assert "VPCosine(s=0.1)" in output["data"]["text/plain"] and "t = 0.900" in output["data"]["text/plain"]
    assert f"{explorer.state['sigma_t']:.4f}" in explorer.readout.value


def test_update_moves_the_controls_without_recursion():
    explorer = ScheduleExplorer(image=_digit_like(), seed=0)
    explorer.widget()
    calls = []
    original = explorer._compute

    def counting(*args):
        calls.append(args)
        return original(*args)

    explorer._compute = counting
    explorer.update(family="scaled_linear", t=0.25, beta_end=0.02)
    assert len(calls) == 1
    assert explorer.controls["family"].value == "scaled_linear"
    assert explorer.controls["t"].value == 0.25 and explorer.controls["beta_end"].value == 0.02
    assert explorer.controls["beta_start"].layout.display == ""


def test_bad_parameters_show_the_error_and_do_not_crash():
    explorer = ScheduleExplorer(image=_digit_like(), seed=0)
    explorer.widget()
    explorer.controls["beta_min"].value = 4.0  # still valid: beta_max = 20
    good = explorer.state
    assert good["params"] == {"beta_min": 4.0, "beta_max": 20.0}
    explorer.controls["beta_max"].value = 1.0  # beta_max <= beta_min: VPLinear rejects it
    (output,) = explorer.output.outputs
    assert output["output_type"] == "stream"
    assert "ValueError" in output["text"] and "beta_min < beta_max" in output["text"]
    assert "beta_min &lt; beta_max" in explorer.readout.value
    assert explorer.state is good  # the last good state is kept
    explorer.controls["beta_max"].value = 30.0  # fixing the parameter recovers
    assert explorer.last_error is None and explorer.state["params"] == {"beta_min": 4.0, "beta_max": 30.0}
    assert explorer.output.outputs[0]["output_type"] == "display_data"


def test_update_raises_value_errors():
    explorer = ScheduleExplorer(image=_digit_like(), seed=0)
    with pytest.raises(ValueError, match="VPLinear needs 0 < beta_min < beta_max"):
        explorer.update(family="linear", beta_min=2.0, beta_max=1.0)
    assert "beta_min < beta_max" in explorer.last_error
    with pytest.raises(ValueError, match="family must be one of"):
        explorer.update(family="ve")
    with pytest.raises(ValueError, match=r"family 'cosine' has parameters \['s'\], got unknown \['tau'\]"):
        explorer.update(family="cosine", tau=1.0)
    with pytest.raises(ValueError, match=r"t must be a number in \[0, 1\]"):
        explorer.update(t=1.5)
    with pytest.raises(ValueError, match="parameter s must be a finite number"):
        explorer.update(family="cosine", s=float("nan"))
    with pytest.raises(ValueError, match="VPSigmoid needs start < end"):
        explorer.update(family="sigmoid", start=2.0, end=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"image": torch.zeros(1, 2, 8, 8)}, "C = 1 or 3"),
    ({"image": torch.full((8, 8), 2.0)}, r"must lie in \[-1, 1\]"),
    ({"image": torch.zeros(8, 8, dtype=torch.long)}, "floating-point"),
    ({"image": [[0.0]]}, "must be a torch.Tensor"),
    ({"image": torch.zeros(8, 8), "eps": torch.zeros(2, 8)}, "eps must be a tensor of x0's shape"),
    ({"image": torch.zeros(8, 8), "seed": 1.5}, "seed must be an integer"),
    ({"image": torch.zeros(8, 8), "reference": "linear"}, "reference must be a course_lib Schedule"),
])
def test_constructor_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleExplorer(**kwargs)


def test_default_image_is_a_digit_and_explore_schedules_returns_a_vbox():
    import ipywidgets

    explorer = ScheduleExplorer()  # loads the digits data set lazily
    assert explorer.x0.shape == (1, 1, 8, 8)
    assert float(explorer.x0.min()) >= -1 and float(explorer.x0.max()) <= 1
    box = explore_schedules(image=_digit_like())
    assert isinstance(box, ipywidgets.VBox)


def test_figures_do_not_pile_up_in_pyplot():
    before = len(plt.get_fignums())
    explorer = ScheduleExplorer(image=_digit_like(), seed=0)
    explorer.widget()
    for t in (0.1, 0.2, 0.3):
        explorer.controls["t"].value = t
    assert len(plt.get_fignums()) == before

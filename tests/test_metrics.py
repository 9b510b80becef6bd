"""Tests of course_lib.metrics: MMD, sliced Wasserstein, floors, Fréchet distance, summaries."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from course_lib.data.digits import digits
from course_lib.data.toy2d import toy2d
from course_lib.metrics import (
    Floor,
    classifier_summary,
    data_floor,
    frechet_distance,
    frechet_distance_gaussian,
    mmd,
    sliced_wasserstein,
    split_floor,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fixed_sw(a: torch.Tensor, b: torch.Tensor) -> float:
    return sliced_wasserstein(a, b, generator=gen(0))


# ---------------------------------------------------------------- MMD


def test_mmd_matches_the_unbiased_formula_term_by_term():
    x = torch.randn(7, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen(1), dtype=torch.float64) + 0.5
    hs = (0.3, 1.0)

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h)) for h in hs)

    k_xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(7), 2)) / (7 * 6)
    k_yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(5), 2)) / (5 * 4)
    k_xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert mmd(x, y, bandwidths=hs) == pytest.approx(k_xx + k_yy - 2 * k_xy, rel=1e-10, abs=1e-12)
    assert mmd(x, y, bandwidths=hs) == pytest.approx(mmd(y, x, bandwidths=hs), rel=1e-10)


def test_mmd_is_unbiased_for_equal_distributions():
    values = torch.tensor([mmd(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g))
                           for g in [gen(0)] for _ in range(30)])
    # E[MMD^2_u] = 0: the mean is within 3 standard errors of 0, and values take both signs
    assert abs(float(values.mean())) < 3 * float(values.std()) / math.sqrt(len(values))
    assert float(values.min()) < 0 < float(values.max())


def test_mmd_separates_a_shift_from_the_data_floor():
    draw = lambda n, g: toy2d("moons", n, generator=g)  # noqa: E731
    floor = data_floor(mmd, draw, 500, generator=gen(0))
    shifted = draw(500, gen(1)) + torch.tensor([0.3, 0.0])
    assert mmd(shifted, draw(500, gen(2))) > 5 * floor.bound()
    assert mmd(draw(500, gen(3)), draw(500, gen(4))) < floor.bound(n_std=4.0)


def test_mmd_sees_a_blurred_checkerboard_that_sliced_wasserstein_misses():
    """The course plan's claim: small-bandwidth MMD detects the blur, SW does not."""
    n = 2000
    draw = lambda n, g: toy2d("checkerboard", n, generator=g)  # noqa: E731
    g = gen(0)
    blurred = draw(n, g) + 0.2 * torch.randn(n, 2, generator=g)
    data = draw(n, g)
    assert mmd(blurred, data) > data_floor(mmd, draw, n, generator=g).bound()
    assert fixed_sw(blurred, data) < data_floor(fixed_sw, draw, n, generator=g).bound()


def test_mmd_rejects_bad_input():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \(N, D\), got \(10,\)"):
        mmd(torch.randn(10), x)
    with pytest.raises(ValueError, match="same dimension D, got 2 and 3"):
        mmd(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="y needs at least 2 samples, got 1"):
        mmd(x, torch.randn(1, 2))
    with pytest.raises(ValueError, match="bandwidths must be a non-empty sequence of positive numbers"):
        mmd(x, x, bandwidths=(0.1, -1.0))
    with pytest.raises(ValueError, match="bandwidths must be a non-empty"):
        mmd(x, x, bandwidths=())
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        mmd(torch.full((4, 2), float("nan")), x)


# ---------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_in_one_dimension_is_the_sorted_difference():
    x = torch.randn(100, 1, generator=gen(0), dtype=torch.float64)
    y = 2.0 * torch.randn(100, 1, generator=gen(1), dtype=torch.float64) + 1.0
    exact = float(((torch.sort(x[:, 0]).values - torch.sort(y[:, 0]).values) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, y, n_projections=4, generator=gen(0)) == pytest.approx(exact, rel=1e-12)


def test_sliced_wasserstein_of_a_translation():
    # for y = x + s, W2 along theta is |theta . s|; E(theta . s)^2 = |s|^2 / D on the sphere
    x = torch.randn(500, 3, generator=gen(0), dtype=torch.float64)
    s = torch.tensor([0.6, -0.3, 0.9], dtype=torch.float64)
    value = sliced_wasserstein(x, x + s, n_projections=4000, generator=gen(1))
    assert value == pytest.approx(float(s.norm()) / math.sqrt(3), rel=0.03)


def test_sliced_wasserstein_with_unequal_sizes_uses_quantiles():
    x = torch.randn(300, 2, generator=gen(0))
    doubled = torch.cat([x, x])  # the same empirical distribution with M = 2N
    assert sliced_wasserstein(x, doubled, generator=gen(1)) < 0.05
    assert sliced_wasserstein(x, doubled + 1.0, generator=gen(1)) > 0.8


def test_sliced_wasserstein_floor_and_reproducibility():
    draw = lambda n, g: toy2d("eight_gaussians", n, generator=g)  # noqa: E731
    floor = data_floor(fixed_sw, draw, 1000, generator=gen(0))
    data = draw(1000, gen(5))
    assert fixed_sw(draw(1000, gen(6)), data) < floor.bound(n_std=4.0)
    assert fixed_sw(1.5 * draw(1000, gen(6)), data) > 3 * floor.bound()  # too wide
    a = sliced_wasserstein(data, 1.3 * data, generator=gen(2))
    assert a == sliced_wasserstein(data, 1.3 * data, generator=gen(2))
    assert a != sliced_wasserstein(data, 1.3 * data, generator=gen(3))


def test_sliced_wasserstein_rejects_bad_input():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="n_projections must be a positive int, got 0"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="same dimension D, got 2 and 1"):
        sliced_wasserstein(x, torch.randn(10, 1))


# ---------------------------------------------------------------- floors


def test_floor_statistics():
    floor = Floor(values=(1.0, 2.0, 3.0))
    assert floor.mean == 2.0 and floor.std == pytest.approx(1.0)
    assert floor.bound() == pytest.approx(5.0) and floor.bound(n_std=0.0) == 2.0
    assert Floor(values=(0.5,)).std == 0.0


def test_data_floor_is_reproducible_and_uses_independent_draws():
    draw = lambda n, g: toy2d("spirals", n, generator=g)  # noqa: E731
    a = data_floor(mmd, draw, 200, generator=gen(0), n_repeats=3)
    b = data_floor(mmd, draw, 200, generator=gen(0), n_repeats=3)
    assert a == b and len(a.values) == 3
    assert len(set(a.values)) == 3  # different pairs each repeat, none identical (MMD of a set with itself > 0)
    with pytest.raises(ValueError, match="n must be an int >= 2, got 1"):
        data_floor(mmd, draw, 1, generator=gen(0))
    with pytest.raises(ValueError, match="n_repeats must be a positive int, got 0"):
        data_floor(mmd, draw, 10, generator=gen(0), n_repeats=0)


def test_split_floor_on_digits():
    images, _ = digits("all")
    flat = images.flatten(1)  # (1797, 64)
    metric = lambda a, b: mmd(a, b, bandwidths=(2.0, 4.0, 8.0))  # noqa: E731
    floor = split_floor(flat, metric, generator=gen(0), n_repeats=3)
    assert floor == split_floor(flat, metric, generator=gen(0), n_repeats=3)
    half = len(flat) // 2
    noise = torch.rand(half, 64, generator=gen(1)) * 2 - 1
    assert metric(noise, flat[:half]) > 10 * floor.bound()
    with pytest.raises(ValueError, match=r"data must be a tensor with at least 4 rows, got \(3, 64\)"):
        split_floor(flat[:3], metric, generator=gen(0))


# ---------------------------------------------------------------- Fréchet distance


def random_covariance(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_closed_form_for_commuting_covariances():
    # S_a = Q diag(a) Q^T, S_b = Q diag(b) Q^T: d^2 = |mu_a - mu_b|^2 + sum (sqrt a_i - sqrt b_i)^2
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen(0), dtype=torch.float64))
    a = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 0.25, 9.0], dtype=torch.float64)
    mu_a = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    mu_b = torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    expected = 1.0 + 4.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    value = frechet_distance_gaussian(mu_a, q @ torch.diag(a) @ q.T, mu_b, q @ torch.diag(b) @ q.T)
    assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_the_general_matrix_square_root():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    cov_a, cov_b = random_covariance(6, 1), random_covariance(6, 2)
    mu_a = torch.randn(6, generator=gen(3), dtype=torch.float64)
    mu_b = torch.randn(6, generator=gen(4), dtype=torch.float64)
    root = scipy_linalg.sqrtm((cov_a @ cov_b).numpy())  # (S_a S_b)^{1/2}, non-symmetric
    expected = float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a + cov_b)) - 2 * float(root.trace().real)
    assert frechet_distance_gaussian(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_gaussian(mu_a, cov_a, mu_a, cov_a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_from_samples_approaches_the_closed_form():
    d, n = 3, 40_000
    cov_a, cov_b = random_covariance(d, 5), random_covariance(d, 6)
    mu_b = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    za = torch.randn(n, d, generator=gen(7), dtype=torch.float64)
    zb = torch.randn(n, d, generator=gen(8), dtype=torch.float64)
    feats_a = za @ torch.linalg.cholesky(cov_a).T
    feats_b = zb @ torch.linalg.cholesky(cov_b).T + mu_b
    exact = frechet_distance_gaussian(torch.zeros(d, dtype=torch.float64), cov_a, mu_b, cov_b)
    assert frechet_distance(feats_a, feats_b) == pytest.approx(exact, rel=0.05)
    assert frechet_distance(feats_a.float(), feats_a.float()) == pytest.approx(0.0, abs=1e-5)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="same dimension D, got 3 and 4"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="x needs at least 2 samples, got 1"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"expected mu_a, mu_b of shape \(F,\)"):
        frechet_distance_gaussian(torch.zeros(3), eye, torch.zeros(2), eye)
    with pytest.raises(ValueError, match="cov_b must be symmetric"):
        frechet_distance_gaussian(torch.zeros(2), eye, torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))


# ---------------------------------------------------------------- classifier summary


def test_classifier_summary_extremes():
    one_hot = torch.eye(4).repeat(5, 1)  # 20 confident predictions, every class 5 times
    s = classifier_summary(one_hot)
    assert s["mean_confidence"] == pytest.approx(1.0)
    torch.testing.assert_close(s["class_histogram"], torch.full((4,), 0.25))
    assert s["histogram_entropy"] == pytest.approx(math.log(4)) and s["max_entropy"] == pytest.approx(math.log(4))
    assert s["classifier_score"] == pytest.approx(4.0)

    collapsed = classifier_summary(torch.tensor([[0.0, 1.0, 0.0]]).repeat(10, 1))  # mode collapse
    assert collapsed["histogram_entropy"] == pytest.approx(0.0)
    assert collapsed["classifier_score"] == pytest.approx(1.0)

    uniform = classifier_summary(torch.full((6, 5), 0.2))  # unsure about everything
    assert uniform["mean_confidence"] == pytest.approx(0.2)
    assert uniform["classifier_score"] == pytest.approx(1.0)


def test_classifier_summary_rejects_logits():
    with pytest.raises(ValueError, match="non-negative .*did you pass logits"):
        classifier_summary(torch.tensor([[-1.0, 2.0]]))
    with pytest.raises(ValueError, match="rows of probs must sum to 1, max deviation 0.5"):
        classifier_summary(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"probs must be \(N, K\) with N >= 1 and K >= 2, got \(3,\)"):
        classifier_summary(torch.ones(3))

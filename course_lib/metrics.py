"""Sample-quality metrics: MMD, sliced Wasserstein, Fréchet distance, classifier scores.

A metric between model samples and data means little on its own; compare it with the
**data-vs-data floor**, the same metric between two independent draws of the data with
the same sample sizes (``data_floor`` for a sampler, ``split_floor`` for a finite set
such as ``digits``). A chapter uses it like this:

>>> import functools, torch
>>> from course_lib.data.toy2d import toy2d
>>> draw = lambda n, generator: toy2d("moons", n, generator=generator)
>>> floor = data_floor(mmd, draw, 500, generator=torch.Generator().manual_seed(0))
>>> shifted = draw(500, torch.Generator().manual_seed(1)) + 0.3  # a "model" that is off
>>> data = draw(500, torch.Generator().manual_seed(2))
>>> mmd(shifted, data) > floor.bound()
True

(a good model gives ``metric(samples, data) <= floor.bound()``).

All computations run in float64, whatever the input dtype and device, and return floats.

Introduced in chapter 02 (MMD, sliced Wasserstein, floors), chapter 03 (classifier
summary) and chapter 17 (Fréchet distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

__all__ = [
    "Floor",
    "classifier_summary",
    "data_floor",
    "frechet_distance",
    "frechet_distance_gaussian",
    "mask_iou",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
    "split_floor",
]

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _check_samples(fn: str, x: torch.Tensor, y: torch.Tensor, min_n: int = 2) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{fn}: {name} must be a 2-D tensor (N, D), got {shape}")
        if t.shape[0] < min_n:
            raise ValueError(f"{fn}: {name} needs at least {min_n} samples, got {t.shape[0]}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{fn}: x and y must have the same dimension D, got {x.shape[1]} and {y.shape[1]}")


# ---------------------------------------------------------------- MMD


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, inv_two_h2: torch.Tensor, *, skip_diagonal: bool,
                chunk: int = 1024) -> torch.Tensor:
    """sum_{i, j} k(a_i, b_j), with k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)), in row chunks.

    ``skip_diagonal`` drops the i == j terms (a is b); the diagonal of k is len(h).
    """
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    b_sq = (b * b).sum(1)  # (M,)
    for start in range(0, a.shape[0], chunk):
        a_c = a[start:start + chunk]  # (C, D)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, clamped at 0 against round-off
        d2 = ((a_c * a_c).sum(1)[:, None] + b_sq[None, :] - 2.0 * a_c @ b.T).clamp_min_(0.0)  # (C, M)
        buffer = torch.empty_like(d2)
        for c in inv_two_h2.tolist():  # in place: several times faster than one (H, C, M) tensor
            torch.mul(d2, -c, out=buffer)
            total = total + buffer.exp_().sum()
    if skip_diagonal:
        total = total - a.shape[0] * len(inv_two_h2)
    return total


def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5)) -> float:
    """Unbiased squared maximum mean discrepancy MMD^2_u between samples x and y.

    MMD^2_u = 1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
              - 2/(NM) sum_{i, j} k(x_i, y_j)

    (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR 13, Lemma 6, Eq. 3) with a sum
    of RBF kernels k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)). Its expectation is 0 when x
    and y come from the same distribution, so single values can be slightly negative.

    The default bandwidths h are small on the unit scale of ``toy2d`` (std ~= 1) so that
    a blurred checkerboard or a missing mode is visible; for other data pass bandwidths
    on the scale of the distances between neighbouring points.

    Args:
        x: (N, D) samples, N >= 2.
        y: (M, D) samples, M >= 2, same D.
        bandwidths: the kernel widths h > 0.

    Returns:
        MMD^2_u as a float (cost O((N + M)^2 D), computed in float64 in row chunks).

    Introduced in chapter 02.
    """
    _check_samples("mmd", x, y)
    h = torch.as_tensor(list(bandwidths), dtype=torch.float64)
    if h.ndim != 1 or len(h) == 0 or not bool((h > 0).all()):
        raise ValueError(f"mmd: bandwidths must be a non-empty sequence of positive numbers, got {bandwidths!r}")
    x64 = x.detach().to(torch.float64)
    y64 = y.detach().to(x64.device, torch.float64)
    inv_two_h2 = (1.0 / (2.0 * h * h)).to(x64.device)
    n, m = x64.shape[0], y64.shape[0]
    k_xx = _kernel_sum(x64, x64, inv_two_h2, skip_diagonal=True) / (n * (n - 1))
    k_yy = _kernel_sum(y64, y64, inv_two_h2, skip_diagonal=True) / (m * (m - 1))
    k_xy = _kernel_sum(x64, y64, inv_two_h2, skip_diagonal=False) / (n * m)
    return float(k_xx + k_yy - 2.0 * k_xy)


# ---------------------------------------------------------------- sliced Wasserstein


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 128,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between the empirical distributions of x and y.

    SW_2(x, y) = ( E_theta W_2^2(theta^T x, theta^T y) )^{1/2},  theta uniform on the
    unit sphere (Rabin et al. 2011; Bonneel et al. 2015, "Sliced and Radon Wasserstein
    Barycenters of Measures"). In 1-D, W_2^2 is the mean squared difference of the
    sorted samples when N == M; otherwise both quantile functions are evaluated at the
    levels (k + 1/2) / max(N, M) with linear interpolation. The expectation is a Monte
    Carlo average over ``n_projections`` directions.

    Note: SW is blind to fine structure that every 1-D projection averages out (a
    blurred checkerboard looks fine); use ``mmd`` with small bandwidths for that.

    Args:
        x: (N, D) samples, N >= 2.
        y: (M, D) samples, M >= 2, same D.
        n_projections: number of random directions theta, >= 1.
        generator: draws the directions; pass a seeded one for reproducible values
            (and the same seed for values you want to compare).

    Returns:
        SW_2 as a float (same units as x).

    Introduced in chapter 02.
    """
    _check_samples("sliced_wasserstein", x, y)
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"sliced_wasserstein: n_projections must be a positive int, got {n_projections!r}")
    d = x.shape[1]
    theta = torch.randn(d, n_projections, generator=generator, dtype=torch.float64)  # (D, P)
    theta = theta / theta.norm(dim=0, keepdim=True)
    x64 = x.detach().to("cpu", torch.float64)
    y64 = y.detach().to("cpu", torch.float64)
    px = torch.sort(x64 @ theta, dim=0).values  # (N, P)
    py = torch.sort(y64 @ theta, dim=0).values  # (M, P)
    if px.shape[0] != py.shape[0]:
        k = max(px.shape[0], py.shape[0])
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k  # (K,)
        px, py = _quantiles(px, levels), _quantiles(py, levels)  # (K, P)
    w2_squared = ((px - py) ** 2).mean(dim=0)  # (P,)
    return float(w2_squared.mean().sqrt())


def _quantiles(sorted_values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantile function of sorted samples (N, P) at levels (K,), sample k at (k + 1/2)/N."""
    n = sorted_values.shape[0]
    position = (levels * n - 0.5).clamp(0.0, n - 1.0)  # (K,) fractional index
    lo = position.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    w = (position - lo.to(position.dtype))[:, None]  # (K, 1)
    return (1.0 - w) * sorted_values[lo] + w * sorted_values[hi]  # (K, P)


# ---------------------------------------------------------------- data-vs-data floor


@dataclass(frozen=True)
class Floor:
    """The value of a metric between independent draws of the *data*.

    Attributes:
        values: the metric for each repeat.

    ``bound(n_std)`` = mean + n_std * std is the threshold a model's samples should stay
    under: "the model is at the floor" when metric(samples, data) <= bound().

    Introduced in chapter 02.
    """

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(sum(self.values) / len(self.values))

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return float(math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1)))

    def bound(self, n_std: float = 3.0) -> float:
        """mean + n_std * std of the floor values."""
        return self.mean + n_std * self.std


def data_floor(metric: Metric, sample_fn: Callable[[int, torch.Generator], torch.Tensor], n: int, *,
               generator: torch.Generator, n_repeats: int = 10) -> Floor:
    """The data-vs-data floor of ``metric`` for a distribution we can sample.

    For each repeat, draws two independent sets of ``n`` points with
    ``sample_fn(n, generator)`` and evaluates ``metric(a, b)``. Use the same ``n`` as in
    the comparison with the model (both MMD's noise and SW's finite-sample bias depend on
    it), and for ``sliced_wasserstein`` fix its projections, e.g.
    ``metric = lambda a, b: sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))``.

    Args:
        metric: callable (x (n, D), y (n, D)) -> float, e.g. ``mmd``.
        sample_fn: callable (n, generator) -> (n, D) tensor of data points.
        n: sample size of each draw, >= 2.
        generator: drives ``sample_fn``.
        n_repeats: number of pairs, >= 1 (>= 2 for a non-zero std; the default 10 gives a
            usable std, 5 can underestimate it by half).

    Returns:
        A ``Floor`` with the ``n_repeats`` values.

    Introduced in chapter 02.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"data_floor: n must be an int >= 2, got {n!r}")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"data_floor: n_repeats must be a positive int, got {n_repeats!r}")
    values = []
    for _ in range(n_repeats):
        a = sample_fn(n, generator)  # (n, D)
        b = sample_fn(n, generator)  # (n, D)
        values.append(float(metric(a, b)))
    return Floor(values=tuple(values))


def split_floor(data: torch.Tensor, metric: Metric, *, generator: torch.Generator, n_repeats: int = 10) -> Floor:
    """The data-vs-data floor for a finite data set: ``metric`` between random halves.

    Each repeat permutes the rows of ``data`` and compares the first half with the
    second. Compare a model with the data at the same size (half of ``data``), e.g.
    ``metric(samples[:len(data) // 2], data[:len(data) // 2])``. Rows of ``data`` may be
    images: they are passed to ``metric`` as they are, so flatten them for ``mmd`` or
    map them to features for ``frechet_distance``.

    Args:
        data: (N, ...) data set, N >= 4.
        metric: callable (a (N // 2, ...), b (N // 2, ...)) -> float.
        generator: draws the permutations.
        n_repeats: number of random splits, >= 1.

    Returns:
        A ``Floor`` with the ``n_repeats`` values.

    Introduced in chapter 03.
    """
    if not isinstance(data, torch.Tensor) or data.ndim < 1 or data.shape[0] < 4:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"split_floor: data must be a tensor with at least 4 rows, got {shape}")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"split_floor: n_repeats must be a positive int, got {n_repeats!r}")
    half = data.shape[0] // 2
    values = []
    for _ in range(n_repeats):
        perm = torch.randperm(data.shape[0], generator=generator).to(data.device)
        values.append(float(metric(data[perm[:half]], data[perm[half:2 * half]])))
    return Floor(values=tuple(values))


# ---------------------------------------------------------------- Fréchet distance


def _psd_eigenvalues(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with those at round-off level set to 0 (below F * eps * the largest, as
    ``torch.linalg.matrix_rank`` decides rank): their square roots would otherwise add ~sqrt(eps) each."""
    tolerance = values.shape[-1] * torch.finfo(values.dtype).eps * values.abs().max().clamp_min(0.0)
    return torch.where(values > tolerance, values, torch.zeros_like(values))


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh)."""
    eigenvalues, vectors = torch.linalg.eigh(a)
    return (vectors * _psd_eigenvalues(eigenvalues).sqrt()) @ vectors.T


def frechet_distance_gaussian(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                              cov_b: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu_a, S_a) and N(mu_b, S_b).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    (Dowson & Landau 1982; the FID of Heusel et al. 2017, arXiv:1706.08500, Eq. 6).
    Tr (S_a S_b)^{1/2} = Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}: the matrix inside is symmetric
    PSD, so it is computed from eigenvalues in float64, with no complex round-off as in a general
    ``sqrtm``. Eigenvalues at round-off level (below F * eps * the largest) count as 0: features that
    never vary (dead units) give such eigenvalues, and the square root of each, ~1e-7, would add up
    (chapter 17 measures it against 25-digit arithmetic).

    Args:
        mu_a, mu_b: (F,) means.
        cov_a, cov_b: (F, F) symmetric PSD covariances.

    Returns:
        d^2 as a float (>= 0 up to round-off).

    Introduced in chapter 17.
    """
    mu_a, mu_b = mu_a.detach().to("cpu", torch.float64), mu_b.detach().to("cpu", torch.float64)
    cov_a, cov_b = cov_a.detach().to("cpu", torch.float64), cov_b.detach().to("cpu", torch.float64)
    f = mu_a.shape[0] if mu_a.ndim == 1 else -1
    if mu_a.ndim != 1 or mu_b.shape != (f,) or cov_a.shape != (f, f) or cov_b.shape != (f, f):
        raise ValueError(
            "frechet_distance_gaussian: expected mu_a, mu_b of shape (F,) and cov_a, cov_b of shape (F, F), got "
            f"{tuple(mu_a.shape)}, {tuple(mu_b.shape)}, {tuple(cov_a.shape)}, {tuple(cov_b.shape)}"
        )
    for name, cov in (("cov_a", cov_a), ("cov_b", cov_b)):
        if not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-10):
            raise ValueError(f"frechet_distance_gaussian: {name} must be symmetric")
    root_a = _sqrtm_psd(cov_a)  # S_a^{1/2}
    middle = root_a @ cov_b @ root_a  # S_a^{1/2} S_b S_a^{1/2}, symmetric PSD
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = _psd_eigenvalues(torch.linalg.eigvalsh(middle)).sqrt().sum()
    mean_term = ((mu_a - mu_b) ** 2).sum()
    return float(mean_term + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * trace_sqrt)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (the FID formula).

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})   (Heusel et al. 2017,
    arXiv:1706.08500, Eq. 6), with mu, S the sample mean and unbiased sample covariance
    of each set. With the course's digit classifier as feature network this is the
    course's "FID" (``course_lib.classifier.digit_frechet_distance``). The estimate is
    biased upwards at small N: compare values at equal sample sizes, next to the
    real-vs-real floor (``split_floor``).

    Args:
        feats_a: (N, F) features, N >= 2.
        feats_b: (M, F) features, M >= 2.

    Returns:
        FD as a float.

    Introduced in chapter 17.
    """
    _check_samples("frechet_distance", feats_a, feats_b)
    a = feats_a.detach().to("cpu", torch.float64)
    b = feats_b.detach().to("cpu", torch.float64)
    return frechet_distance_gaussian(a.mean(0), torch.cov(a.T).reshape(a.shape[1], a.shape[1]),
                                     b.mean(0), torch.cov(b.T).reshape(b.shape[1], b.shape[1]))


# ---------------------------------------------------------------- classifier summary


def classifier_summary(probs: torch.Tensor) -> dict:
    """Summarise a classifier's predictions p(y | x_i) on a set of samples.

    Args:
        probs: (N, K) class probabilities, rows summing to 1 (within 1e-3).

    Returns:
        A dict with
        - ``mean_confidence``: mean_i max_y p(y | x_i) (high = samples look like some class),
        - ``class_histogram``: (K,) tensor, fraction of samples predicted as each class,
        - ``histogram_entropy``: entropy (nats) of ``class_histogram``; log K means every
          class equally often (no mode collapse), 0 means one class only,
        - ``max_entropy``: log K, for reference,
        - ``classifier_score``: exp(E_i KL(p(y | x_i) || p(y))) with p(y) = mean_i p(y | x_i),
          the Inception-Score formula (Salimans et al. 2016, arXiv:1606.03498, Sec. 4),
          between 1 and K.

    Introduced in chapter 03.
    """
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"classifier_summary: probs must be (N, K) with N >= 1 and K >= 2, got {shape}")
    p = probs.detach().to("cpu", torch.float64)
    if not torch.isfinite(p).all() or bool((p < 0).any()):
        raise ValueError("classifier_summary: probs must be finite and non-negative (did you pass logits?)")
    row_sums = p.sum(1)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
        worst = float((row_sums - 1).abs().max())
        raise ValueError(f"classifier_summary: rows of probs must sum to 1, max deviation {worst:.3g} "
                         "(did you forget the softmax?)")
    n, k = p.shape
    histogram = torch.bincount(p.argmax(1), minlength=k).to(torch.float64) / n  # (K,)

    def entropy(q: torch.Tensor) -> torch.Tensor:  # sum over the last axis, 0 log 0 = 0
        return -(q * torch.log(q.clamp_min(1e-300))).sum(-1)

    marginal = p.mean(0)  # (K,) p(y)
    # E_i KL(p(y|x_i) || p(y)) = H(p(y)) - E_i H(p(y|x_i))
    mean_kl = float(entropy(marginal) - entropy(p).mean())
    return {
        "mean_confidence": float(p.max(1).values.mean()),
        "class_histogram": histogram.to(torch.float32),
        "histogram_entropy": float(entropy(histogram)),
        "max_entropy": math.log(k),
        "classifier_score": math.exp(max(mean_kl, 0.0)),
    }


# ---------------------------------------------------------------- precision and recall


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded), (N,)."""
    d = torch.cdist(feats, feats)  # (N, N)
    return d.kthvalue(k + 1, dim=1).values  # the 0-th neighbour is the point itself


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, *, k: int = 3) -> dict:
    r"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019, arXiv:1904.06991, eq. 1-2).

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour in the same set. **Precision** = the fraction of generated points
    inside the real manifold (fidelity: are the samples realistic?); **recall** = the fraction of real
    points inside the generated manifold (diversity: is the data covered?). Both in [0, 1]; compare
    with the real-vs-real value at the same sample sizes.

    Args:
        real_feats: (N, F) features of real data, N > k.
        fake_feats: (M, F) features of generated samples, M > k.
        k: the neighbour that sets the radius (the paper uses 3).

    Returns:
        {"precision": float, "recall": float}

    >>> a = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    >>> precision_recall(a, a + 100.0)  # disjoint sets
    {'precision': 0.0, 'recall': 0.0}

    Introduced in chapter 12 (and used again in chapter 17).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"precision_recall: k must be a positive int, got {k!r}")
    _check_samples("precision_recall", real_feats, fake_feats, min_n=k + 1)
    real = real_feats.detach().to("cpu", torch.float64)
    fake = fake_feats.detach().to("cpu", torch.float64)
    return _precision_recall(real, fake, _knn_radii(real, k), k)


def _precision_recall(real: torch.Tensor, fake: torch.Tensor, r_real: torch.Tensor, k: int,
                      which: tuple = ("precision", "recall")) -> dict:
    """The body of ``precision_recall`` on float64 features, given the real set's k-NN radii (N,) (which
    ``course_lib.evaluate`` computes once for a fixed reference); ``which`` skips what is not needed."""
    d = torch.cdist(fake, real)  # (M, N)
    out = {}
    if "precision" in which:
        out["precision"] = float((d <= r_real[None, :]).any(dim=1).to(torch.float64).mean())  # fake j in a real ball
    if "recall" in which:
        r_fake = _knn_radii(fake, k)  # (M,)
        out["recall"] = float((d <= r_fake[:, None]).any(dim=0).to(torch.float64).mean())  # real i in a fake ball
    return out


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of binary masks, one value per example: |a and b| / |a or b| (pixel counts).

    ``a`` and ``b`` have the same shape (N, ...), with values in {0, 1} (or bool); two empty masks
    count as identical (IoU 1). Returns a float tensor (N,). Chapter 13 scores control adherence as
    the IoU between a control mask and the shape segmented from the sample.

    >>> import torch
    >>> a = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    >>> b = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]])
    >>> mask_iou(a, b).tolist()
    [0.5, 0.0]
    """
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, torch.Tensor) or m.ndim < 2:
            raise ValueError(f"mask_iou: {name} must be a tensor (N, ...) of masks, got "
                             f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask_iou: {name} must hold only 0 and 1 (binary masks); threshold it first")
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().bool().flatten(1), b.detach().bool().to(a.device).flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))

r"""Evaluating generative models: the course's one convention, the metrics, intervals and a command line.

Chapter 17. The metrics themselves are small formulas; what makes a number trustworthy is what it is
compared with. The course's **convention**, used by :func:`evaluate` and the command line:

* **Features**: the course's own classifiers (``digit_classifier`` for 8x8 digits, 64 features;
  ``shapes_classifier`` for 16x16 shapes), never Inception-v3: its weights are a download, and a
  network trained on ImageNet photographs says little about 8x8 digits. Numbers in these feature
  spaces are therefore **not comparable with published FIDs**, only with each other.
* **Images** in [-1, 1], clamped there before scoring (as FID's uint8 quantisation clamps); a set
  whose values are all >= 0, or reach beyond [-1.5, 1.5], is refused as a likely wrong range.
* **Reference**: data the models never trained on: the 359 test digits; 2,000 fixed test shapes.
* **Sample size**: :data:`CONVENTION` ``n_samples`` = 1,000 generated images (far more than the
  64 features: a covariance of N points has rank at most N - 1, so N must exceed the feature dimension).
* **Floor**: every metric also computed for *real* images in the generated set's place, the same
  number of them (training digits drawn without replacement; freshly rendered shapes), over
  ``floor_draws`` draws: a model is judged by its ratio to that floor.
* **Arithmetic** in float64; intervals from random halves of the generated set (:func:`half_sample_interval`).

The metrics: the Fréchet distance (:func:`course_lib.metrics.frechet_distance`; Heusel et al. 2017),
the kernel distance (:func:`kernel_distance`, KID; Bińkowski et al. 2018), a classifier score
(:func:`inception_score`; Salimans et al. 2016), improved precision and recall
(:func:`course_lib.metrics.precision_recall`; Kynkäänniemi et al. 2019), the class balance
(:func:`class_balance`), the FD extrapolated to infinitely many samples (:func:`frechet_distance_bias`;
Chong & Forsyth 2020) and, for people's judgements, :func:`wilson_interval` and :class:`PairwiseStudy`.

Command line: ``python -m course_lib.evaluate SAMPLES.pt --reference digits`` scores a saved tensor of
images (N, C, H, W) against the reference, with intervals, and prints a table (``--json`` writes it).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
>>> abs(kernel_distance(a, b, subset_size=400, n_subsets=1, generator=g).mean) < 0.05
True
>>> wilson_interval(50, 100)  # a fair coin's 95 % interval after 100 tosses
(0.4038, 0.5962)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from course_lib.metrics import classifier_summary, frechet_distance, precision_recall

__all__ = ["CONVENTION", "REFERENCES", "BiasFit", "Evaluation", "Interval", "KernelDistance", "PairwiseStudy",
           "check_images", "class_balance", "evaluate", "feature_network",
           "frechet_distance_bias", "half_sample_interval", "image_png", "inception_score", "kernel_distance", "main", "reference_set", "wilson_interval"]

# The course's evaluation convention (chapter 17), in one place.
CONVENTION = {
    "n_samples": 1000,       # generated images scored per model
    "floor_draws": 10,       # real-vs-real floors: draws of real images in the generated set's place
    "clamp": (-1.0, 1.0),    # images clamped to the data range before scoring
    "k": 3,                  # precision/recall neighbourhood (Kynkäänniemi et al. 2019)
    "kid_subsets": 100,      # KID: random subsets (Bińkowski et al. 2018)
    "kid_subset_size": 1000,  # ... of at most this size (and at most the smaller set)
    "n_draws": 50,           # random halves for the intervals (their sd: ~10 % relative error)
    "level": 0.95,           # interval coverage
    "dtype": "float64",
}
REFERENCES = ("digits", "shapes")
_Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def _positive_int(fn: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _features_2d(fn: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: {name} must be a 2-D tensor of features (N, F), got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    return x.detach().to("cpu", torch.float64)


# ---------------------------------------------------------------- kernel distance (KID)


@dataclass(frozen=True)
class KernelDistance:
    """KID: the mean and standard deviation of the unbiased MMD^2 over random subsets, and the values."""

    mean: float
    std: float
    values: tuple[float, ...]


def _poly_kernel(a: torch.Tensor, b: torch.Tensor, degree: int, gamma: float, coef: float) -> torch.Tensor:
    return (gamma * a @ b.T + coef) ** degree


def _unbiased_mmd2(a: torch.Tensor, b: torch.Tensor, degree: int, gamma: float, coef: float) -> float:
    m, n = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = (_poly_kernel(a, a, degree, gamma, coef), _poly_kernel(b, b, degree, gamma, coef),
                        _poly_kernel(a, b, degree, gamma, coef))
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))  # pairs i != j only: unbiased
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def kernel_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, *, subset_size: int | None = None,
                    n_subsets: int = CONVENTION["kid_subsets"], degree: int = 3, gamma: float | None = None,
                    coef: float = 1.0, generator: torch.Generator | None = None) -> KernelDistance:
    r"""The kernel distance (KID) of Bińkowski et al. 2018 (arXiv:1801.01401, Sec. 3): the unbiased MMD^2

    .. math:: \frac{1}{m(m-1)}\sum_{i\ne j} k(a_i,a_j) + \frac{1}{n(n-1)}\sum_{i\ne j} k(b_i,b_j)
              - \frac{2}{mn}\sum_{i,j} k(a_i,b_j),\qquad k(x,y) = (\gamma\,x^\top y + c)^d

    with the cubic polynomial kernel (d = 3, gamma = 1/F, c = 1), averaged over ``n_subsets`` random
    subsets of ``subset_size`` points of each set (drawn with ``generator``; the whole sets when the
    subset size equals both sizes). Unlike the FD its expectation does not depend on N: for two
    samples of one distribution it is 0 on average (and negative half the time).

    Args:
        feats_a: (N, F) features; feats_b: (M, F) features.
        subset_size: points per subset, at most min(N, M); default min(N, M, 1000).
        n_subsets: subsets to average (100 in the paper's code).
        degree, gamma, coef: the kernel; gamma None means 1 / F.
        generator: draws the subsets.

    Returns:
        :class:`KernelDistance` (mean, std over subsets (ddof 0, as torchmetrics), values).

    Introduced in chapter 17.
    """
    a, b = _features_2d("kernel_distance", "feats_a", feats_a), _features_2d("kernel_distance", "feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel_distance: feats_a and feats_b must have the same F, got {a.shape[1]} and {b.shape[1]}")
    smallest = min(a.shape[0], b.shape[0])
    size = min(smallest, CONVENTION["kid_subset_size"]) if subset_size is None else subset_size
    _positive_int("kernel_distance", "subset_size", size, 2)
    if size > smallest:
        raise ValueError(f"kernel_distance: subset_size must be at most the smaller set ({smallest}), got {size}")
    _positive_int("kernel_distance", "n_subsets", n_subsets)
    _positive_int("kernel_distance", "degree", degree)
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    values = []
    for _ in range(n_subsets):
        ia = torch.randperm(a.shape[0], generator=generator)[:size] if size < a.shape[0] else torch.arange(size)
        ib = torch.randperm(b.shape[0], generator=generator)[:size] if size < b.shape[0] else torch.arange(size)
        values.append(_unbiased_mmd2(a[ia], b[ib], degree, gamma, float(coef)))
    v = torch.tensor(values, dtype=torch.float64)
    return KernelDistance(float(v.mean()), float(v.std(unbiased=False)), tuple(values))


# ---------------------------------------------------------------- classifier score (IS)


def inception_score(probs: torch.Tensor, *, n_splits: int = 10) -> tuple[float, float]:
    r"""The Inception Score formula with a course classifier: exp(E_x KL(p(y|x) || p(y))), per split.

    Salimans et al. 2016 (arXiv:1606.03498, Sec. 4) split the samples into 10 parts, compute
    exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j))) within each and report the mean and standard deviation
    over the parts. The parts are consecutive (``torch.chunk``): shuffle first if the order means
    something. Between 1 (every image the same class distribution) and K (confident and balanced).

    Args:
        probs: (N, K) class probabilities.
        n_splits: parts, at most N.

    Returns:
        (mean, std over the parts (ddof 1; 0 for one part)).

    Introduced in chapter 17 (chapter 03's ``classifier_score`` is the one-split case).
    """
    classifier_summary(probs)  # validates (N, K), rows summing to 1
    _positive_int("inception_score", "n_splits", n_splits)
    if n_splits > probs.shape[0]:
        raise ValueError(f"inception_score: n_splits must be at most N = {probs.shape[0]}, got {n_splits}")
    p = probs.detach().to("cpu", torch.float64)
    scores = []
    for part in p.chunk(n_splits):
        marginal = part.mean(0, keepdim=True)  # p(y) within the part
        kl = (part * (torch.log(part.clamp_min(1e-300)) - torch.log(marginal.clamp_min(1e-300)))).sum(1)
        scores.append(float(kl.mean().exp()))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), (float(s.std()) if len(scores) > 1 else 0.0)


# ---------------------------------------------------------------- class balance


def class_balance(predicted: torch.Tensor, reference: torch.Tensor, n_classes: int) -> dict:
    """The predicted-class histogram of a sample set against the reference's labels.

    Returns ``histogram`` and ``reference_histogram`` ((K,) fractions), ``total_variation``
    (half the L1 distance, 0 = the same balance, 1 = disjoint) and ``missing`` (classes of the
    reference never predicted). Mode dropping shows here even when every image looks fine.

    Introduced in chapter 17.
    """
    _positive_int("class_balance", "n_classes", n_classes, 2)
    for name, t in (("predicted", predicted), ("reference", reference)):
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() == 0 or t.dtype.is_floating_point:
            raise ValueError(f"class_balance: {name} must be a non-empty 1-D integer tensor of labels")
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise ValueError(f"class_balance: {name} labels must lie in [0, {n_classes}), "
                             f"got {int(t.min())}..{int(t.max())}")
    h = torch.bincount(predicted.cpu(), minlength=n_classes).double() / predicted.numel()
    r = torch.bincount(reference.cpu(), minlength=n_classes).double() / reference.numel()
    return {"histogram": h, "reference_histogram": r, "total_variation": float(0.5 * (h - r).abs().sum()),
            "missing": [int(c) for c in torch.nonzero((h == 0) & (r > 0)).flatten()]}


# ---------------------------------------------------------------- FD bias and its extrapolation


@dataclass(frozen=True)
class BiasFit:
    """FD against 1/N fitted by a line: FD_N = fd_infinity + slope / N (Chong & Forsyth 2020)."""

    fd_infinity: float
    slope: float
    sizes: tuple[int, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def predict(self, n: float) -> float:
        return self.fd_infinity + self.slope / n


def frechet_distance_bias(feats: torch.Tensor, ref_feats: torch.Tensor, sizes: Sequence[int], *,
                          n_repeats: int = 5, generator: torch.Generator | None = None) -> BiasFit:
    r"""The FD's bias in N and its extrapolation to N = infinity (Chong & Forsyth 2020, arXiv:1911.07023).

    The FD of N samples is biased upwards, by roughly a constant over N: its expectation is
    FD_inf + k / N to first order, with k depending on the model (so two models compared at one N are
    not compared fairly). For each N in ``sizes``, ``n_repeats`` subsets of N rows of ``feats`` (without
    replacement) are scored against the whole ``ref_feats``, and FD against 1/N is fitted by least
    squares; the intercept is FD_inf. (The paper calls it FID_inf and fits over 50k..5k Inception
    samples; here the reference's own finite size stays in the intercept.)

    Args:
        feats: (N_max, F) features of generated (or real) images; every size must be <= N_max and > F.
        ref_feats: (M, F) reference features.
        sizes: at least two distinct sample sizes.
        n_repeats: subsets per size.
        generator: draws the subsets.

    Introduced in chapter 17.
    """
    x = _features_2d("frechet_distance_bias", "feats", feats)
    _features_2d("frechet_distance_bias", "ref_feats", ref_feats)
    sizes = tuple(sizes)
    if len(set(sizes)) < 2:
        raise ValueError(f"frechet_distance_bias: need at least two distinct sizes, got {sizes}")
    for n in sizes:
        _positive_int("frechet_distance_bias", "each size", n, x.shape[1] + 1)
        if n > x.shape[0]:
            raise ValueError(f"frechet_distance_bias: size {n} is larger than the {x.shape[0]} rows of feats")
    _positive_int("frechet_distance_bias", "n_repeats", n_repeats)
    means, stds = [], []
    for n in sizes:
        fds = torch.tensor([frechet_distance(x[torch.randperm(x.shape[0], generator=generator)[:n]], ref_feats)
                            for _ in range(n_repeats)], dtype=torch.float64)
        means.append(float(fds.mean()))
        stds.append(float(fds.std()) if n_repeats > 1 else 0.0)
    inv = torch.tensor([1.0 / n for n in sizes], dtype=torch.float64)
    design = torch.stack([torch.ones_like(inv), inv], dim=1)  # [1, 1/N]
    coef = torch.linalg.lstsq(design, torch.tensor(means, dtype=torch.float64)[:, None]).solution.flatten()
    return BiasFit(float(coef[0]), float(coef[1]), sizes, tuple(means), tuple(stds))


# ---------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided interval (``level`` coverage)."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def half_sample_interval(statistic: Callable[[torch.Tensor], float], n: int, *,
                         n_draws: int = CONVENTION["n_draws"], level: float = CONVENTION["level"],
                         generator: torch.Generator | None = None, progress: Callable | None = None) -> Interval:
    """A normal interval for ``statistic`` whose spread comes from random halves of the sample.

    ``statistic`` receives a long tensor of row indices (``torch.arange(n)`` for the point estimate)
    and returns a float. The standard deviation of the statistic over ``n_draws`` random halves
    (n // 2 rows drawn without replacement) estimates its sampling standard deviation at the full
    size n: for a mean, a half drawn without replacement has variance (s^2 / (n/2)) (1 - 1/2) = s^2 / n,
    exactly the full sample's (half-sampling, McCarthy 1969); for the course's metrics, roughly so.
    The interval is value +- z sd, z the normal quantile of ``level``; being normal, it can reach past a
    metric's natural bound (below 0 for an FD near 0).

    Why not the bootstrap: a resample with replacement repeats rows, which the FD, the recall and
    the class-balance distance read as a smaller, less diverse sample; their resampled values sit
    above (recall: below) the estimate, and a percentile interval can miss the estimate itself
    (chapter 17 shows it). Halves repeat nothing. The interval covers the sampling noise of the
    generated set only: the reference set's own noise is shared by every model scored against it.
    ``progress(i)`` is called after each draw (for a progress bar).

    Introduced in chapter 17.
    """
    _positive_int("half_sample_interval", "n", n, 4)
    _positive_int("half_sample_interval", "n_draws", n_draws, 2)
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"half_sample_interval: level must be a float in (0, 1), got {level!r}")
    value = float(statistic(torch.arange(n)))
    draws = []
    for i in range(n_draws):
        draws.append(float(statistic(torch.randperm(n, generator=generator)[: n // 2])))
        if progress is not None:
            progress(i)
    sd = float(torch.tensor(draws, dtype=torch.float64).std())
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2.0, dtype=torch.float64)))
    return Interval(value, value - z * sd, value + z * sd, level)


def wilson_interval(wins: int, n: int, *, z: float = _Z95, digits: int | None = 4) -> tuple[float, float]:
    r"""The Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209).

    The set of p for which the observed rate p_hat = wins / n is within z standard errors of p,
    i.e. the roots of (p_hat - p)^2 = z^2 p (1 - p) / n (chapter 17 derives them with SymPy):

    .. math:: \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}}}{1 + z^2/n}

    Unlike p_hat +- z sqrt(p_hat (1 - p_hat) / n) it stays in [0, 1] and is not empty at 0 or n wins.
    z = 1.96 gives 95 %. ``digits``: round the ends (None: no rounding).

    Introduced in chapter 17.
    """
    _positive_int("wilson_interval", "n", n)
    if isinstance(wins, bool) or not isinstance(wins, int) or not 0 <= wins <= n:
        raise ValueError(f"wilson_interval: wins must be an int in [0, n = {n}], got {wins!r}")
    if not (isinstance(z, (int, float)) and z > 0):
        raise ValueError(f"wilson_interval: z must be a positive number, got {z!r}")
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (round(low, digits), round(high, digits)) if digits is not None else (low, high)


# ---------------------------------------------------------------- a blind two-alternative study


@dataclass
class PairwiseStudy:
    """A blind two-alternative forced-choice (2AFC) study of two image sets, recorded to CSV.

    Trial i shows ``images_a[i]`` and ``images_b[i]`` side by side, the side of each drawn at random
    (``generator``); the rater does not know which model drew which. :meth:`choose` records
    "left" or "right" with the time taken; every trial is appended to ``csv_path`` at once (a
    crash loses nothing). :meth:`result` gives A's win rate with a Wilson interval: A is preferred
    when the interval's low end is above 1/2. ``widget()`` shows the study in a notebook.

    Introduced in chapter 17.
    """

    images_a: torch.Tensor
    images_b: torch.Tensor
    name_a: str
    name_b: str
    csv_path: str | Path
    generator: torch.Generator | None = None
    rater: str = "anonymous"
    a_on_left: list[bool] = field(init=False)
    choices: list[str] = field(init=False, default_factory=list)

    FIELDS = ("rater", "trial", "left", "right", "choice", "preferred", "seconds")

    def __post_init__(self) -> None:
        for name in ("images_a", "images_b"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 4:
                raise ValueError(f"PairwiseStudy: {name} must be images (N, C, H, W), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if self.images_a.shape != self.images_b.shape:
            raise ValueError(f"PairwiseStudy: images_a and images_b must have the same shape, got "
                             f"{tuple(self.images_a.shape)} and {tuple(self.images_b.shape)}")
        if not self.name_a or self.name_a == self.name_b:
            raise ValueError(f"PairwiseStudy: name_a and name_b must be distinct non-empty names, got "
                             f"{self.name_a!r} and {self.name_b!r}")
        self.csv_path = Path(self.csv_path)
        self.a_on_left = (torch.rand(self.images_a.shape[0], generator=self.generator) < 0.5).tolist()
        self._shown = time.perf_counter()
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    @property
    def n_trials(self) -> int:
        return self.images_a.shape[0]

    @property
    def done(self) -> bool:
        return len(self.choices) >= self.n_trials

    def pair(self, trial: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(left image, right image) of a trial (default: the current one)."""
        i = len(self.choices) if trial is None else trial
        if not 0 <= i < self.n_trials:
            raise ValueError(f"PairwiseStudy: trial must be in [0, {self.n_trials}), got {i}")
        a, b = self.images_a[i], self.images_b[i]
        return (a, b) if self.a_on_left[i] else (b, a)

    def choose(self, side: str) -> None:
        """Record the rater's choice for the current trial: "left" or "right"."""
        if side not in ("left", "right"):
            raise ValueError(f"PairwiseStudy.choose: side must be 'left' or 'right', got {side!r}")
        if self.done:
            raise ValueError(f"PairwiseStudy.choose: all {self.n_trials} trials are done")
        i = len(self.choices)
        left, right = (self.name_a, self.name_b) if self.a_on_left[i] else (self.name_b, self.name_a)
        now = time.perf_counter()
        row = (self.rater, i, left, right, side, left if side == "left" else right, round(now - self._shown, 3))
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
        self.choices.append(side)
        self._shown = now

    def result(self) -> dict:
        """A's wins, the trials, the win rate and its 95 % Wilson interval (from this study's choices)."""
        wins = sum((c == "left") == left for c, left in zip(self.choices, self.a_on_left))
        n = len(self.choices)
        if n == 0:
            raise ValueError("PairwiseStudy.result: no trial has been answered yet")
        return {"model": self.name_a, "against": self.name_b, "wins": wins, "trials": n, "win_rate": wins / n,
                "interval": wilson_interval(wins, n)}

    @staticmethod
    def read_csv(path: str | Path, model: str) -> dict:
        """Pool every answered trial in a study CSV (several raters may append to one file): ``model``'s
        wins among the trials that showed it, and the Wilson interval."""
        with Path(path).open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if model in (r["left"], r["right"])]
        if not rows:
            raise ValueError(f"PairwiseStudy.read_csv: no trial in {path} showed {model!r}")
        wins = sum(r["preferred"] == model for r in rows)
        return {"model": model, "wins": wins, "trials": len(rows), "win_rate": wins / len(rows),
                "interval": wilson_interval(wins, len(rows)), "raters": sorted({r["rater"] for r in rows})}

    def widget(self, *, scale: int = 12):
        """The study as ipywidgets: two images, "left is better" / "right is better", a counter."""
        import ipywidgets as widgets

        left, right = widgets.Image(format="png"), widgets.Image(format="png")
        status = widgets.HTML()
        buttons = [widgets.Button(description=f"{side} is better") for side in ("left", "right")]

        def show() -> None:
            if self.done:
                r = self.result()
                status.value = (f"done: {r['trials']} trials; {self.name_a} preferred {r['win_rate']:.0%} "
                                f"(95 % interval {r['interval'][0]:.2f}-{r['interval'][1]:.2f}); saved to {self.csv_path}")
                for b in buttons:
                    b.disabled = True
                return
            a, b = self.pair()
            left.value, right.value = image_png(a, scale=scale), image_png(b, scale=scale)
            status.value = f"trial {len(self.choices) + 1} of {self.n_trials}: which image looks more like real data?"

        for b, side in zip(buttons, ("left", "right")):
            b.on_click(lambda _, side=side: (self.choose(side), show()))
        show()
        box = widgets.VBox([widgets.HBox([left, right]), widgets.HBox(buttons), status])
        box.buttons = buttons  # for headless tests
        return box


def image_png(image: torch.Tensor, *, scale: int = 12) -> bytes:
    """PNG bytes of one image (C, H, W) in [-1, 1], each pixel a scale x scale block (no smoothing)."""
    import io

    import matplotlib.image

    _positive_int("image_png", "scale", scale)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image_png: expected one image (1 or 3, H, W), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    x = ((image.detach().cpu().float().clamp(-1, 1) + 1) / 2).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    array = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, array, format="png", cmap="gray", vmin=0.0, vmax=1.0)
    return buffer.getvalue()


# ---------------------------------------------------------------- the convention: references and features


def check_images(images: object, reference: str) -> torch.Tensor:
    """Validate generated images for ``reference`` and clamp them to [-1, 1] (the convention).

    Raises ValueError for a wrong type, shape, non-finite values, or a range that is not the course's
    [-1, 1] (all values >= 0 suggests [0, 1] or bytes; beyond [-1.5, 1.5] suggests another scale).
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {list(REFERENCES)}, got {reference!r}")
    shape = (1, 8, 8) if reference == "digits" else (3, 16, 16)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (N, {', '.join(map(str, shape))}), got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"{reference} images must have shape (N, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype} "
                         "(bytes? convert with x / 127.5 - 1)")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0.0:
        raise ValueError(f"images must be in [-1, 1], but every value is >= 0 (range {lo:.3g}..{hi:.3g}): "
                         "images in [0, 1]? convert with 2 * x - 1")
    if lo < -1.5 or hi > 1.5:
        raise ValueError(f"images must be in [-1, 1] (a small overshoot is clamped), got range {lo:.3g}..{hi:.3g}")
    return images.detach().float().clamp(*CONVENTION["clamp"])


def reference_set(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The convention's reference images and labels: the 359 test digits, or the 2,000 fixed test shapes."""
    if name == "digits":
        from course_lib.data.digits import digits

        return digits("test")
    if name == "shapes":
        from course_lib.shape_classifier import shape_test_set

        return shape_test_set(2000)
    raise ValueError(f"reference must be one of {list(REFERENCES)}, got {name!r}")


def _floor_images(name: str, n: int, draw: int) -> torch.Tensor:
    """Real images in a generated set's place: n training digits (no replacement), or n fresh shapes."""
    if name == "digits":
        from course_lib.data.digits import digits

        train = digits("train")[0]
        if n > train.shape[0]:
            raise ValueError(f"the digits floor needs at most {train.shape[0]} images (the training digits), "
                             f"got {n}; score {CONVENTION['n_samples']} samples")
        return train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(1000 + draw))[:n]]
    from course_lib.data.shapes import shapes

    return shapes(n, generator=torch.Generator().manual_seed(20_000 + draw)).images


def feature_network(name: str, **zoo_kwargs):
    """The convention's classifier for ``name`` (from the zoo: trained on first use), on the CPU."""
    from course_lib import zoo

    if name not in REFERENCES:
        raise ValueError(f"reference must be one of {list(REFERENCES)}, got {name!r}")
    return zoo.pretrained("digit_classifier" if name == "digits" else "shapes_classifier", **zoo_kwargs).to("cpu")


def _scores(classifier, images: torch.Tensor) -> dict:
    from course_lib.classifier import score_images

    return score_images(classifier, images)


# ---------------------------------------------------------------- evaluate


@dataclass
class Evaluation:
    """Metrics of one sample set under the convention: values with intervals, the real floors beside them."""

    reference: str
    n: int
    metrics: dict            # name -> Interval
    floors: dict             # name -> (mean, std) over the floor draws
    class_histogram: list
    reference_histogram: list

    def ratio(self, name: str) -> float:
        """metric / floor mean (FD; for KID, whose floor is ~0, use the difference instead)."""
        return self.metrics[name].value / self.floors[name][0]

    def table(self) -> str:
        lines = [f"{self.n} images scored against the {self.reference} reference "
                 f"({int(100 * CONVENTION['level'])} % intervals from random halves; floor = real images, same N)",
                 f"{'metric':<18}{'value':>12}{'interval':>26}{'real floor':>22}"]
        for name, iv in self.metrics.items():
            f_mean, f_std = self.floors[name]
            lines.append(f"{name:<18}{iv.value:>12.4g}{f'[{iv.low:.4g}, {iv.high:.4g}]':>26}"
                         f"{f'{f_mean:.4g} ± {f_std:.2g}':>22}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"reference": self.reference, "n": self.n, "convention": CONVENTION,
                "metrics": {k: {"value": v.value, "low": v.low, "high": v.high} for k, v in self.metrics.items()},
                "floors": {k: {"mean": m, "std": s} for k, (m, s) in self.floors.items()},
                "class_histogram": self.class_histogram, "reference_histogram": self.reference_histogram}


def _metric_fns(ref: dict, k: int, generator: torch.Generator) -> dict:
    """name -> f(scores of a set, index) -> float, each comparing the indexed rows with the reference."""
    from course_lib.metrics import _knn_radii, _precision_recall

    n_ref = ref["features"].shape[0]
    ref_feats = ref["features"].detach().to("cpu", torch.float64)
    ref_radii = _knn_radii(ref_feats, k)  # the reference's k-NN radii, once (as precision_recall computes them)

    def kid(s, idx):
        f = s["features"][idx]
        size = min(f.shape[0], n_ref, CONVENTION["kid_subset_size"])
        return kernel_distance(f, ref["features"], subset_size=size, n_subsets=4, generator=generator).mean

    def pr(s, idx, key):  # = metrics.precision_recall(ref, f, k=k)[key], with the reference's radii reused
        f = s["features"][idx][:n_ref].detach().to("cpu", torch.float64)  # at most as many as the reference
        return _precision_recall(ref_feats, f, ref_radii, k, (key,))[key]

    return {
        "FD": lambda s, idx: frechet_distance(s["features"][idx], ref["features"]),
        "KID": kid,
        "precision": lambda s, idx: pr(s, idx, "precision"),
        "recall": lambda s, idx: pr(s, idx, "recall"),
        "classifier score": lambda s, idx: classifier_summary(s["probs"][idx])["classifier_score"],
        "class balance TV": lambda s, idx: class_balance(s["predicted"][idx], ref["labels"],
                                                         s["probs"].shape[1])["total_variation"],
    }


# Reference scores and floors depend only on the reference, the classifier's weights, N, the draws and the seed:
# computed once per process and reused (the ladder of chapter 17 scores many sets against one floor).
_CACHE: dict = {}


def _fingerprint(classifier) -> tuple:
    return (id(classifier), tuple(float(p.detach().double().sum()) for p in classifier.parameters()))


def _reference(reference: str, classifier) -> dict:
    key = ("reference", reference, _fingerprint(classifier))
    if key not in _CACHE:
        ref_images, ref_labels = reference_set(reference)
        ref = _scores(classifier, ref_images)
        ref["labels"] = ref_labels
        _CACHE[key] = ref
    return _CACHE[key]


def _floors(reference: str, classifier, n: int, floor_draws: int, seed: int, bar) -> dict:
    key = ("floors", reference, _fingerprint(classifier), n, floor_draws, seed)
    if key not in _CACHE:
        fns = _metric_fns(_reference(reference, classifier), CONVENTION["k"],
                          torch.Generator().manual_seed(seed + 1_000_003))  # its own stream: cached or not, the same
        raw: dict[str, list[float]] = {name: [] for name in fns}
        for draw in range(floor_draws):
            real = _scores(classifier, _floor_images(reference, n, draw))
            for name, fn in fns.items():
                raw[name].append(fn(real, torch.arange(n)))
            if bar is not None:
                bar.update(1)
        _CACHE[key] = {k: (float(torch.tensor(v).mean()), float(torch.tensor(v).std())) for k, v in raw.items()}
    elif bar is not None:
        bar.update(floor_draws)
    return _CACHE[key]


def evaluate(images: torch.Tensor, reference: str = "digits", *, classifier=None, n_draws: int = CONVENTION["n_draws"],
             floor_draws: int = CONVENTION["floor_draws"], seed: int = 0, progress: bool = False) -> Evaluation:
    """Score generated images against a reference under the course's convention (see the module doc).

    Args:
        images: (N, C, H, W) in [-1, 1] (clamped); N > the feature dimension (64), and for digits at
            most 1,438 (the floor draws that many training digits). The convention uses N = 1,000.
        reference: "digits" or "shapes".
        classifier: the feature network (default: :func:`feature_network`).
        n_draws: random halves of the generated images for the intervals (the reference is fixed).
        floor_draws: draws of real images for the floors.
        seed: seeds the halves and KID's subsets.
        progress: show a tqdm bar (on stderr).

    Returns:
        :class:`Evaluation`: FD, KID, precision, recall, classifier score, class-balance total
        variation, each an :class:`Interval`, and each metric's real floor (mean, std).

    Introduced in chapter 17.
    """
    x = check_images(images, reference)
    classifier = feature_network(reference) if classifier is None else classifier
    n_features = classifier.features(x[:1].to(next(classifier.parameters()).device)).shape[1]
    if x.shape[0] <= n_features:
        raise ValueError(f"evaluate: need more images than features ({n_features}) for a non-singular covariance, "
                         f"got {x.shape[0]}; the convention scores {CONVENTION['n_samples']}")
    _positive_int("evaluate", "n_draws", n_draws, 2)
    _positive_int("evaluate", "floor_draws", floor_draws, 2)
    ref = _reference(reference, classifier)
    fns = _metric_fns(ref, CONVENTION["k"], torch.Generator().manual_seed(seed))
    gen = _scores(classifier, x)
    n = x.shape[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(fns) * n_draws + floor_draws, desc="evaluate", file=sys.stderr)
    floors = _floors(reference, classifier, n, floor_draws, seed, bar)
    halves = torch.Generator().manual_seed(seed + 7)
    metrics = {}
    for name, fn in fns.items():
        metrics[name] = half_sample_interval(lambda idx, fn=fn: fn(gen, idx), n, n_draws=n_draws, generator=halves,
                                             progress=(lambda i: bar.update(1)) if bar is not None else None)
    if bar is not None:
        bar.close()
    balance = class_balance(gen["predicted"], ref["labels"], gen["probs"].shape[1])
    return Evaluation(reference, n, metrics, floors, balance["histogram"].tolist(),
                      balance["reference_histogram"].tolist())


# ---------------------------------------------------------------- command line


def _load_samples(path: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {path}")
    if p.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(p, allow_pickle=False))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"could not read {path} as a torch file of images ({type(error).__name__}: {error})") from None
    if isinstance(obj, dict):
        if "images" not in obj:
            raise ValueError(f"{path} holds a dict without an 'images' entry (keys: {sorted(obj)[:8]})")
        obj = obj["images"]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.evaluate SAMPLES --reference digits|shapes``: score saved images; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.evaluate",
        description="Score generated images against the course's reference set under its evaluation convention "
                    "(chapter 17): FD, KID, precision, recall, classifier score and class balance, each with a "
                    "interval and the real-vs-real floor at the same sample size.")
    parser.add_argument("samples", help="a .pt file (torch.save of a tensor (N, C, H, W) in [-1, 1], or of a dict "
                                        "with 'images') or a .npy array")
    parser.add_argument("--reference", choices=REFERENCES, default="digits", help="reference set (default digits)")
    parser.add_argument("--n-draws", type=int, default=CONVENTION["n_draws"], help="random halves for the intervals")
    parser.add_argument("--floor-draws", type=int, default=CONVENTION["floor_draws"], help="real-floor draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves and KID subsets")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        images = _load_samples(args.samples)
        result = evaluate(images, args.reference, n_draws=args.n_draws, floor_draws=args.floor_draws, seed=args.seed,
                          progress=not args.quiet)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.table())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

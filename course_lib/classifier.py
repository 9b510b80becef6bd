"""A small CNN that recognises 8 x 8 digits: the course's offline "Inception network".

It scores generated digits (is this a recognisable digit, which one, how confidently,
are all classes present) and provides the features for the course's Fréchet distance
(FID computed with this network instead of Inception-v3). It is trained on the fixed
train split of ``course_lib.data.digits`` with light augmentation, random shifts of up
to one pixel and Gaussian pixel noise, so that it stays reliable on slightly imperfect
samples. Training takes about eight CPU seconds; the model zoo caches the result.

>>> model = DigitClassifier()
>>> x0 = torch.zeros(2, 1, 8, 8)
>>> model(x0).shape, model.features(x0).shape
(torch.Size([2, 10]), torch.Size([2, 64]))

Introduced in chapter 03 (sample scores) and chapter 17 (Fréchet distance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.data.digits import digits
from course_lib.metrics import classifier_summary, frechet_distance
from course_lib.training import report_progress

__all__ = ["DigitClassifier", "NoisyDigitClassifier", "digit_frechet_distance", "evaluate_samples", "fit_classifier",
           "score_images", "train_digit_classifier", "train_noisy_digit_classifier"]


def _check_digit_images(fn: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{fn}: images must have shape (N, 1, 8, 8) with values in [-1, 1], got {shape} "
                         "(downsample 16 x 16 digits with F.avg_pool2d(x, 2) first)")
    if images.shape[0] < 1:
        raise ValueError(f"{fn}: images must hold at least one image, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{fn}: images contain NaN or infinite values")


class DigitClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1]; 40,394 parameters.

    conv3x3(1->16) - ReLU - conv3x3(16->32) - ReLU - maxpool -> (32, 4, 4)
    conv3x3(32->64) - ReLU - maxpool -> (64, 2, 2) - flatten - linear(256->F) - ReLU
    = ``features`` (B, F), then linear(F->10) = logits.

    Args:
        n_features: F, the width of the penultimate layer (default 64).

    Introduced in chapter 03.
    """

    def __init__(self, n_features: int = 64) -> None:
        super().__init__()
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"DigitClassifier: n_features must be a positive int, got {n_features!r}")
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 2 * 2, n_features)
        self.head = nn.Linear(n_features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, F) of images x (B, 1, 8, 8)."""
        h = F.relu(self.conv1(x))  # (B, 16, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 32, 4, 4)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # (B, 64, 2, 2)
        return F.relu(self.fc(h.flatten(1)))  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10) of images x (B, 1, 8, 8)."""
        return self.head(self.features(x))  # (B, 10)


def _augment(x0: torch.Tensor, generator: torch.Generator, max_shift: int, noise_std: float) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (background -1 fills in) and add noise."""
    b, _, h, w = x0.shape
    s = max_shift
    padded = F.pad(x0, (s, s, s, s), value=-1.0)  # (B, 1, H + 2s, W + 2s)
    shift = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)  # (B, 2) top-left corner
    rows = shift[:, 0, None] + torch.arange(h)  # (B, H)
    cols = shift[:, 1, None] + torch.arange(w)  # (B, W)
    batch = torch.arange(b)[:, None, None]
    shifted = padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, H, W)
    sigma = noise_std * torch.rand(b, 1, 1, 1, generator=generator)  # (B, 1, 1, 1) per-image level
    return shifted + sigma * torch.randn(shifted.shape, generator=generator)


def _seeded(cls: type, seed: int, device) -> nn.Module:
    """cls() with its initial weights drawn from ``seed`` (the global RNG untouched), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls().to(device)


@torch.no_grad()
def _accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).to(torch.float32).mean())


def train_digit_classifier(*, steps: int = 800, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                           max_shift: int = 1, noise_std: float = 0.2,
                           device: str | torch.device = "cpu") -> tuple[DigitClassifier, float]:
    """Train a ``DigitClassifier`` on the digits train split; return it and its test accuracy.

    Adam on the cross-entropy of augmented mini-batches (random shift of up to
    ``max_shift`` pixels, Gaussian noise with a per-image std uniform in [0, noise_std]),
    learning rate decayed linearly to 0. The initial weights come from ``seed`` and every
    other draw (batches, shifts, noise) from ``torch.Generator().manual_seed(seed)``, so
    the same seed gives the same model on the same machine; the global RNG is untouched.
    Measured: the default 800 steps take ~8 CPU-seconds on one thread and reach
    99.2-99.7 % test accuracy (seeds 0, 1, 2).

    Args:
        steps: optimiser steps, >= 1.
        batch_size: images per step, >= 1.
        lr: Adam learning rate, > 0.
        seed: seed of every random draw.
        max_shift: largest shift in pixels (0 disables shifts).
        noise_std: largest noise std (0 disables noise).
        device: where to train.

    Returns:
        (model in eval mode, accuracy on the 359 test images as a float in [0, 1]).

    Introduced in chapter 03.
    """
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("max_shift", max_shift, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"train_digit_classifier: {name} must be an int >= {low}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"train_digit_classifier: lr must be > 0, got {lr!r}")
    if not noise_std >= 0:
        raise ValueError(f"train_digit_classifier: noise_std must be >= 0, got {noise_std!r}")
    generator = torch.Generator().manual_seed(seed)
    model = _seeded(DigitClassifier, seed, device)
    train_x, train_y = digits("train")
    test_x, test_y = digits("test")

    def batch_loss(net: nn.Module) -> torch.Tensor:
        index = torch.randint(0, len(train_y), (batch_size,), generator=generator)
        x0 = _augment(train_x[index], generator, max_shift, noise_std)  # (B, 1, 8, 8)
        return F.cross_entropy(net(x0.to(device)), train_y[index].to(device))

    fit_classifier(model, batch_loss, steps=steps, lr=lr)
    return model, _accuracy(model, test_x.to(device), test_y.to(device))


def fit_classifier(model: nn.Module, batch_loss: Callable[[nn.Module], torch.Tensor], *, steps: int,
                   lr: float, log_every: int = 25) -> nn.Module:
    """The training loop of the course's classifiers (digits here, shapes in chapter 11).

    ``steps`` times: L = batch_loss(model) (the caller draws the batch and its augmentation from
    its own generator), then an Adam step with the learning rate lr * (1 - k / steps) at step k
    (decayed linearly to 0). The model is trained in place and returned in eval mode. Every
    ``log_every`` steps and at the end it reports (step, steps, L) to
    :func:`course_lib.training.report_progress` (the model zoo's progress bar).

    Args:
        model: the classifier, already on its device.
        batch_loss: ``batch_loss(model) -> scalar tensor``, one fresh mini-batch per call.
        steps: optimiser steps, >= 1.
        lr: Adam's peak learning rate, > 0.
        log_every: how often the loss is read back for the progress report.

    Introduced in chapter 03.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 - k / steps)
    model.train()
    for step in range(1, steps + 1):
        loss = batch_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps:
            report_progress(step, steps, float(loss.detach()))
    model.eval()
    return model


@torch.no_grad()
def evaluate_samples(classifier: DigitClassifier, images: torch.Tensor, *, batch_size: int = 512) -> dict:
    """Score digit images (real or generated) with a trained classifier.

    Args:
        classifier: a trained ``DigitClassifier``.
        images: (N, 1, 8, 8) images in [-1, 1] (samples slightly outside are scored as they are).
        batch_size: images per forward pass.

    Returns:
        ``course_lib.metrics.classifier_summary`` of the predicted probabilities
        (``mean_confidence``, ``class_histogram``, ``histogram_entropy``, ``max_entropy``,
        ``classifier_score``) plus ``probs`` (N, 10), ``predicted`` (N,) int64 labels and
        ``features`` (N, F) for ``frechet_distance``, all on the CPU.

    Introduced in chapter 03.
    """
    _check_digit_images("evaluate_samples", images)
    return score_images(classifier, images, batch_size=batch_size)


@torch.no_grad()
def score_images(classifier: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> dict:
    """The scoring loop shared by the course's classifiers (digits here, shapes in chapter 11).

    ``classifier`` must have ``features(x) -> (b, F)`` and ``head(h) -> (b, K)`` logits; images are
    (N, C, H, W), already validated by the caller. Returns ``classifier_summary`` of the softmax
    probabilities plus ``probs`` (N, K), ``predicted`` (N,) and ``features`` (N, F), on the CPU;
    the classifier's train/eval mode is restored afterwards. Introduced in chapter 03.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    probs, features = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, torch.float32)  # (b, C, H, W)
        h = classifier.features(x)  # (b, F)
        probs.append(F.softmax(classifier.head(h), dim=1).cpu())
        features.append(h.cpu())
    classifier.train(was_training)
    p = torch.cat(probs)  # (N, K)
    result = classifier_summary(p)
    result.update(probs=p, predicted=p.argmax(1), features=torch.cat(features))
    return result


def digit_frechet_distance(classifier: DigitClassifier, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Fréchet distance between two sets of digits in the classifier's feature space.

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) on ``classifier.features``
    (Heusel et al. 2017, arXiv:1706.08500, Eq. 6, with this network in place of
    Inception-v3). Needs more images than features (N > 64) for a full-rank covariance;
    compare values at equal sample sizes and next to the real-vs-real value (e.g. train
    split vs test split).

    Args:
        classifier: a trained ``DigitClassifier``.
        images_a: (N, 1, 8, 8) images, N >= 2.
        images_b: (M, 1, 8, 8) images, M >= 2.

    Returns:
        FD as a float.

    Introduced in chapter 17.
    """
    _check_digit_images("digit_frechet_distance", images_a)
    _check_digit_images("digit_frechet_distance", images_b)
    feats_a = evaluate_samples(classifier, images_a)["features"]  # (N, F)
    feats_b = evaluate_samples(classifier, images_b)["features"]  # (M, F)
    return frechet_distance(feats_a, feats_b)


class NoisyDigitClassifier(nn.Module):
    r"""A digit classifier that reads *noisy* digits x_t and their time t: p_phi(y | x_t, t).

    Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 4) adds the gradient
    s * grad_x log p_phi(y | x_t, t) to the score, so the classifier must be trained on x_t at every
    noise level of the diffusion model's schedule (a clean-image classifier's gradient is
    meaningless on noise). The architecture is ``DigitClassifier``'s with the time told to every
    convolution as a per-channel shift (the sinusoidal time embedding of chapter 03 through a small
    MLP): conv3x3(1->32) + shift - SiLU - conv3x3(32->64) + shift - SiLU - maxpool - conv3x3(64->64)
    + shift - SiLU - maxpool - flatten - linear(256->F) - SiLU - linear(F->10).

    >>> net = NoisyDigitClassifier()
    >>> net(torch.zeros(3, 1, 8, 8), torch.rand(3)).shape
    torch.Size([3, 10])

    Introduced in chapter 12.
    """

    def __init__(self, n_features: int = 64, emb_dim: int = 64) -> None:
        super().__init__()
        from course_lib.networks.embeddings import TimeEmbedding

        for name, value in (("n_features", n_features), ("emb_dim", emb_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
                raise ValueError(f"NoisyDigitClassifier: {name} must be an even int >= 2, got {value!r}")
        self.time_embed = TimeEmbedding(emb_dim, emb_dim)
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.shift = nn.Linear(emb_dim, 32 + 64 + 64)
        self.fc = nn.Linear(64 * 2 * 2, n_features)
        self.head = nn.Linear(n_features, 10)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10) of noisy digits x_t (B, 1, 8, 8) at times t (B,) in [0, 1]."""
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 4 or tuple(x_t.shape[1:]) != (1, 8, 8):
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"NoisyDigitClassifier: x_t must have shape (B, 1, 8, 8), got {shape}")
        if not isinstance(t, torch.Tensor) or t.shape != (x_t.shape[0],):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"NoisyDigitClassifier: t must have shape ({x_t.shape[0]},), got {shape}")
        s1, s2, s3 = self.shift(F.silu(self.time_embed(t))).split([32, 64, 64], dim=1)  # (B, 32), (B, 64), (B, 64)
        h = F.silu(self.conv1(x_t) + s1[:, :, None, None])  # (B, 32, 8, 8)
        h = F.max_pool2d(F.silu(self.conv2(h) + s2[:, :, None, None]), 2)  # (B, 64, 4, 4)
        h = F.max_pool2d(F.silu(self.conv3(h) + s3[:, :, None, None]), 2)  # (B, 64, 2, 2)
        return self.head(F.silu(self.fc(h.flatten(1))))  # (B, 10)


def train_noisy_digit_classifier(schedule, *, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3,
                                 seed: int = 0, device: str | torch.device = "cpu") -> NoisyDigitClassifier:
    r"""Train a :class:`NoisyDigitClassifier` on x_t = alpha_t x0 + sigma_t eps of the digits train split.

    Each step: x0, y from the train split (shifted by up to one pixel), t ~ ``schedule.sample_t``,
    eps ~ N(0, I), loss = cross-entropy of p_phi(y | x_t, t) (Dhariwal & Nichol 2021, Sec. 4:
    "train a classifier on noisy images x_t"). Adam with the learning rate decayed linearly to 0
    (:func:`fit_classifier`); every draw from ``torch.Generator().manual_seed(seed)``.

    Args:
        schedule: the diffusion model's :class:`~course_lib.schedules.Schedule` (the classifier must
            see the same x_t the sampler will).
        steps, batch_size, lr, seed, device: as in :func:`train_digit_classifier`.

    Returns:
        the model in eval mode. Introduced in chapter 12.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train_noisy_digit_classifier: {name} must be an int >= 1, got {value!r}")
    if not lr > 0:
        raise ValueError(f"train_noisy_digit_classifier: lr must be > 0, got {lr!r}")
    generator = torch.Generator().manual_seed(seed)
    model = _seeded(NoisyDigitClassifier, seed, device)
    train_x, train_y = digits("train")

    def batch_loss(net: nn.Module) -> torch.Tensor:
        index = torch.randint(0, len(train_y), (batch_size,), generator=generator)
        x0 = _augment(train_x[index], generator, 1, 0.0)  # (B, 1, 8, 8)
        t = schedule.sample_t(batch_size, generator=generator)  # (B,)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = schedule.add_noise(x0, t, eps)
        return F.cross_entropy(net(x_t.to(device), t.to(device, torch.float32)), train_y[index].to(device))

    return fit_classifier(model, batch_loss, steps=steps, lr=lr)

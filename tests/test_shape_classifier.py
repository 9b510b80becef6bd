"""Tests of course_lib.shape_classifier: the offline judge of generated 16 x 16 shapes."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from course_lib.data.shapes import SHAPE_NAMES, shapes
from course_lib.networks.unet import count_parameters
from course_lib.shape_classifier import (ShapeClassifier, _outliers, evaluate_shape_samples, shape_frechet_distance,
                                         shape_test_set, train_shape_classifier)


@pytest.fixture(scope="module")
def trained():
    start = time.process_time()
    model, accuracy = train_shape_classifier(seed=0)
    return model, accuracy, time.process_time() - start


def noise_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_classifier_is_accurate_on_the_test_shapes(trained):
    model, accuracy, cpu_seconds = trained
    assert accuracy >= 0.98  # 99.9 % measured
    assert not model.training
    assert cpu_seconds < 90  # ~20 s measured on one thread; generous for loaded machines
    test_x, test_y = shape_test_set()
    assert test_x.shape == (2000, 3, 16, 16)
    result = evaluate_shape_samples(model, test_x)
    assert float((result["predicted"] == test_y).float().mean()) == pytest.approx(accuracy)


def test_classifier_is_robust_to_noise_and_blur(trained):
    """The augmentation's purpose: slightly noisy or soft (decoded-looking) shapes are still read."""
    model, _, _ = trained
    test_x, test_y = shape_test_set(500)
    noisy = test_x + 0.2 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(test_x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    for images in (noisy, blurred):
        assert float((evaluate_shape_samples(model, images)["predicted"] == test_y).float().mean()) >= 0.95


def test_confidence_separates_shapes_from_non_shapes(trained):
    """Outlier exposure: uniform noise and shuffled tiles score near chance (0.25), real shapes near 1."""
    model, _, _ = trained
    real = evaluate_shape_samples(model, shape_test_set(500)[0])
    noise = evaluate_shape_samples(model, noise_images(500, 0))
    assert real["probs"].shape == (500, 4) and real["features"].shape == (500, 64)
    assert real["predicted"].dtype == torch.int64
    assert real["mean_confidence"] > 0.95 and noise["mean_confidence"] < 0.45
    assert real["histogram_entropy"] > 0.99 * real["max_entropy"]  # all four shapes, evenly
    assert real["classifier_score"] > 3.5 > 1.5 > noise["classifier_score"]


def test_outliers_are_no_shapes_and_come_from_the_generator():
    images = shapes(64, generator=torch.Generator().manual_seed(0)).images
    a = _outliers(images, torch.Generator().manual_seed(1))
    b = _outliers(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    # tile shuffling keeps the colours of an image: same multiset of pixel values per channel
    shuffled = [k for k in range(64) if not torch.equal(a[k], images[k]) and
                torch.equal(a[k].flatten(1).sort(1).values, images[k].flatten(1).sort(1).values)]
    assert len(shuffled) >= 5


def test_frechet_distance_real_vs_real_is_far_below_real_vs_noise(trained):
    model, _, _ = trained
    test_x, _ = shape_test_set(500)
    other = shapes(500, generator=torch.Generator().manual_seed(77)).images
    real_vs_real = shape_frechet_distance(model, other, test_x)
    real_vs_noise = shape_frechet_distance(model, test_x, noise_images(500, 1))
    assert real_vs_real >= 0
    assert real_vs_noise > 20 * real_vs_real


def test_training_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, acc_a = train_shape_classifier(steps=3, n_train=64, seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    b, acc_b = train_shape_classifier(steps=3, n_train=64, seed=3)
    c, _ = train_shape_classifier(steps=3, n_train=64, seed=4)
    assert acc_a == acc_b
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_model_shapes_and_bad_input():
    model = ShapeClassifier(n_features=32)
    x = torch.zeros(3, 3, 16, 16)
    assert model(x).shape == (3, len(SHAPE_NAMES)) and model.features(x).shape == (3, 32)
    assert count_parameters(ShapeClassifier()) == 77220
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 16, 16\).*got \(2, 1, 8, 8\)"):
        evaluate_shape_samples(model, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="images contain NaN"):
        shape_frechet_distance(model, torch.full((4, 3, 16, 16), float("nan")), x)
    with pytest.raises(ValueError, match="n_features must be a positive int, got 0"):
        ShapeClassifier(n_features=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train_shape_classifier(steps=0)
    with pytest.raises(ValueError, match="lr must be > 0, got -0.1"):
        train_shape_classifier(lr=-0.1)
    with pytest.raises(ValueError, match="seed must be < 10000"):
        train_shape_classifier(seed=10_000)
    with pytest.raises(ValueError, match="outlier_weight must be >= 0, got -1"):
        train_shape_classifier(outlier_weight=-1)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        shape_test_set(0)


def test_the_shared_loop_gives_the_weights_of_the_loop_it_replaced():
    """train_shape_classifier runs the digit classifier's loop (fit_classifier); same draws, same weights."""
    from course_lib.shape_classifier import _augment

    steps, batch_size, n_train, lr, seed, weight = 4, 16, 200, 2e-3, 2, 0.5
    n_out = max(1, batch_size // 4)
    train = shapes(n_train, size=16, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = ShapeClassifier()
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 - k / steps)
    reference.train()
    for _ in range(steps):  # the loop as it was before the merge
        index = torch.randint(0, n_train, (batch_size,), generator=generator)
        loss = F.cross_entropy(reference(_augment(train.images[index], generator, 0.2)), train.labels[index])
        pick = torch.randint(0, n_train, (n_out,), generator=generator)
        log_p = F.log_softmax(reference(_outliers(train.images[pick], generator)), dim=1)
        loss = loss + weight * (-log_p.mean(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model, _ = train_shape_classifier(steps=steps, batch_size=batch_size, n_train=n_train, lr=lr, seed=seed,
                                      outlier_weight=weight)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name

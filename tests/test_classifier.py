"""Tests of course_lib.classifier: the offline digit classifier and its scores."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from course_lib.classifier import DigitClassifier, digit_frechet_distance, evaluate_samples, train_digit_classifier
from course_lib.data.digits import digits


@pytest.fixture(scope="module")
def trained():
    start = time.process_time()
    model, accuracy = train_digit_classifier(seed=0)
    return model, accuracy, time.process_time() - start


def noise_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_classifier_reaches_95_percent_on_the_test_split(trained):
    model, accuracy, cpu_seconds = trained
    assert accuracy >= 0.95
    assert not model.training
    assert cpu_seconds < 60  # ~8 s measured on one thread; generous for loaded CI machines
    test_x, test_y = digits("test")
    result = evaluate_samples(model, test_x)
    assert float((result["predicted"] == test_y).float().mean()) == pytest.approx(accuracy)


def test_classifier_is_robust_to_pixel_noise(trained):
    """The augmentation's purpose: slightly noisy (generated-looking) digits are still read."""
    model, _, _ = trained
    test_x, test_y = digits("test")
    noisy = test_x + 0.2 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(0))
    assert float((evaluate_samples(model, noisy)["predicted"] == test_y).float().mean()) >= 0.95


def test_evaluate_samples_tells_digits_from_noise(trained):
    model, _, _ = trained
    real = evaluate_samples(model, digits("test")[0])
    noise = evaluate_samples(model, noise_images(359, 0))
    assert real["probs"].shape == (359, 10) and real["features"].shape == (359, 64)
    assert real["predicted"].dtype == torch.int64
    assert real["mean_confidence"] > 0.95 > noise["mean_confidence"]
    assert real["histogram_entropy"] > 0.99 * real["max_entropy"]  # all ten digits, evenly
    assert real["classifier_score"] > 8.0 > 3.0 > noise["classifier_score"]


def test_frechet_distance_real_vs_real_is_far_below_real_vs_noise(trained):
    model, _, _ = trained
    train_x, _ = digits("train")
    test_x, _ = digits("test")
    real_vs_real = digit_frechet_distance(model, train_x, test_x)
    real_vs_noise = digit_frechet_distance(model, test_x, noise_images(359, 1))
    blurred = F.avg_pool2d(test_x, 3, stride=1, padding=1, count_include_pad=False)
    real_vs_blurred = digit_frechet_distance(model, train_x, blurred)
    assert real_vs_real >= 0
    assert real_vs_noise > 20 * real_vs_real
    assert real_vs_blurred > 20 * real_vs_real


def test_training_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, acc_a = train_digit_classifier(steps=5, seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    b, acc_b = train_digit_classifier(steps=5, seed=3)
    c, _ = train_digit_classifier(steps=5, seed=4)
    assert acc_a == acc_b
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_model_shapes_and_bad_input():
    model = DigitClassifier(n_features=32)
    x = torch.zeros(3, 1, 8, 8)
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, 32)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 8, 8\).*got \(2, 1, 16, 16\).*avg_pool2d"):
        evaluate_samples(model, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="images contain NaN"):
        digit_frechet_distance(model, torch.full((4, 1, 8, 8), float("nan")), x)
    with pytest.raises(ValueError, match="n_features must be a positive int, got 0"):
        DigitClassifier(n_features=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train_digit_classifier(steps=0)
    with pytest.raises(ValueError, match="lr must be > 0, got -0.1"):
        train_digit_classifier(lr=-0.1)


def test_score_images_rejects_a_bad_batch_size_and_matches_evaluate_samples():
    from course_lib.classifier import score_images

    model = DigitClassifier()
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        score_images(model, images, batch_size=0)
    whole = score_images(model, images, batch_size=512)
    pieces = evaluate_samples(model, images, batch_size=2)
    torch.testing.assert_close(whole["probs"], pieces["probs"])
    torch.testing.assert_close(whole["features"], pieces["features"])


def test_the_shared_loop_gives_the_weights_of_the_loop_it_replaced():
    """fit_classifier (one loop for both classifiers) reproduces the digit classifier's former loop exactly."""
    from course_lib.classifier import _augment

    steps, batch_size, lr, seed = 6, 32, 2e-3, 5
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = DigitClassifier()
    train_x, train_y = digits("train")
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 - k / steps)
    reference.train()
    for _ in range(steps):  # the loop as it was before the merge
        index = torch.randint(0, len(train_y), (batch_size,), generator=generator)
        x0 = _augment(train_x[index], generator, 1, 0.2)
        loss = F.cross_entropy(reference(x0), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model, _ = train_digit_classifier(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name


def test_fit_classifier_reports_progress():
    from course_lib.classifier import fit_classifier
    from course_lib.training import progress_listener

    model = DigitClassifier()
    x, y = digits("test")
    seen = []
    with progress_listener(lambda step, steps, loss: seen.append((step, steps))):
        fit_classifier(model, lambda net: F.cross_entropy(net(x[:16]), y[:16]), steps=30, lr=1e-3, log_every=10)
    assert seen == [(10, 30), (20, 30), (30, 30)] and not model.training

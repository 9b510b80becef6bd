"""Tests of course_lib.training: learning quality, reproducibility, EMA, interrupts, errors."""

import math

import pytest
import torch
from torch import nn

from course_lib.device import DEVICE_ENV_VAR
from course_lib.networks.mlp import TimeMLP
from course_lib.training import EMA, TrainResult, train

# ---- a denoising task with a known optimum --------------------------------------------------
# x0 is one of two points; x_t = alpha_t x0 + sigma_t eps with alpha_t = cos(pi t / 2),
# sigma_t = sin(pi t / 2). The best eps-predictor is E[eps | x_t] = (x_t - alpha_t E[x0 | x_t]) /
# sigma_t, with E[x0 | x_t] a softmax-weighted mean of the two points (Bayes' rule).

MU = torch.tensor([[1.0, 0.5], [-1.0, -0.5]])


def _noised(x0, generator):
    t = 0.01 + 0.98 * torch.rand(x0.shape[0], generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    alpha_t = torch.cos(math.pi * t / 2)[:, None]
    sigma_t = torch.sin(math.pi * t / 2)[:, None]
    return alpha_t * x0 + sigma_t * eps, t, eps, alpha_t, sigma_t


def eps_loss(model, x0, generator):
    x_t, t, eps, _, _ = _noised(x0, generator)
    return (model(x_t, t) - eps).pow(2).mean()


def _two_point_data(n=512, seed=1):
    return MU[torch.randint(2, (n,), generator=torch.Generator().manual_seed(seed))]


def test_learns_the_optimal_denoiser_of_a_two_point_distribution():
    torch.manual_seed(0)
    result = train(TimeMLP(), eps_loss, _two_point_data(), steps=300, batch_size=256,
                   device="cpu", progress=False)
    g = torch.Generator().manual_seed(123)
    x0 = _two_point_data(20000, seed=2)
    x_t, t, eps, alpha_t, sigma_t = _noised(x0, g)
    logits = -((x_t[:, None, :] - alpha_t[:, None, :] * MU) ** 2).sum(-1) / (2 * sigma_t**2)
    x0_mean = logits.softmax(dim=1) @ MU  # E[x0 | x_t]   (N, 2)
    eps_opt = (x_t - alpha_t * x0_mean) / sigma_t
    mse_opt = (eps_opt - eps).pow(2).mean().item()  # the Bayes error, ~0.10
    mse_zero = eps.pow(2).mean().item()  # predicting 0 = E[eps], the best constant, ~1.0
    with torch.no_grad():
        mse_model = (result.model(x_t, t) - eps).pow(2).mean().item()
        mse_ema = (result.ema_model(x_t, t) - eps).pow(2).mean().item()
    # both close the gap to the optimum by more than 95 %
    assert mse_model < mse_opt + 0.05 * (mse_zero - mse_opt)
    assert mse_ema < mse_opt + 0.05 * (mse_zero - mse_opt)
    assert mse_opt < 0.2 < 0.9 < mse_zero  # the task is neither trivial nor hopeless


# ---- reproducibility ------------------------------------------------------------------------


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Dropout(0.3), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, t):
        return self.net(x)


def _run(seed, steps=30, disturb=0):
    torch.manual_seed(0)
    net = DropoutNet()  # same initial weights
    torch.rand(disturb)  # a different global RNG state must not matter
    return train(net, eps_loss, _two_point_data(), steps=steps, batch_size=32,
                 seed=seed, device="cpu", progress=False)


def test_same_seed_gives_identical_losses_and_weights():
    a, b = _run(seed=7), _run(seed=7, disturb=3)
    assert a.losses == b.losses
    for p, q in zip(a.ema_model.parameters(), b.ema_model.parameters()):
        assert torch.equal(p, q)
    assert _run(seed=8).losses != a.losses


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(42)
    state = torch.get_rng_state()
    train(DropoutNet(), eps_loss, _two_point_data(), steps=3, batch_size=8, device="cpu",
          progress=False)
    # the DropoutNet() construction drew from the global RNG; replay that to compare
    torch.set_rng_state(state)
    DropoutNet()
    expected = torch.rand(3)
    torch.set_rng_state(state)
    net = DropoutNet()
    train(net, eps_loss, _two_point_data(), steps=3, batch_size=8, device="cpu", progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_generator_passed_to_loss_fn_is_on_the_device():
    seen = []

    def loss_fn(model, batch, generator):
        seen.append((type(generator), generator.device))
        return model(batch).pow(2).mean()

    train(nn.Linear(2, 2), loss_fn, torch.randn(8, 2), steps=2, batch_size=4, device="cpu",
          progress=False)
    assert seen == [(torch.Generator, torch.device("cpu"))] * 2


# ---- minibatches ----------------------------------------------------------------------------


def test_shuffled_epochs_visit_every_example_once_per_epoch():
    batches = []

    def loss_fn(model, batch, generator):
        images, labels = batch
        assert torch.equal(images[:, 0].long(), labels)  # rows stay paired
        batches.append(labels.clone())
        return model(images).pow(2).mean()

    n = 10
    labels = torch.arange(n)
    images = labels[:, None].float().repeat(1, 3)
    train(nn.Linear(3, 1), loss_fn, (images, labels), steps=6, batch_size=4, device="cpu",
          progress=False)
    seen = torch.cat(batches)  # 24 indices = 2 full epochs + 4
    assert sorted(seen[:10].tolist()) == list(range(n))
    assert sorted(seen[10:20].tolist()) == list(range(n))
    assert seen[:10].tolist() != list(range(n))  # shuffled


def test_batch_larger_than_the_data_set():
    sizes = []

    def loss_fn(model, batch, generator):
        sizes.append(batch.shape[0])
        return model(batch).pow(2).mean()

    train(nn.Linear(2, 1), loss_fn, torch.randn(3, 2), steps=2, batch_size=7, device="cpu",
          progress=False)
    assert sizes == [7, 7]


# ---- optimiser details ----------------------------------------------------------------------


def _one_step_change(warmup_steps):
    net = nn.Linear(4, 1)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    train(net, lambda m, b, g: m(b).sum(), x, steps=1, batch_size=16, lr=0.1,
          warmup_steps=warmup_steps, grad_clip=None, device="cpu", progress=False)
    return torch.cat([(p.detach() - q).abs().flatten() for p, q in zip(net.parameters(), before)])


def test_linear_warmup_scales_the_first_step():
    # Adam's first step moves every parameter by lr * g / (|g| + eps) ~ lr
    torch.testing.assert_close(_one_step_change(0), torch.full((5,), 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(_one_step_change(10), torch.full((5,), 0.01), atol=1e-6, rtol=0)


def test_gradient_clipping_by_global_norm():
    norms = []

    def record(step, loss, model):
        norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())

    x = torch.ones(8, 3)
    loss_fn = lambda m, b, g: 1000 * m(b).sum()  # noqa: E731
    train(nn.Linear(3, 2), loss_fn, x, steps=3, batch_size=8, grad_clip=0.5, device="cpu",
          progress=False, callback=record)
    assert norms == pytest.approx([0.5] * 3, rel=1e-4)


# ---- EMA ------------------------------------------------------------------------------------


def test_ema_follows_the_decay_formula():
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 2.0)
    ema = EMA(net, decay=0.9, warmup=False)
    expected = 2.0
    for value in (1.0, -3.0, 0.5):
        nn.init.constant_(net.weight, value)
        ema.update(net)
        expected = 0.9 * expected + 0.1 * value
        assert ema.model.weight.item() == pytest.approx(expected)
    assert not ema.model.training and not ema.model.weight.requires_grad


def test_ema_warmup_ramp():
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 0.0)
    ema = EMA(net, decay=0.999)
    expected = 0.0
    for n in range(5):
        d = min(0.999, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        nn.init.constant_(net.weight, 1.0)
        ema.update(net)
        expected = d * expected + (1 - d)
        assert ema.model.weight.item() == pytest.approx(expected)
    assert ema.num_updates == 5


def test_ema_copies_integer_buffers_and_copy_to():
    net = nn.BatchNorm1d(2)
    ema = EMA(net, decay=0.5, warmup=False)
    net.num_batches_tracked.fill_(7)
    nn.init.constant_(net.weight, 3.0)
    ema.update(net)
    assert ema.model.num_batches_tracked.item() == 7
    torch.testing.assert_close(ema.model.weight, torch.full((2,), 2.0))  # 0.5 * 1 + 0.5 * 3
    target = nn.BatchNorm1d(2)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, torch.full((2,), 2.0))


def test_ema_errors():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1.0"):
        EMA(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        EMA("net")
    with pytest.raises(ValueError, match="same parameters and buffers"):
        EMA(nn.Linear(1, 1)).update(nn.Linear(1, 1, bias=False))


def test_zero_ema_decay_tracks_the_model():
    result = train(nn.Linear(2, 2), lambda m, b, g: m(b).pow(2).mean(), torch.randn(16, 2),
                   steps=5, batch_size=4, ema_decay=0.0, device="cpu", progress=False)
    for p, q in zip(result.model.parameters(), result.ema_model.parameters()):
        assert torch.equal(p, q)


# ---- stopping -------------------------------------------------------------------------------


def test_keyboard_interrupt_returns_the_partial_result():
    def stop_at_4(step, loss, model):
        if step == 4:
            raise KeyboardInterrupt

    result = train(TimeMLP(hidden=16), eps_loss, _two_point_data(), steps=50, batch_size=8,
                   device="cpu", progress=False, callback=stop_at_4)
    assert isinstance(result, TrainResult)
    assert result.interrupted and result.steps_done == 4 and len(result.losses) == 4
    assert not result.model.training and not result.ema_model.training
    assert result.device == torch.device("cpu")
    assert result.seconds > 0


def test_callback_returning_true_stops_without_interrupt():
    result = train(nn.Linear(2, 2), lambda m, b, g: m(b).pow(2).mean(), torch.randn(8, 2),
                   steps=20, batch_size=4, device="cpu", progress=False,
                   callback=lambda step, loss, model: step == 3)
    assert result.steps_done == 3 and not result.interrupted


def test_losses_without_callback_and_with_progress_bar(capsys):
    result = train(nn.Linear(2, 2), lambda m, b, g: m(b).pow(2).mean(), torch.randn(8, 2),
                   steps=7, batch_size=4, log_every=3, device="cpu", progress=True)
    assert result.steps_done == 7 and all(math.isfinite(v) for v in result.losses)
    assert "training" in capsys.readouterr().err


def test_default_device_is_used(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    result = train(nn.Linear(2, 2), lambda m, b, g: m(b).pow(2).mean(), torch.randn(8, 2),
                   steps=1, batch_size=4, progress=False)
    assert result.device == torch.device("cpu")


def test_non_finite_loss_stops_with_an_error():
    with pytest.raises(FloatingPointError, match="the loss became nan at step 1"):
        train(nn.Linear(2, 2), lambda m, b, g: m(b).sum() * float("nan"), torch.randn(8, 2),
              steps=3, batch_size=4, log_every=1, device="cpu", progress=False)


# ---- validation -----------------------------------------------------------------------------


def _ok_loss(model, batch, generator):
    return model(batch).pow(2).mean()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(steps=0), "steps must be an int >= 1, got 0"),
        (dict(steps=2.5), "steps must be an int >= 1, got 2.5"),
        (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
        (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
        (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\), got 1.0"),
        (dict(ema_decay=-0.1), r"ema_decay must be in \[0, 1\)"),
        (dict(grad_clip=0.0), "grad_clip must be a number > 0 or None, got 0.0"),
        (dict(weight_decay=-1.0), "weight_decay must be a number >= 0"),
        (dict(warmup_steps=-1), "warmup_steps must be an int >= 0"),
        (dict(log_every=0), "log_every must be an int >= 1"),
        (dict(seed=-1), "seed must be an int >= 0"),
        (dict(amp=True, device="cpu"), "amp=True needs a CUDA device, got device 'cpu'"),
        (dict(device="banana"), "device must be a torch.device or a string like 'cpu'"),
        (dict(callback=3), "callback must be callable or None"),
        (dict(data=(torch.randn(4, 2), torch.arange(5))),
         r"the tensors of data must have the same length N, got lengths \[4, 5\]"),
        (dict(data=torch.randn(0, 2)), r"data is empty \(N = 0\)"),
        (dict(data=[1, 2]), "data\\[0\\] must be a tensor with a first"),
        (dict(data=torch.tensor(1.0)), "data\\[0\\] must be a tensor with a first"),
        (dict(data=()), "data must be a tensor"),
        (dict(loss_fn=None), "loss_fn must be callable"),
        (dict(loss_fn=lambda m, b, g: m(b).pow(2)), r"loss_fn must return a scalar tensor, got \(4, 2\)"),
        (dict(model="net"), "model must be a torch.nn.Module, got str"),
        (dict(model=nn.Linear(2, 2).requires_grad_(False)), "no parameters with requires_grad=True"),
    ],
)
def test_train_rejects_bad_arguments(overrides, match):
    kwargs = dict(model=nn.Linear(2, 2), loss_fn=_ok_loss, data=torch.randn(4, 2), steps=2,
                  batch_size=4, device="cpu", progress=False)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=match):
        train(kwargs.pop("model"), kwargs.pop("loss_fn"), kwargs.pop("data"), **kwargs)


def test_train_rejects_unavailable_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        train(nn.Linear(2, 2), _ok_loss, torch.randn(4, 2), steps=1, batch_size=2, device="cuda",
              progress=False)

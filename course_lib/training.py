"""The one training loop of the course, with an exponential moving average of the weights.

Every chapter trains its networks with :func:`train`: the chapter supplies the model, a loss
``loss_fn(model, batch, generator) -> scalar`` (DDPM's L_simple, flow matching, ...) and the
data; the loop does the rest:

* minibatches drawn in **shuffled epochs** by a ``torch.Generator`` seeded with ``seed``
  (every example once per epoch; a batch may straddle two epochs);
* AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101), optional linear warmup of the learning
  rate, gradient clipping by global norm;
* an exponential moving average (EMA) of the weights, the model DDPM samples from
  (Ho et al. 2020, arXiv:2006.11239, App. B);
* the device from :func:`course_lib.device.default_device`, mixed precision on CUDA only;
* a progress bar (``tqdm.auto``, a widget in notebooks) showing the loss;
* Ctrl-C / "interrupt kernel" stops training and returns what was trained so far.

On the CPU the same seed and the same initial model give the same losses, step for step:
batches come from the seeded generator, the loss's noise from the generator passed to
``loss_fn``, and dropout from the global RNG, which the loop seeds inside
``torch.random.fork_rng`` (the caller's global RNG state is left untouched).

Introduced in chapter 02.

>>> import torch
>>> from torch import nn
>>> x = torch.linspace(-1, 1, 64)[:, None]
>>> def loss_fn(model, batch, generator):
...     return (model(batch) - 3 * batch).pow(2).mean()
>>> result = train(nn.Linear(1, 1), loss_fn, x, steps=200, batch_size=16, lr=0.05,
...                device="cpu", progress=False)
>>> result.steps_done, result.interrupted, result.losses[-1] < 1e-3
(200, False, True)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from course_lib.device import default_device

__all__ = ["EMA", "TrainResult", "progress_listener", "report_progress", "train"]

_PROGRESS_LISTENERS: list[Callable[[int, int, float], object]] = []


@contextlib.contextmanager
def progress_listener(listener: Callable[[int, int, float], object]):
    """While active, every training loop calls ``listener(step, steps, loss)`` when it reads the loss back.

    :func:`train` reports every ``log_every`` steps and at the last step; the course's classifiers
    (:func:`course_lib.classifier.fit_classifier`) as often. Listening changes no arithmetic. The
    model zoo uses it to show and share a model's training progress (``python -m course_lib.zoo``).

    >>> seen = []
    >>> with progress_listener(lambda step, steps, loss: seen.append((step, steps))):
    ...     report_progress(5, 10, 0.5)
    >>> report_progress(10, 10, 0.1)  # no listener any more
    >>> seen
    [(5, 10)]
    """
    _PROGRESS_LISTENERS.append(listener)
    try:
        yield listener
    finally:
        _PROGRESS_LISTENERS.remove(listener)


def report_progress(step: int, steps: int, loss: float) -> None:
    """Tell the active :func:`progress_listener` listeners that ``step`` of ``steps`` is done (loss ``loss``)."""
    for listener in list(_PROGRESS_LISTENERS):
        listener(step, steps, loss)


class EMA:
    """Exponential moving average of a model's weights.

    After each optimiser step, every floating-point parameter and buffer theta of the model
    updates its average theta_ema:

        theta_ema <- d_n * theta_ema + (1 - d_n) * theta,
        d_n = min(decay, (1 + n) / (10 + n))   (warmup=True; n = number of updates so far)
        d_n = decay                            (warmup=False)

    The warmup, from TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, matters for
    short runs: with decay = 0.999 and no warmup the average after 600 steps would still give
    weight 0.999**600 = 0.55 to the random initial weights. Integer buffers are copied.

    Args:
        model: the network to average; it is deep-copied, the copy (``self.model``) is put in
            eval mode with gradients off.
        decay: the target decay, in [0, 1).
        warmup: use the (1 + n) / (10 + n) ramp.

    Introduced in chapter 02.

    >>> from torch import nn
    >>> net = nn.Linear(1, 1, bias=False)
    >>> _ = nn.init.zeros_(net.weight)
    >>> ema = EMA(net, decay=0.9, warmup=False)
    >>> _ = nn.init.ones_(net.weight)
    >>> ema.update(net)
    >>> round(ema.model.weight.item(), 6)  # 0.9 * 0 + 0.1 * 1
    0.1
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        """d_n for the next update (see the class docstring)."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d_n * theta_ema + (1 - d_n) * theta for every float tensor of model."""
        d = self.current_decay()
        ema_state = self.model.state_dict()
        state = model.state_dict()
        if ema_state.keys() != state.keys():
            raise ValueError("model does not have the same parameters and buffers as the EMA copy")
        for name, ema_value in ema_state.items():
            value = state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - d)  # d * ema + (1 - d) * value
            else:
                ema_value.copy_(value)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite model's parameters and buffers with the averaged ones."""
        model.load_state_dict(self.model.state_dict())


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (the object passed in, trained in place), in eval mode.
        ema_model: the EMA of its weights (a separate copy), in eval mode.
        losses: the training loss of every step done, as floats.
        steps_done: number of optimiser steps completed.
        seconds: wall-clock time of the loop.
        interrupted: True when a KeyboardInterrupt stopped training early.
        device: the device the models are on.

    Introduced in chapter 02.
    """

    model: nn.Module
    ema_model: nn.Module
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    device: torch.device = torch.device("cpu")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_data(data: object) -> tuple[torch.Tensor, ...]:
    tensors = (data,) if isinstance(data, torch.Tensor) else data
    if not isinstance(tensors, (tuple, list)) or not tensors:
        raise ValueError(
            f"data must be a tensor (N, ...) or a non-empty tuple of tensors, got "
            f"{type(data).__name__}"
        )
    for i, x in enumerate(tensors):
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise ValueError(
                f"data[{i}] must be a tensor with a first (example) dimension, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
    for i, x in enumerate(tensors):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = torch.nonzero(~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1))[:, 0]
            raise ValueError(
                f"data[{i}] must be finite, got NaN or inf in {bad.numel()} example(s), the first at "
                f"index {int(bad[0])}"
            )
    lengths = [x.shape[0] for x in tensors]
    if len(set(lengths)) != 1:
        raise ValueError(f"the tensors of data must have the same length N, got lengths {lengths}")
    if lengths[0] == 0:
        raise ValueError("data is empty (N = 0)")
    return tuple(tensors)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be a torch.device or a string like 'cpu', got {device!r}"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} but MPS is not available")
    return device


def _non_finite_loss_message(value: float, step: int, diagnostics: dict | None) -> str:
    """Say what a non-finite loss was, instead of only blaming the learning rate."""
    lines = [f"the loss became {value} at step {step} (the first non-finite step; the data is finite, "
             "checked when train started)."]
    if diagnostics is None:
        lines.append("loss_fn attached no diagnostics (course_lib.losses.diffusion_loss does): evaluate "
                     "loss_fn on one batch with reduction='none' to see which examples are non-finite.")
        lines.append("If every example is non-finite the optimisation diverged: try a smaller lr.")
        return " ".join(lines)
    t = diagnostics["t"].detach().float().cpu().reshape(-1)
    per_example = diagnostics["per_example"].detach().float().cpu().reshape(-1)
    bad = ~torch.isfinite(per_example)
    lines.append(f"Its batch had times t in [{float(t.min()):.6g}, {float(t.max()):.6g}]; {int(bad.sum())} of "
                 f"{bad.numel()} examples had a non-finite loss")
    if bool(bad.any()) and not bool(bad.all()):
        lines.append(f"at t = {t[bad][:8].tolist()}, the others were finite: the loss is singular at those "
                     "times with finite weights (a schedule end, sigma_t = 0 or alpha_t = 0?), not a "
                     "learning-rate problem.")
    else:
        lines.append("(all of them): the network's output overflowed, as when the optimisation diverges: "
                     "try a smaller lr or grad_clip.")
    return " ".join(lines)


class _EpochSampler:
    """Indices in shuffled epochs: concatenated random permutations of 0..N-1, read in order."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.generator = generator
        self.buffer = torch.empty(0, dtype=torch.long)

    def next(self, batch_size: int) -> torch.Tensor:
        while self.buffer.numel() < batch_size:
            perm = torch.randperm(self.n, generator=self.generator)
            self.buffer = torch.cat([self.buffer, perm])
        indices, self.buffer = self.buffer[:batch_size], self.buffer[batch_size:]
        return indices  # (batch_size,)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object, torch.Generator], torch.Tensor],
    data: torch.Tensor | Sequence[torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float = 2e-3,
    seed: int = 0,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    progress: bool = True,
    callback: Callable[[int, float, nn.Module], object] | None = None,
    log_every: int = 25,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn`` with AdamW; keep an EMA of the weights.

    One step:  batch ~ data (shuffled epochs);  L = loss_fn(model, batch, generator);
    g = grad L, clipped to global norm grad_clip;  AdamW step with learning rate
    lr * min(1, step / warmup_steps);  EMA update (see :class:`EMA`).

    Args:
        model: the network; moved to the device and trained in place.
        loss_fn: ``loss_fn(model, batch, generator) -> scalar tensor``. ``batch`` is a tensor
            (B, ...) when ``data`` is a tensor, else a tuple of tensors, all on the device.
            ``generator`` is a ``torch.Generator`` on the device (seeded from ``seed``): draw
            every noise sample and time with it, e.g.
            ``torch.randn(x0.shape, generator=generator, device=x0.device)``.
        data: a tensor (N, ...) or a tuple of tensors of equal length N (e.g. images, labels).
            It is moved to the device once, so it must fit there.
        steps: number of optimiser steps, > 0.
        batch_size: examples per step, > 0 (may exceed N: batches span epochs).
        lr: peak learning rate of AdamW, > 0.
        seed: seeds the batch order, the loss's generator and dropout.
        ema_decay: EMA decay in [0, 1) (0 makes the EMA equal to the model).
        grad_clip: maximum global gradient norm, > 0, or None for no clipping.
        weight_decay: AdamW's decoupled weight decay, >= 0.
        warmup_steps: linear learning-rate warmup over this many steps (0: none).
        device: None picks :func:`course_lib.device.default_device`.
        amp: mixed precision (bf16 autocast where supported, else fp16 with a GradScaler).
            None means "on for CUDA, off elsewhere"; True is only allowed on CUDA.
        progress: show a tqdm progress bar with the running loss.
        callback: ``callback(step, loss, model)`` after every step (step counts from 1); a
            return value of True stops training (``interrupted`` stays False). Raising
            KeyboardInterrupt inside it behaves like Ctrl-C.
        log_every: the progress bar's loss is updated every log_every steps.

    Returns:
        :class:`TrainResult`. After a KeyboardInterrupt the partial result has
        ``interrupted=True``; the step that was running when it arrived is not counted.

    Introduced in chapter 02.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(
            f"loss_fn must be callable (model, batch, generator) -> loss, got {loss_fn!r}"
        )
    tensors = _check_data(data)
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("warmup_steps", warmup_steps, 0)
    _check_int("log_every", log_every, 1)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a number > 0 or None, got {grad_clip!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {callback!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters with requires_grad=True: nothing to train")

    device = _resolve_device(device)
    if amp is None:
        amp = device.type == "cuda"
    elif amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device, got device {str(device)!r}")
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    model.to(device)
    model.train()
    tensors = tuple(x.to(device) for x in tensors)
    num_examples = tensors[0].shape[0]
    index_generator = torch.Generator().manual_seed(seed)  # batch order, on the CPU
    loss_generator = torch.Generator(device=device).manual_seed(seed + 1)  # noise in loss_fn
    sampler = _EpochSampler(num_examples, index_generator)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup_steps) if warmup_steps else 1.0
    )
    ema = EMA(model, ema_decay)

    from tqdm.auto import tqdm  # imported here: tqdm.auto picks the notebook widget if any

    bar = tqdm(total=steps, disable=not progress, desc="training", leave=True)
    pending: list[torch.Tensor] = []  # losses on the device, read back every log_every steps
    pending_diagnostics: list[dict | None] = []  # what diffusion_loss attached to each (device tensors)
    losses: list[float] = []
    interrupted = False
    rng_devices = [device] if device.type in ("cuda", "mps") else []
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(
            devices=rng_devices, device_type=device.type if rng_devices else "cuda"
        ):
            torch.manual_seed(seed)  # dropout and any other global draw
            for step in range(1, steps + 1):
                indices = sampler.next(batch_size).to(device)
                batch = tensors[0][indices] if isinstance(data, torch.Tensor) else tuple(
                    x[indices] for x in tensors
                )
                autocast = (
                    torch.autocast("cuda", dtype=amp_dtype) if amp else contextlib.nullcontext()
                )
                with autocast:
                    loss = loss_fn(model, batch, loss_generator)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
                    raise ValueError(f"loss_fn must return a scalar tensor, got {got}")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                ema.update(model)
                pending.append(loss.detach().float())
                pending_diagnostics.append(getattr(loss, "diagnostics", None))
                if callback is not None or step % log_every == 0 or step == steps:
                    chunk = torch.stack(pending).tolist()
                    losses.extend(chunk)
                    pending.clear()
                    bad = [i for i, v in enumerate(chunk) if not math.isfinite(v)]
                    if bad:
                        first = step - len(chunk) + 1 + bad[0]
                        raise FloatingPointError(
                            _non_finite_loss_message(chunk[bad[0]], first, pending_diagnostics[bad[0]])
                        )
                    pending_diagnostics.clear()
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                    bar.update(step - bar.n)
                    report_progress(step, steps, losses[-1])
                if callback is not None and callback(step, losses[-1], model) is True:
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if pending:
        losses.extend(torch.stack(pending).tolist())
    model.eval()
    return TrainResult(
        model=model,
        ema_model=ema.model.eval(),
        losses=losses,
        steps_done=len(losses),
        seconds=time.perf_counter() - start,
        interrupted=interrupted,
        device=device,
    )

r"""Guidance: conditional sampling by changing the denoiser, never the sampling loop (chapter 12).

Bayes' rule on scores (Dhariwal & Nichol 2021, arXiv:2105.05233, eq. 10-14; Ho & Salimans 2022,
arXiv:2207.12598, eq. 6):

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),

and a *guided* score with scale gamma is the score of the tilted density p_t(x) p_t(y | x)^gamma:

    classifier guidance   score_g = score(x_t) + gamma grad_x log p_phi(y | x_t, t)
    classifier-free       eps_g   = eps(x_t, null) + s (eps(x_t, y) - eps(x_t, null)),

with s = ``guidance_scale`` = 1 + w (diffusers' convention; w is Ho & Salimans' weight,
eps_g = (1 + w) eps(x_t, y) - w eps(x_t, null)). s = 0 is the unconditional model, s = 1 the
conditional one, s > 1 extrapolates. Because x0_hat = (x_t - sigma_t eps)/alpha_t is affine in
eps with coefficients that do not depend on the network, the same combination of the two x0_hat
is the same guided denoiser: CFG in x0-space equals CFG in eps-, v- and score-space (a test).

:class:`ClassifierFreeGuidance` and :class:`ClassifierGuidance` wrap a
:class:`~course_lib.parameterization.Denoiser` and are denoisers themselves (``schedule``,
``__call__(x_t, t)``, ``at_point``), so every sampler of chapters 02-08 runs them unchanged.
The remedies for over-saturation at large scales are options of the wrapper:

* ``x0_range``: clip the guided x0_hat (static thresholding, DDPM's released code);
* ``dynamic_threshold=p``: Imagen's dynamic thresholding (Saharia et al. 2022, arXiv:2205.11487,
  Sec. 2.3): s = max(1, p-th quantile of |x0_hat|) per sample, x0_hat <- clip(x0_hat, -s, s) / s;
* ``rescale=phi``: guidance rescale (Lin et al. 2024, arXiv:2305.08891, eq. 15-16), here on eps as
  diffusers' ``rescale_noise_cfg`` does;
* ``interval=(t_low, t_high)``: guide only for t in (t_low, t_high] (Kynkaanniemi et al. 2024,
  arXiv:2404.07724, eq. 3), the conditional model elsewhere;
* ``method="apg"``: adaptive projected guidance (Sadat et al. 2024, arXiv:2410.02416, Sec. 4,
  without the momentum term): the update Delta = D(x_t, y) - D(x_t, null) is cut to norm at most r
  and split into a part parallel to D(x_t, y) and one orthogonal to it; the parallel part, which
  the paper finds causes over-saturation, is kept with weight eta (0 by default).

>>> drop_labels(torch.tensor([3, 1, 4, 1, 5]), 1.0, null_label=10,
...             generator=torch.Generator().manual_seed(0)).tolist()
[10, 10, 10, 10, 10]
>>> cfg_combine(torch.tensor([1.0]), torch.tensor([2.0]), guidance_scale=3.0).item()  # 1 + 3 (2 - 1)
4.0

:class:`PromptGuidance` is the same combination for any conditioning (captions, image prompts; chapter 15).

Introduced in chapter 12.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.schedules import PathPoint

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "PromptGuidance", "apg_combine", "cfg_combine", "drop_labels",
           "dynamic_threshold", "guidance_scale_from_w", "rescale_guidance", "w_from_guidance_scale"]


def _number(name: str, value, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def guidance_scale_from_w(w: float) -> float:
    """diffusers' ``guidance_scale`` s = 1 + w from Ho & Salimans' guidance weight w."""
    return 1.0 + _number("w", w)


def w_from_guidance_scale(guidance_scale: float) -> float:
    """Ho & Salimans' guidance weight w = s - 1 from diffusers' ``guidance_scale`` s."""
    return _number("guidance_scale", guidance_scale) - 1.0


def drop_labels(class_labels: torch.Tensor, p: float, *, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Label dropout for classifier-free guidance: each label becomes ``null_label`` with probability p.

    Ho & Salimans 2022, Algorithm 1, line 3: "c <- null with probability p_uncond"; one network then
    learns p(x | y) and, on the dropped examples, p(x). The draws come from ``generator``.

    Args:
        class_labels: (B,) integer labels in [0, null_label).
        p: the dropout probability p_uncond in [0, 1].
        null_label: the label index that means "no label" (``UNet.null_label`` = num_classes).
        generator: for the Bernoulli draws (on the labels' device).
    Returns:
        (B,) long labels.
    """
    p = _number("p", p, low=0.0, high=1.0)
    if not isinstance(class_labels, torch.Tensor) or class_labels.ndim != 1:
        raise ValueError(f"class_labels must be a 1-D integer tensor (B,), got {getattr(class_labels, 'shape', class_labels)!r}")
    if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
    if class_labels.numel() and (int(class_labels.min()) < 0 or int(class_labels.max()) >= null_label):
        raise ValueError(f"class_labels must lie in [0, {null_label - 1}] (null_label = {null_label}), got values in "
                         f"[{int(class_labels.min())}, {int(class_labels.max())}]")
    drop = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < p  # (B,)
    return torch.where(drop, torch.full_like(class_labels, null_label), class_labels).long()


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    r"""uncond + s (cond - uncond): classifier-free guidance of any prediction (eps, x0, v, score).

    Ho & Salimans 2022, eq. 6, with s = 1 + w (diffusers' ``guidance_scale``).
    """
    _number("guidance_scale", guidance_scale)
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond and cond must have the same shape, got {tuple(uncond.shape)} and {tuple(cond.shape)}")
    return uncond + guidance_scale * (cond - uncond)


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).std(dim=1).reshape((-1,) + (1,) * (x.dim() - 1))  # (B, 1, ...)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    r"""Guidance rescale (Lin et al. 2024, eq. 15-16): pull the guided prediction's std back to the conditional one's.

    x_rescaled = guided * std(cond) / std(guided) (per sample, over all non-batch axes);
    result = phi x_rescaled + (1 - phi) guided. phi = 0 leaves CFG unchanged.
    """
    phi = _number("phi", phi, low=0.0, high=1.0)
    rescaled = guided * (_per_sample_std(cond) / _per_sample_std(guided))
    return phi * rescaled + (1.0 - phi) * guided


def dynamic_threshold(x0_hat: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    r"""Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3) of x0_hat in the data range [-1, 1].

    s = max(1, the ``percentile`` quantile of |x0_hat| over each sample's pixels);
    x0_hat <- clip(x0_hat, -s, s) / s. Samples already inside [-1, 1] only get clipped at 1 (s = 1);
    saturated ones are pulled back inwards instead of piling up at +-1.
    """
    percentile = _number("percentile", percentile, low=0.0, high=1.0)
    flat = x0_hat.flatten(1).abs()  # (B, P)
    s = torch.quantile(flat.to(torch.float32) if flat.dtype == torch.float16 else flat, percentile, dim=1)
    s = s.clamp(min=1.0).to(x0_hat.dtype).reshape((-1,) + (1,) * (x0_hat.dim() - 1))  # (B, 1, ...)
    return torch.maximum(torch.minimum(x0_hat, s), -s) / s


def apg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float, *, eta: float = 0.0,
                norm_threshold: float | None = None) -> torch.Tensor:
    r"""Adaptive projected guidance on denoised predictions (Sadat et al. 2024, Algorithm 1 without momentum).

    Delta = cond - uncond, cut to norm r: Delta <- Delta min(1, r / |Delta|) (per sample);
    Delta_par = (<Delta, cond> / <cond, cond>) cond, Delta_orth = Delta - Delta_par;
    result = cond + (s - 1) (Delta_orth + eta Delta_par).
    With eta = 1 and no threshold this is plain CFG: cond + (s - 1) Delta = uncond + s Delta.
    """
    _number("guidance_scale", guidance_scale)
    eta = _number("eta", eta)
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond and cond must have the same shape, got {tuple(uncond.shape)} and {tuple(cond.shape)}")
    shape = (-1,) + (1,) * (cond.dim() - 1)
    delta = cond - uncond
    if norm_threshold is not None:
        r = _number("norm_threshold", norm_threshold)
        if r <= 0:
            raise ValueError(f"norm_threshold must be > 0, got {norm_threshold!r}")
        norm = delta.flatten(1).norm(dim=1).reshape(shape)
        delta = delta * torch.clamp(r / norm.clamp(min=1e-12), max=1.0)
    dot = (delta * cond).flatten(1).sum(1).reshape(shape)
    cc = (cond * cond).flatten(1).sum(1).reshape(shape).clamp(min=1e-12)
    parallel = dot / cc * cond
    return cond + (guidance_scale - 1.0) * (delta - parallel + eta * parallel)


def _check_denoiser(denoiser) -> None:
    if not callable(denoiser) or getattr(denoiser, "schedule", None) is None:
        raise ValueError(f"denoiser must be a course denoiser (callable with a .schedule), got {type(denoiser).__name__}")
    if getattr(denoiser, "x0_range", None) is not None:
        raise ValueError("the wrapped denoiser clips x0_hat (x0_range is set): clipping each branch before they are "
                         "combined hides what guidance does; build it with x0_range=None and give x0_range (or "
                         "dynamic_threshold) to the guidance wrapper, which clips the guided x0_hat")


def _check_labels(class_labels, num_classes: int | None) -> torch.Tensor:
    if not isinstance(class_labels, torch.Tensor) or class_labels.ndim != 1 or class_labels.numel() == 0:
        raise ValueError(f"class_labels must be a non-empty 1-D integer tensor (B,), got "
                         f"{getattr(class_labels, 'shape', class_labels)!r}")
    if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
    if num_classes is not None and (int(class_labels.min()) < 0 or int(class_labels.max()) >= num_classes):
        raise ValueError(f"class_labels must lie in [0, {num_classes - 1}] (the model's {num_classes} classes), got "
                         f"values in [{int(class_labels.min())}, {int(class_labels.max())}]")
    return class_labels.long()


class _GuidedDenoiser:
    """What both wrappers share: the schedule, the two sampler paths, the output post-processing."""

    def __init__(self, denoiser, class_labels, *, x0_range, dynamic_threshold, prompts: bool = False):
        _check_denoiser(denoiser)
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        net = getattr(denoiser, "net", None)
        self.num_classes = getattr(net, "num_classes", None)
        self.class_labels = None if prompts else _check_labels(class_labels, self.num_classes)
        if x0_range is not None and (len(x0_range) != 2 or not float(x0_range[0]) < float(x0_range[1])):
            raise ValueError(f"x0_range must be a pair (low, high) with low < high, got {x0_range!r}")
        if dynamic_threshold is not None:
            _number("dynamic_threshold", dynamic_threshold, low=0.0, high=1.0)
            if x0_range is not None:
                raise ValueError("give x0_range (static clipping) or dynamic_threshold, not both")
        self.x0_range, self.dynamic_threshold = x0_range, dynamic_threshold

    def _labels_for(self, x_t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != self.class_labels.shape[0]:
            raise ValueError(f"x_t has a batch of {x_t.shape[0]} but {self.class_labels.shape[0]} class_labels were given")
        return self.class_labels.to(x_t.device)

    def _finish(self, x0_hat: torch.Tensor) -> torch.Tensor:
        if self.dynamic_threshold is not None:
            return dynamic_threshold(x0_hat, self.dynamic_threshold)
        if self.x0_range is not None:
            return x0_hat.clamp(float(self.x0_range[0]), float(self.x0_range[1]))
        return x0_hat

    def prepare(self, points, dtype: torch.dtype) -> None:
        prepare = getattr(self.denoiser, "prepare", None)
        if prepare is not None:
            prepare(points, dtype)

    def _inner(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """The wrapped denoiser at one PathPoint (the samplers' path) or at times t (B,)."""
        if isinstance(t, PathPoint):
            at_point = getattr(self.denoiser, "at_point", None)
            if at_point is not None:
                return at_point(x_t, t, **cond)
            t = torch.full((x_t.shape[0],), t.t, device=x_t.device,
                           dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)
        elif not isinstance(t, torch.Tensor) or t.dim() == 0:
            t = torch.full((x_t.shape[0],), float(t), device=x_t.device,
                           dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)
        elif t.shape[0] != x_t.shape[0]:  # a doubled batch: repeat the times
            t = t.repeat(x_t.shape[0] // t.shape[0])
        return self.denoiser(x_t, t, **cond)

    def _coefficients(self, x_t: torch.Tensor, t):
        """(t as a float or (B,) tensor, alpha_t, sigma_t broadcastable to x_t)."""
        if isinstance(t, PathPoint):
            return t.t, t.alpha, t.sigma
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        return t, self.schedule.alpha(t).to(x_t.dtype).reshape(shape), self.schedule.sigma(t).to(x_t.dtype).reshape(shape)

    def at_point(self, x_t: torch.Tensor, point: PathPoint) -> torch.Tensor:
        """The guided x0_hat at one time for the whole batch (the samplers' path)."""
        return self._guided(x_t, point)

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """The guided x0_hat at times t (a scalar or (B,))."""
        return self._guided(x_t, t)


class ClassifierFreeGuidance(_GuidedDenoiser):
    r"""The classifier-free guided denoiser D_s(x_t, y) = D(x_t, null) + s (D(x_t, y) - D(x_t, null)).

    One batch of 2B evaluates the conditional and the unconditional branch together (as diffusers'
    pipelines do). Ho & Salimans 2022, eq. 6, with ``guidance_scale`` s = 1 + w.

    Args:
        denoiser: a :class:`~course_lib.parameterization.Denoiser` around a class-conditional network
            trained with label dropout (:func:`drop_labels`), built with ``x0_range=None``.
        class_labels: (B,) the labels y to sample, in [0, num_classes).
        guidance_scale: s (0: unconditional, 1: conditional, > 1: guided).
        x0_range / dynamic_threshold: post-processing of the guided x0_hat (see the module docstring).
        rescale: phi of :func:`rescale_guidance` (0: off), applied to the guided eps.
        interval: (t_low, t_high): guidance only for t_low < t <= t_high; the conditional model elsewhere.
        method: "cfg" or "apg" (:func:`apg_combine` on x0_hat, with ``apg_eta`` and ``apg_norm_threshold``).

    >>> from course_lib.networks.unet import UNet
    >>> from course_lib.parameterization import Denoiser
    >>> from course_lib.schedules import get_schedule
    >>> net = UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(), num_classes=10)
    >>> guided = ClassifierFreeGuidance(Denoiser(net, get_schedule("ddpm_linear")), torch.tensor([3, 7]), 4.0)
    >>> guided(torch.randn(2, 1, 8, 8), 0.5).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, denoiser, class_labels: torch.Tensor, guidance_scale: float, *, x0_range=None,
                 dynamic_threshold: float | None = None, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None, method: str = "cfg", apg_eta: float = 0.0,
                 apg_norm_threshold: float | None = None) -> None:
        super().__init__(denoiser, class_labels, x0_range=x0_range, dynamic_threshold=dynamic_threshold)
        if self.num_classes is None and getattr(denoiser, "net", None) is not None:
            raise ValueError("classifier-free guidance needs a class-conditional network (num_classes set) trained "
                             "with label dropout; this one is unconditional")
        self._set_options(guidance_scale, rescale, interval, method, apg_eta, apg_norm_threshold)

    def _set_options(self, guidance_scale, rescale, interval, method, apg_eta, apg_norm_threshold) -> None:
        self.guidance_scale = _number("guidance_scale", guidance_scale)
        self.rescale = _number("rescale", rescale, low=0.0, high=1.0)
        if interval is not None:
            if len(interval) != 2:
                raise ValueError(f"interval must be a pair (t_low, t_high), got {interval!r}")
            lo, hi = (_number("interval[0]", interval[0], low=0.0, high=1.0),
                      _number("interval[1]", interval[1], low=0.0, high=1.0))
            if not lo < hi:
                raise ValueError(f"interval must have t_low < t_high, got {interval!r}")
            interval = (lo, hi)
        self.interval = interval
        if method not in ("cfg", "apg"):
            raise ValueError(f"method must be 'cfg' or 'apg', got {method!r}")
        if method == "cfg" and (apg_eta != 0.0 or apg_norm_threshold is not None):
            raise ValueError("apg_eta and apg_norm_threshold apply to method='apg' only")
        self.method, self.apg_eta, self.apg_norm_threshold = method, _number("apg_eta", apg_eta), apg_norm_threshold
        if apg_norm_threshold is not None and _number("apg_norm_threshold", apg_norm_threshold) <= 0:
            raise ValueError(f"apg_norm_threshold must be > 0, got {apg_norm_threshold!r}")

    def _branches(self, x_t: torch.Tensor) -> dict:
        """The conditioning of the doubled batch: the conditional half first, then the unconditional."""
        labels = self._labels_for(x_t)
        null = torch.full_like(labels, self.num_classes) if self.num_classes is not None else labels
        return {"class_labels": torch.cat([labels, null])}

    def _scale_at(self, t) -> float | torch.Tensor:
        if self.interval is None:
            return self.guidance_scale
        lo, hi = self.interval
        if isinstance(t, float):
            return self.guidance_scale if lo < t <= hi else 1.0
        inside = (t > lo) & (t <= hi)
        return torch.where(inside, self.guidance_scale, 1.0)

    def _guided(self, x_t: torch.Tensor, t) -> torch.Tensor:
        both = self._inner(torch.cat([x_t, x_t]), t, **self._branches(x_t))
        x0_cond, x0_uncond = both.chunk(2)  # (B, ...) each
        t_value, alpha_t, sigma_t = self._coefficients(x_t, t)
        scale = self._scale_at(t_value)
        if isinstance(scale, torch.Tensor):  # per-example scales (a batch of times)
            scale = scale.to(x_t.dtype).reshape((-1,) + (1,) * (x_t.dim() - 1))
        if self.method == "apg":
            if isinstance(scale, torch.Tensor):
                raise ValueError("method='apg' with an interval needs one time for the whole batch")
            x0_hat = apg_combine(x0_uncond, x0_cond, scale, eta=self.apg_eta, norm_threshold=self.apg_norm_threshold)
        else:
            x0_hat = x0_uncond + scale * (x0_cond - x0_uncond)  # = cfg_combine, also per-example scales
        if self.rescale > 0.0:
            if isinstance(sigma_t, float) and sigma_t == 0.0:
                pass  # eps is undefined at sigma_t = 0; x_t is the data there
            else:
                eps_g, eps_c = (x_t - alpha_t * x0_hat) / sigma_t, (x_t - alpha_t * x0_cond) / sigma_t
                x0_hat = (x_t - sigma_t * rescale_guidance(eps_g, eps_c, self.rescale)) / alpha_t
        return self._finish(x0_hat)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(guidance_scale={self.guidance_scale}, method={self.method!r})"


class PromptGuidance(ClassifierFreeGuidance):
    r"""Classifier-free guidance for any conditioning: D(x_t, uncond) + s (D(x_t, cond) - D(x_t, uncond)).

    ``cond`` and ``uncond`` are keyword arguments of the network with the same keys, each a tensor with
    the batch B first: a caption's tokens against the empty caption's (``context``, chapter 15), an
    image prompt against none (``image_embeds``), or both at once. Everything else (the doubled batch,
    the scale conventions, rescale, interval, APG, thresholding) is :class:`ClassifierFreeGuidance`'s.
    Conditioning the denoiser already binds (a ControlNet's control) is shared by both branches.

    >>> from course_lib.networks.unet import UNet
    >>> from course_lib.parameterization import Denoiser
    >>> from course_lib.schedules import get_schedule
    >>> net = UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(0,), context_dim=8)
    >>> text, empty = torch.randn(2, 3, 8), torch.zeros(2, 3, 8)
    >>> guided = PromptGuidance(Denoiser(net, get_schedule("ddpm_linear")), {"context": text}, {"context": empty}, 4.0)
    >>> guided(torch.randn(2, 1, 8, 8), 0.5).shape
    torch.Size([2, 1, 8, 8])

    Introduced in chapter 15.
    """

    def __init__(self, denoiser, cond: dict, uncond: dict, guidance_scale: float, *, x0_range=None,
                 dynamic_threshold: float | None = None, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None, method: str = "cfg", apg_eta: float = 0.0,
                 apg_norm_threshold: float | None = None) -> None:
        _GuidedDenoiser.__init__(self, denoiser, None, x0_range=x0_range, dynamic_threshold=dynamic_threshold,
                                 prompts=True)
        if not isinstance(cond, dict) or not isinstance(uncond, dict) or not cond:
            raise ValueError(f"cond and uncond must be non-empty dicts of the network's keyword arguments, got "
                             f"{type(cond).__name__} and {type(uncond).__name__}")
        if set(cond) != set(uncond):
            raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        batch = None
        for key in cond:
            for which, value in (("cond", cond[key]), ("uncond", uncond[key])):
                if not isinstance(value, torch.Tensor) or value.ndim < 1:
                    raise ValueError(f"{which}[{key!r}] must be a tensor with the batch first, got {type(value).__name__}")
                batch = value.shape[0] if batch is None else batch
                if value.shape[0] != batch:
                    raise ValueError(f"every tensor of cond and uncond must have the same batch; {which}[{key!r}] has "
                                     f"{value.shape[0]}, another has {batch}")
            if cond[key].shape != uncond[key].shape:
                raise ValueError(f"cond[{key!r}] and uncond[{key!r}] must have the same shape, got "
                                 f"{tuple(cond[key].shape)} and {tuple(uncond[key].shape)}")
        self.cond, self.uncond, self.batch = cond, uncond, batch
        self._set_options(guidance_scale, rescale, interval, method, apg_eta, apg_norm_threshold)

    def _branches(self, x_t: torch.Tensor) -> dict:
        if x_t.shape[0] != self.batch:
            raise ValueError(f"x_t has a batch of {x_t.shape[0]} but the prompts have {self.batch}")
        return {k: torch.cat([self.cond[k].to(x_t.device), self.uncond[k].to(x_t.device)]) for k in self.cond}

    def __repr__(self) -> str:
        return f"PromptGuidance(keys={sorted(self.cond)}, guidance_scale={self.guidance_scale}, method={self.method!r})"


class ClassifierGuidance(_GuidedDenoiser):
    r"""The classifier-guided denoiser: eps_g = eps(x_t) - gamma sigma_t grad_x log p_phi(y | x_t, t).

    Dhariwal & Nichol 2021, Algorithm 2 (eps_hat - sqrt(1 - alpha_bar) s grad log p_phi); in x0_hat:
    x0_g = x0_hat + gamma sigma_t^2 / alpha_t grad_x log p_phi(y | x_t, t). The base model is the wrapped
    denoiser (for a class-conditional network: its null label, the unconditional model).

    Args:
        denoiser: the base denoiser (``x0_range=None``).
        classifier: ``classifier(x_t (B, ...), t (B,)) -> logits (B, K)``, trained on noisy x_t of the
            same schedule (:class:`~course_lib.classifier.NoisyDigitClassifier`).
        class_labels: (B,) labels in [0, K).
        scale: gamma >= 0 (Dhariwal & Nichol's s).
        x0_range / dynamic_threshold: post-processing of the guided x0_hat.
    """

    def __init__(self, denoiser, classifier, class_labels: torch.Tensor, scale: float, *, x0_range=None,
                 dynamic_threshold: float | None = None) -> None:
        super().__init__(denoiser, class_labels, x0_range=x0_range, dynamic_threshold=dynamic_threshold)
        if not callable(classifier):
            raise ValueError(f"classifier must be callable (x_t, t) -> logits, got {type(classifier).__name__}")
        self.classifier = classifier
        self.scale = _number("scale", scale, low=0.0)

    def log_prob_grad(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p_phi(y | x_t, t) for the wrapper's labels, shape of x_t."""
        labels = self._labels_for(x_t)
        t_value, _, _ = self._coefficients(x_t, t)
        t_batch = (torch.full((x_t.shape[0],), t_value, device=x_t.device, dtype=torch.float32)
                   if isinstance(t_value, float) else t_value.to(x_t.device, torch.float32))
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = self.classifier(x, t_batch)  # (B, K)
            if logits.ndim != 2 or logits.shape[0] != x_t.shape[0]:
                raise ValueError(f"the classifier must return logits of shape ({x_t.shape[0]}, K), got {tuple(logits.shape)}")
            if int(labels.max()) >= logits.shape[1]:
                raise ValueError(f"class_labels go up to {int(labels.max())} but the classifier has {logits.shape[1]} classes")
            log_p = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x)
        return grad.to(x_t.dtype)

    def _guided(self, x_t: torch.Tensor, t) -> torch.Tensor:
        x0_hat = self._inner(x_t, t)  # the base (for a conditional net: the null label)
        if self.scale == 0.0:
            return self._finish(x0_hat)
        _, alpha_t, sigma_t = self._coefficients(x_t, t)
        grad = self.log_prob_grad(x_t, t)
        return self._finish(x0_hat + self.scale * sigma_t**2 / alpha_t * grad)

    def __repr__(self) -> str:
        return f"ClassifierGuidance(scale={self.scale})"

r"""LoRA: low-rank adapters on a frozen network (chapter 14).

Hu et al. 2021 (arXiv:2106.09685), Sec. 4.1: a frozen weight W (d_out x d_in) is adapted as

    W' = W + (alpha / r) B A,    A: r x d_in,  B: d_out x r,  B = 0 at the start,

so the adapted network equals the base exactly before training, and only r (d_in + d_out) numbers per
layer are trained instead of d_in d_out. rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) scales by
alpha / sqrt(r) instead, which keeps the update's size independent of the rank. A convolution
(d_out, d_in, k, k) is adapted as peft does: A is a k x k convolution to r channels, B a 1 x 1
convolution back to d_out, so B A is again a (d_out, d_in, k, k) kernel of rank <= r.

Several named adapters can live in one layer; ``set_adapters`` mixes them with weights (the
weighted sum of their updates), ``merge_lora`` folds the active mix into W and ``unmerge_lora``
takes it out again.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
>>> names = add_lora(net, rank=2, targets=["0", "2"], generator=torch.Generator().manual_seed(0))
>>> names
['0', '2']
>>> sum(p.numel() for p in lora_parameters(net))  # 2 (8 + 8) + 2 (8 + 4)
56
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.validation import check_positive_int

__all__ = ["LoRALayer", "add_lora", "lora_parameters", "lora_state_dict", "load_lora_state_dict", "save_lora",
           "load_lora", "merge_lora", "unmerge_lora", "set_adapters", "lora_parameter_count"]

LORA_FORMAT = 1


def lora_parameter_count(layer: nn.Module, rank: int) -> int:
    """r (d_in k^2 + d_out) for a convolution with a k x k kernel, r (d_in + d_out) for a linear layer."""
    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return rank * (layer.in_channels * kh * kw + layer.out_channels)
    raise ValueError(f"LoRA adapts nn.Linear and nn.Conv2d layers, got {type(layer).__name__}")


class LoRALayer(nn.Module):
    """A frozen ``nn.Linear`` or ``nn.Conv2d`` plus named low-rank updates.

    Args:
        base: the layer to adapt (its parameters are frozen).
    Use :meth:`add_adapter` to add an adapter; the forward pass adds every active adapter's update,
    weighted by its mixing weight, unless it is merged into the base weight.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"LoRA adapts nn.Linear and nn.Conv2d layers, got {type(base).__name__}")
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise ValueError(f"LoRA on grouped convolutions is not supported (groups={base.groups})")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.config: dict[str, dict] = {}
        self.mix: dict[str, float] = {}     # active adapters and their weights
        self.merged: dict[str, float] = {}  # adapters folded into base.weight, with the weight used

    @property
    def shape(self) -> tuple[int, int]:
        if isinstance(self.base, nn.Linear):
            return self.base.in_features, self.base.out_features
        return self.base.in_channels, self.base.out_channels

    def add_adapter(self, name: str, rank: int, alpha: float | None = None, *, rslora: bool = False,
                    generator: torch.Generator | None = None) -> None:
        """Add adapter ``name`` of rank ``rank`` (alpha default: rank, i.e. scaling 1 for plain LoRA)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter name must be an identifier string, got {name!r}")
        if name in self.config:
            raise ValueError(f"adapter {name!r} already exists in this layer")
        check_positive_int("rank", rank)
        d_in, d_out = self.shape
        fan_in = d_in * (self.base.kernel_size[0] * self.base.kernel_size[1] if isinstance(self.base, nn.Conv2d) else 1)
        if rank > min(fan_in, d_out):
            raise ValueError(f"rank must be at most min(d_in, d_out) = {min(fan_in, d_out)} for this layer "
                             f"(d_in = {fan_in}, d_out = {d_out}), got {rank}")
        alpha = float(rank if alpha is None else alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        weight = self.base.weight
        if isinstance(self.base, nn.Linear):
            a = torch.empty(rank, d_in, dtype=weight.dtype)
            b = torch.zeros(d_out, rank, dtype=weight.dtype)
        else:
            kh, kw = self.base.kernel_size
            a = torch.empty(rank, d_in, kh, kw, dtype=weight.dtype)
            b = torch.zeros(d_out, rank, 1, 1, dtype=weight.dtype)
        # A as nn.Linear / nn.Conv2d initialise their weights (Kaiming uniform, a = sqrt(5)): bound 1/sqrt(fan_in)
        bound = 1.0 / math.sqrt(fan_in)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A[name] = nn.Parameter(a.to(weight.device))
        self.lora_B[name] = nn.Parameter(b.to(weight.device))
        self.config[name] = {"rank": rank, "alpha": alpha, "rslora": bool(rslora)}
        self.mix[name] = 1.0

    def scaling(self, name: str) -> float:
        c = self.config[name]
        return c["alpha"] / (math.sqrt(c["rank"]) if c["rslora"] else c["rank"])

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update (alpha / r) B A in the base weight's shape."""
        a, b = self.lora_A[name], self.lora_B[name]
        if isinstance(self.base, nn.Linear):
            delta = b @ a
        else:  # (d_out, r, 1, 1) x (r, d_in, k, k) -> (d_out, d_in, k, k)
            delta = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
        return delta * self.scaling(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for name, w in self.mix.items():
            if w == 0.0 or name in self.merged:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            if isinstance(self.base, nn.Linear):
                update = F.linear(F.linear(x, a), b)
            else:
                conv = self.base
                update = F.conv2d(F.conv2d(x, a, None, conv.stride, conv.padding, conv.dilation), b)
            out = out + (w * self.scaling(name)) * update
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={c['rank']}, alpha={c['alpha']:g}{', rs' if c['rslora'] else ''}"
                         for n, c in self.config.items())


def _lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def add_lora(model: nn.Module, rank: int, targets: Sequence[str], *, alpha: float | None = None,
             adapter: str = "default", rslora: bool = False, generator: torch.Generator | None = None) -> list[str]:
    """Freeze ``model`` and add adapter ``adapter`` to every nn.Linear / nn.Conv2d whose qualified name
    ends with one of ``targets`` (e.g. ``["to_q", "to_k", "to_v", "to_out"]``). Returns the adapted names.

    A layer already wrapped gets the new adapter beside its others. A ValueError names the adaptable
    layers when no target matches.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of layer-name suffixes, got {targets!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = _lora_layers(model)
    inside = {n + ".base" for n in wrapped}
    candidates = {name: m for name, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d)) and name not in inside}
    matches = lambda name: any(name == t or name.endswith("." + t) for t in targets)
    chosen = [n for n in list(wrapped) + [c for c in candidates if c not in wrapped] if matches(n)]
    if not chosen:
        adaptable = sorted(set(candidates) | set(wrapped))
        raise ValueError(f"no layer matches targets {list(targets)}; adaptable layers: {adaptable[:20]}"
                         + (" ..." if len(adaptable) > 20 else ""))
    for name in chosen:
        layer = wrapped.get(name)
        if layer is None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = LoRALayer(getattr(parent, child))
            setattr(parent, child, layer)
        layer.add_adapter(adapter, rank, alpha, rslora=rslora, generator=generator)
    return chosen


def lora_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    """The A and B parameters of every adapter (or of one), in a fixed order."""
    out = []
    for layer in _lora_layers(model).values():
        for name in layer.config:
            if adapter is None or name == adapter:
                out += [layer.lora_A[name], layer.lora_B[name]]
    if adapter is not None and not out:
        raise ValueError(f"the model has no adapter named {adapter!r}")
    return out


def set_adapters(model: nn.Module, weights: dict[str, float]) -> None:
    """Activate adapters with mixing weights, e.g. ``{"style": 0.7, "digit": 0.3}``; others are switched off."""
    layers = _lora_layers(model)
    known = {n for layer in layers.values() for n in layer.config}
    unknown = set(weights) - known
    if unknown:
        raise ValueError(f"unknown adapter(s) {sorted(unknown)}; the model has {sorted(known)}")
    for layer in layers.values():
        if layer.merged:
            raise ValueError("unmerge_lora(model) before changing the adapter mix")
        layer.mix = {n: float(w) for n, w in weights.items() if n in layer.config}


def merge_lora(model: nn.Module) -> None:
    """Fold the active adapters (with their mixing weights) into the base weights."""
    for layer in _lora_layers(model).values():
        with torch.no_grad():
            for name, w in layer.mix.items():
                if name not in layer.merged and w != 0.0:
                    layer.base.weight += w * layer.delta_weight(name).to(layer.base.weight.dtype)
                    layer.merged[name] = w


def unmerge_lora(model: nn.Module) -> None:
    """Take merged adapters out of the base weights again."""
    for layer in _lora_layers(model).values():
        with torch.no_grad():
            for name, w in list(layer.merged.items()):
                layer.base.weight -= w * layer.delta_weight(name).to(layer.base.weight.dtype)
                del layer.merged[name]


def lora_state_dict(model: nn.Module, adapter: str = "default") -> dict:
    """The adapter's own tensors and configuration (nothing of the base model)."""
    tensors, config = {}, None
    for lname, layer in _lora_layers(model).items():
        if adapter in layer.config:
            tensors[f"{lname}.A"] = layer.lora_A[adapter].detach().cpu().clone()
            tensors[f"{lname}.B"] = layer.lora_B[adapter].detach().cpu().clone()
            config = layer.config[adapter] if config is None else config
    if not tensors:
        raise ValueError(f"the model has no adapter named {adapter!r}")
    return {"format": LORA_FORMAT, "adapter": adapter, "config": dict(config),
            "targets": sorted({k.rsplit(".", 1)[0] for k in tensors}), "tensors": tensors}


def load_lora_state_dict(model: nn.Module, state: dict, adapter: str | None = None) -> list[str]:
    """Add the adapter saved in ``state`` to ``model`` (a model of the same architecture)."""
    if not isinstance(state, dict) or state.get("format") != LORA_FORMAT or "tensors" not in state:
        raise ValueError(f"not a course LoRA adapter (format {LORA_FORMAT}): keys {sorted(state)[:6] if isinstance(state, dict) else type(state).__name__}")
    name = adapter or state["adapter"]
    cfg = state["config"]
    names = add_lora(model, cfg["rank"], state["targets"], alpha=cfg["alpha"], adapter=name, rslora=cfg["rslora"])
    layers = _lora_layers(model)
    if sorted(names) != sorted(state["targets"]):
        raise ValueError(f"the adapter targets {state['targets']} but the model matched {names}")
    with torch.no_grad():
        for lname in state["targets"]:
            a, b = state["tensors"][f"{lname}.A"], state["tensors"][f"{lname}.B"]
            layer = layers[lname]
            if a.shape != layer.lora_A[name].shape or b.shape != layer.lora_B[name].shape:
                raise ValueError(f"adapter tensors for {lname} have shapes {tuple(a.shape)}, {tuple(b.shape)}; "
                                 f"the model needs {tuple(layer.lora_A[name].shape)}, {tuple(layer.lora_B[name].shape)}")
            layer.lora_A[name].copy_(a)
            layer.lora_B[name].copy_(b)
    return names


def save_lora(model: nn.Module, path: str | Path, adapter: str = "default") -> Path:
    """Write the adapter alone to ``path`` atomically (a temporary file, then a rename)."""
    from course_lib.zoo.cache import atomic_save

    path = Path(path)
    atomic_save(lora_state_dict(model, adapter), path)
    return path


def load_lora(model: nn.Module, path: str | Path, adapter: str | None = None) -> list[str]:
    """Load an adapter written by :func:`save_lora` (``weights_only`` loading) into ``model``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    return load_lora_state_dict(model, state, adapter)

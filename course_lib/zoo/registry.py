r"""The zoo's registry: every recipe by name, and :func:`load`, which trains a recipe once and caches it.

A *recipe* (:class:`Recipe`) is a configuration (architecture, schedule, training steps from the
profile, seed) and a training function. The stage modules (``stage1.py``, ``stage2.py``, ...)
:func:`register` theirs; :data:`SAMPLE_SETS` holds cached reference samples
(:func:`register_sample_set`). :func:`load` reads a model from the cache
(:mod:`course_lib.zoo.cache`) or trains it: the cache folder is checked for writability before
training, a second process needing the same missing model waits for the first and loads its
file, weights that are not finite are neither loaded nor written, and a failed write warns and
returns the trained model.

Introduced in chapter 00.

>>> get_recipe("stable_diffusion")
Traceback (most recent call last):
...
ValueError: unknown zoo model 'stable_diffusion'; expected one of [...]
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from course_lib import __version__
from course_lib.profiles import Profile, current_profile
from . import cache, progress as _progress

__all__ = ["RECIPES", "Recipe", "SAMPLE_SETS", "ZooEntry", "build", "cache_path", "get_recipe", "load", "pretrained",
           "pretrained_denoiser", "register", "register_sample_set", "sample_set", "schedule_from_config"]


@dataclass(frozen=True)
class Recipe:
    """How to build and train one zoo model.

    ``config(profile)`` returns a JSON-able dict that fully determines the weights;
    ``build(config)`` returns the untrained module; ``fit(model, config, progress)`` trains it
    and returns (trained module, metrics dict). ``kind`` is "denoiser" (a diffusion network with
    ``schedule`` / ``prediction`` in its config), "classifier", "consistency" or "autoencoder".
    """

    name: str
    kind: str
    config: Callable[[Profile], dict]
    build: Callable[[dict], nn.Module]
    fit: Callable[[nn.Module, dict, bool], tuple]
    description: str = ""


RECIPES: dict[str, Recipe] = {}
# Sample sets: expensive reference samples, cached like models (name -> (config, compute)).
SAMPLE_SETS: dict[str, tuple[Callable[[Profile], dict], Callable[[dict, Profile], torch.Tensor]]] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` under its name (a stage module calls this once per model)."""
    if not isinstance(recipe, Recipe):
        raise ValueError(f"register expects a Recipe, got {type(recipe).__name__}")
    if recipe.name in RECIPES or recipe.name in SAMPLE_SETS:
        raise ValueError(f"zoo model {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def register_sample_set(name: str, config: Callable[[Profile], dict],
                        compute: Callable[[dict, Profile], torch.Tensor]) -> None:
    """Add the reference-sample set ``name`` (its configuration and how to compute it) to :data:`SAMPLE_SETS`."""
    if name in SAMPLE_SETS or name in RECIPES:
        raise ValueError(f"zoo name {name!r} is registered twice")
    SAMPLE_SETS[name] = (config, compute)


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; a ValueError lists the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown zoo model {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def schedule_from_config(config: dict):
    """The noise schedule a recipe's config names (``schedule``, ``schedule_params``)."""
    from course_lib.schedules import get_schedule

    return get_schedule(config["schedule"], **config.get("schedule_params", {}))


def cache_path(name: str, profile: Profile | None = None) -> Path:
    """Where the weights of ``name`` under ``profile`` live: ``<cache>/<name>-<config hash>.pt``."""
    recipe = get_recipe(name)
    config = recipe.config(profile or current_profile())
    return cache.cache_dir() / f"{name}-{cache.config_key(name, config)}.pt"


@dataclass
class ZooEntry:
    """A loaded zoo model with its recipe configuration and training metrics."""

    name: str
    model: nn.Module
    config: dict
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    trained_now: bool = False


def _load_into(path: Path, name: str, config: dict, model: nn.Module) -> dict | None:
    """Cached weights into ``model``; their metrics, or None when absent or unusable."""
    blob = cache.read_blob(path, name, config, stacklevel=5)
    if blob is None:
        return None
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except Exception as err:
        warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); retraining",
                      stacklevel=4)
        return None
    return dict(blob.get("metrics", {}))


def _train(recipe: Recipe, model: nn.Module, config: dict, path: Path, progress: bool, save: bool):
    """Train ``model`` with the recipe, refuse non-finite weights, write the file (or warn)."""
    name = recipe.name
    if progress:
        print(f"zoo: training {name!r} ({recipe.description}); cached afterwards in {path}", file=sys.stderr)
    with _progress.Tracker(name, cache.progress_path(path) if save else None):
        trained, metrics = recipe.fit(model, config, progress)
    model = trained.to("cpu")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = cache.nonfinite(state)
    if bad:
        raise FloatingPointError(f"zoo: training {name!r} gave non-finite weights ({', '.join(bad[:3])}); "
                                 "nothing was cached")
    if save:
        cache.save_or_warn({"name": name, "config": config, "state_dict": state, "metrics": metrics,
                            "version": __version__, "torch": str(torch.__version__)}, path, f"the model {name!r}")
    return model, metrics


def load(name: str, *, profile: Profile | None = None, rebuild: bool = False, progress: bool = True,
         device: torch.device | str | None = None) -> ZooEntry:
    """Load ``name`` from the cache, training and caching it first when needed.

    Args:
        name: a key of :data:`RECIPES`.
        profile: the profile whose sizes the recipe uses (default: ``$COURSE_PROFILE``).
        rebuild: train even when a usable file exists.
        progress: show training progress (and, when another process is building the model, its
            progress while waiting).
        device: where the returned model lives (default: :func:`course_lib.device.default_device`).

    Introduced in chapter 00.
    """
    recipe = get_recipe(name)
    profile = profile or current_profile()
    config = recipe.config(profile)
    path = cache_path(name, profile)

    def fresh() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the initial weights come from the recipe's seed
            torch.manual_seed(int(config.get("seed", 0)))
            return recipe.build(config)

    model = fresh()
    metrics = None if rebuild else _load_into(path, name, config, model)
    trained_now = metrics is None
    if trained_now:
        problem = cache.writable(path.parent)
        if problem:
            warnings.warn(f"zoo: the cache folder {path.parent} is not writable ({problem}); {name!r} will be "
                          "trained but not cached (set COURSE_CACHE_DIR to a writable folder)", stacklevel=2)
        display = _progress.current_display() or (_progress.Display() if progress else None)
        follower = _progress.follow(name, display)
        lock = cache.build_lock(path, repr(name), on_wait=follower) if not problem else contextlib.nullcontext(False)
        with lock as waited:
            follower.done()
            if waited and not rebuild:  # the other process has just written it
                model = fresh()
                metrics = _load_into(path, name, config, model)
                trained_now = metrics is None
            if trained_now:
                model, metrics = _train(recipe, fresh(), config, path, progress, save=not problem)
    if device is None:
        from course_lib.device import default_device

        device = default_device()
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return ZooEntry(name, model, config, metrics, path, trained_now)


def pretrained(name: str, **kwargs) -> nn.Module:
    """The trained network ``name`` (eval mode, frozen), trained and cached on first use.

    >>> "digits_unet" in RECIPES
    True
    """
    return load(name, **kwargs).model


def pretrained_denoiser(name: str, **kwargs):
    """A :class:`~course_lib.parameterization.Denoiser` around the zoo network ``name``.

    Image models clip x0_hat to the data range [-1, 1] (as DDPM's released code does).
    """
    from course_lib.parameterization import Denoiser

    recipe = get_recipe(name)
    if recipe.kind != "denoiser":
        raise ValueError(f"zoo model {name!r} is a {recipe.kind}, not a diffusion denoiser")
    entry = load(name, **kwargs)
    if "x0_range" in entry.config:  # a recipe may say so itself, e.g. latents have no fixed range (chapter 11)
        x0_range = None if entry.config["x0_range"] is None else tuple(entry.config["x0_range"])
    else:
        x0_range = (-1.0, 1.0) if entry.config["net"] == "UNet" else None
    return Denoiser(entry.model, schedule_from_config(entry.config), entry.config["prediction"], x0_range=x0_range)


def sample_set(name: str, *, profile: Profile | None = None) -> torch.Tensor:
    """Reference samples ``name`` of ``SAMPLE_SETS`` (e.g. 1,000-step ancestral samples of the digit
    U-Net), computed on first use and cached with :func:`cached_tensor`. Shape (n, C, H, W), CPU."""
    if name not in SAMPLE_SETS:
        raise ValueError(f"unknown sample set {name!r}; expected one of {sorted(SAMPLE_SETS)}")
    profile = profile or current_profile()
    config_fn, compute_fn = SAMPLE_SETS[name]
    config = config_fn(profile)
    return cache.cached_tensor(name, config, lambda: compute_fn(config, profile))


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(names=None, *, profile: Profile | None = None, progress: bool = False,
          on_row: Callable[[dict], object] | None = None) -> list[dict]:
    """Train (or load) several zoo models; returns one row per model, each passed to ``on_row`` as it is done.

    A row: ``name``, ``trained_now`` (None for a sample set), ``parameters``, ``seconds``
    (wall-clock, waiting included), ``metrics`` and ``file``.
    """
    rows = []
    for name in names or sorted(RECIPES) + sorted(SAMPLE_SETS):
        start = time.perf_counter()
        if name in SAMPLE_SETS:
            tensor = sample_set(name, profile=profile)
            row = {"name": name, "trained_now": None, "parameters": None, "seconds": time.perf_counter() - start,
                   "metrics": {"shape": "x".join(map(str, tensor.shape))}, "file": None}
        else:
            entry = load(name, profile=profile, progress=progress, device="cpu")
            row = {"name": name, "trained_now": entry.trained_now, "parameters": _count_parameters(entry.model),
                   "seconds": time.perf_counter() - start, "metrics": entry.metrics, "file": entry.path.name}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows

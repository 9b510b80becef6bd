r"""The course's model zoo: ``pretrained(name)`` trains on first use and caches (chapter 00).

Later chapters reuse models trained by earlier ones without retraining. Every model
has a *recipe*: a configuration (architecture, schedule, training steps from the
profile, seed) and a training function. The cache file name is the recipe name plus a
hash of its configuration and the course version, so a changed recipe never loads old
weights. Files are written atomically (temporary file + ``os.replace``), loaded with
``torch.load(weights_only=True)`` (no pickle code execution), checked against their
configuration, and rebuilt (not crashed on) when corrupt.

Cache folder: ``$COURSE_CACHE_DIR`` if set, else ``.model_cache/`` in the course checkout
(when the package runs from one), else ``~/.cache/diffusion-course``. The test command
sets ``COURSE_CACHE_DIR`` inside the checkout, so tests always train what they test.

Command line: ``python -m course_lib.zoo build [NAME ...]`` trains (or loads) the zoo and
prints a table; ``python -m course_lib.zoo list``.

>>> sorted(RECIPES)[:2]
['ddpm_eight_gaussians', 'ddpm_moons']
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import __version__
from .profiles import Profile, current_profile

__all__ = ["RECIPES", "Recipe", "cache_dir", "cache_path", "pretrained", "pretrained_denoiser", "build",
           "cached_tensor", "ZOO_FORMAT"]

ZOO_FORMAT = 1  # bump when the file layout changes


@dataclass(frozen=True)
class Recipe:
    """How to build and train one zoo model.

    ``config(profile)`` returns a JSON-able dict that fully determines the weights;
    ``build(config)`` returns the untrained module; ``fit(model, config, progress)`` trains it
    and returns (trained module, metrics dict). ``kind`` is "denoiser" (a diffusion network with
    ``schedule`` / ``prediction`` in its config) or "classifier".
    """

    name: str
    kind: str
    config: Callable[[Profile], dict]
    build: Callable[[dict], nn.Module]
    fit: Callable[[nn.Module, dict, bool], tuple]
    description: str = ""


# ------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------
def _schedule_from_config(config: dict):
    from .schedules import get_schedule

    return get_schedule(config["schedule"], **config.get("schedule_params", {}))


def _toy_config(name: str) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        return {
            "data": name, "n_data": 20000, "net": "TimeMLP", "net_params": {"dim": 2, "hidden": 128, "depth": 3},
            "schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
            "steps": profile.toy_train_steps, "batch_size": profile.toy_batch_size, "lr": 2e-3,
            "ema_decay": 0.995, "seed": 0,
        }
    return config


def _build_mlp(config: dict) -> nn.Module:
    from .networks.mlp import TimeMLP

    return TimeMLP(**config["net_params"])


def _fit_denoiser(model: nn.Module, config: dict, progress: bool, data: torch.Tensor, **cond_keys):
    from .losses import diffusion_loss
    from .parameterization import Denoiser
    from .training import train

    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        if isinstance(batch, (tuple, list)):
            x0, labels = batch
            return diffusion_loss(denoiser, x0, generator=generator, class_labels=labels)
        return diffusion_loss(denoiser, batch, generator=generator)

    result = train(model, loss_fn, data, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                   seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    tail = result.losses[-50:]
    return result.ema_model, {"final_loss": sum(tail) / len(tail), "seconds": result.seconds,
                              "steps": result.steps_done, "losses": [float(v) for v in result.losses[::10]]}


def _fit_toy(model, config, progress):
    from .data.toy2d import toy2d

    data = toy2d(config["data"], config["n_data"], generator=torch.Generator().manual_seed(config["seed"] + 1))
    return _fit_denoiser(model, config, progress, data)


def _digits_config(profile: Profile) -> dict:
    return {
        "data": "digits/train", "net": "UNet",
        "net_params": {"in_channels": 1, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1,
                       "attention_levels": [1]},
        "schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
        "steps": profile.digits_train_steps, "batch_size": profile.digits_batch_size, "lr": 2e-3,
        "ema_decay": 0.995, "seed": 0,
    }


def _build_unet(config: dict) -> nn.Module:
    from .networks.unet import UNet

    params = dict(config["net_params"])
    for key in ("channel_mults", "attention_levels"):
        params[key] = tuple(params[key])
    return UNet(**params)


def _fit_digits(model, config, progress):
    from .data.digits import digits

    images, _ = digits("train")
    return _fit_denoiser(model, config, progress, images)


def _classifier_config(profile: Profile) -> dict:
    return {"net": "DigitClassifier", "steps": profile.classifier_steps, "seed": 0}


def _build_classifier(config: dict) -> nn.Module:
    from .classifier import DigitClassifier

    return DigitClassifier()


def _fit_classifier(model, config, progress):
    from .classifier import train_digit_classifier

    start = time.perf_counter()
    trained, accuracy = train_digit_classifier(steps=config["steps"], seed=config["seed"])
    return trained, {"test_accuracy": accuracy, "seconds": time.perf_counter() - start}


RECIPES: dict[str, Recipe] = {
    "digit_classifier": Recipe("digit_classifier", "classifier", _classifier_config, _build_classifier,
                               _fit_classifier, "CNN digit classifier for scoring samples (metrics, chapter 03)"),
    "digits_unet": Recipe("digits_unet", "denoiser", _digits_config, _build_unet, _fit_digits,
                          "eps-prediction U-Net on 8x8 digits, DDPM linear schedule (chapter 03)"),
}
for _toy in ("moons", "eight_gaussians", "swiss_roll"):
    RECIPES[f"ddpm_{_toy}"] = Recipe(f"ddpm_{_toy}", "denoiser", _toy_config(_toy), _build_mlp, _fit_toy,
                                     f"eps-prediction MLP on 2-D {_toy}, DDPM linear schedule (chapter 02)")


# ------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The cache folder (see the module docstring); created if missing."""
    env = os.environ.get("COURSE_CACHE_DIR", "").strip()
    if env:
        path = Path(env)
    else:
        repo = Path(__file__).resolve().parent.parent
        path = repo / ".model_cache" if (repo / "book.toml").exists() else Path.home() / ".cache" / "diffusion-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown zoo model {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def _config_key(name: str, config: dict) -> str:
    blob = json.dumps({"name": name, "config": config, "version": __version__, "format": ZOO_FORMAT},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(name: str, profile: Profile | None = None) -> Path:
    """Where the weights of ``name`` under ``profile`` live: ``<cache>/<name>-<config hash>.pt``."""
    recipe = _get_recipe(name)
    config = recipe.config(profile or current_profile())
    return cache_dir() / f"{name}-{_config_key(name, config)}.pt"


def _atomic_save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is readable like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _try_load(path: Path, name: str, config: dict, model: nn.Module):
    """Load cached weights into model; return metrics, or None when absent or unusable."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("name") != name or blob.get("config") != config:
            raise ValueError("the file's recipe does not match")
        model.load_state_dict(blob["state_dict"], strict=True)
        return dict(blob.get("metrics", {}))
    except Exception as err:  # a corrupt or foreign file is rebuilt, never trusted
        warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); retraining",
                      stacklevel=3)
        return None


@dataclass
class ZooEntry:
    """A loaded zoo model with its recipe configuration and training metrics."""

    name: str
    model: nn.Module
    config: dict
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    trained_now: bool = False


def load(name: str, *, profile: Profile | None = None, rebuild: bool = False, progress: bool = True,
         device: torch.device | str | None = None) -> ZooEntry:
    """Load ``name`` from the cache, training and caching it first when needed."""
    recipe = _get_recipe(name)
    profile = profile or current_profile()
    config = recipe.config(profile)
    path = cache_path(name, profile)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the recipe's seed
        torch.manual_seed(int(config.get("seed", 0)))
        model = recipe.build(config)
    metrics = None if rebuild else _try_load(path, name, config, model)
    trained_now = metrics is None
    if trained_now:
        if progress:
            print(f"zoo: training {name!r} ({recipe.description}); cached afterwards in {path}", file=sys.stderr)
        trained, metrics = recipe.fit(model, config, progress)
        model = trained.to("cpu")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_save({"name": name, "config": config, "state_dict": state, "metrics": metrics,
                      "version": __version__, "torch": str(torch.__version__)}, path)
    if device is None:
        from .device import default_device

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
    from .parameterization import Denoiser

    recipe = _get_recipe(name)
    if recipe.kind != "denoiser":
        raise ValueError(f"zoo model {name!r} is a {recipe.kind}, not a diffusion denoiser")
    entry = load(name, **kwargs)
    x0_range = (-1.0, 1.0) if entry.config["net"] == "UNet" else None
    return Denoiser(entry.model, _schedule_from_config(entry.config), entry.config["prediction"], x0_range=x0_range)


def cached_tensor(name: str, config: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor computed once and cached like the models (samples of an expensive sampler, say).

    The file is ``<cache>/<name>-<hash of config>.pt``, written atomically and loaded with
    ``weights_only=True``; a corrupt file or one for another configuration is recomputed.
    ``config`` must be JSON-able and must determine the result (include the seed, the
    sampler and the model's zoo name and profile).

    Args:
        name: a short name for the file.
        config: the JSON-able description of what ``compute`` returns.
        compute: called without arguments when the cache has no usable file.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty file-name-safe string, got {name!r}")
    try:
        key = _config_key(name, config)
    except TypeError as err:
        raise ValueError(f"config must be JSON-able: {err}") from None
    path = cache_dir() / f"{name}-{key}.pt"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("name") != name or blob.get("config") != config:
                raise ValueError("the file's configuration does not match")
            if not isinstance(blob.get("tensor"), torch.Tensor):
                raise ValueError("the file holds no tensor")
            return blob["tensor"]
        except Exception as err:
            warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); recomputing",
                          stacklevel=2)
    tensor = compute()
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"compute() must return a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().cpu().contiguous()
    _atomic_save({"name": name, "config": config, "tensor": tensor, "version": __version__}, path)
    return tensor


def _digits_ddpm1000_config(profile: Profile) -> dict:
    return {"model": "digits_unet", "model_file": cache_path("digits_unet", profile).name, "sampler": "ddpm",
            "grid": ["ddpm_grid", 1000, 1000, "trailing"], "n": profile.digits_n_samples, "batch_size": 250,
            "seed": 0}


def _digits_ddpm1000_compute(config: dict, profile: Profile) -> torch.Tensor:
    from .samplers import ddpm_step, prior_sample, sample
    from .time_grids import ddpm_grid

    denoiser = pretrained_denoiser(config["model"], profile=profile)
    device = next(denoiser.net.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    grid = ddpm_grid(*config["grid"][1:])
    out = []
    for start in range(0, config["n"], config["batch_size"]):
        b = min(config["batch_size"], config["n"] - start)
        x_T = prior_sample(denoiser.schedule, (b, 1, 8, 8), generator=generator, device=device)
        out.append(sample(denoiser, x_T, grid, ddpm_step, generator=generator).cpu())
    return torch.cat(out)


# Sample sets: expensive reference samples, cached like models (name -> (config, compute)).
SAMPLE_SETS: dict[str, tuple[Callable[[Profile], dict], Callable[[dict, Profile], torch.Tensor]]] = {
    "digits_unet_ddpm1000": (_digits_ddpm1000_config, _digits_ddpm1000_compute),
}


def sample_set(name: str, *, profile: Profile | None = None) -> torch.Tensor:
    """Reference samples ``name`` of ``SAMPLE_SETS`` (e.g. 1,000-step ancestral samples of the digit
    U-Net), computed on first use and cached with :func:`cached_tensor`. Shape (n, C, H, W), CPU."""
    if name not in SAMPLE_SETS:
        raise ValueError(f"unknown sample set {name!r}; expected one of {sorted(SAMPLE_SETS)}")
    profile = profile or current_profile()
    config_fn, compute_fn = SAMPLE_SETS[name]
    config = config_fn(profile)
    return cached_tensor(name, config, lambda: compute_fn(config, profile))


def build(names=None, *, profile: Profile | None = None, progress: bool = False) -> list[dict]:
    """Train (or load) several zoo models; returns one row per model."""
    rows = []
    for name in names or sorted(RECIPES) + sorted(SAMPLE_SETS):
        start = time.perf_counter()
        if name in SAMPLE_SETS:
            tensor = sample_set(name, profile=profile)
            rows.append({"name": name, "trained_now": None, "seconds": time.perf_counter() - start,
                         "metrics": {"shape": "x".join(map(str, tensor.shape))}, "file": None})
            continue
        entry = load(name, profile=profile, progress=progress, device="cpu")
        rows.append({"name": name, "trained_now": entry.trained_now, "seconds": time.perf_counter() - start,
                     "metrics": entry.metrics, "file": entry.path.name})
    return rows


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "list"):
        print("usage: python -m course_lib.zoo build [NAME ...] | list  (NAME: a model or a sample set)",
              file=sys.stderr)
        return 2
    if argv[0] == "list":
        for name, recipe in sorted(RECIPES.items()):
            print(f"{name:22s} {recipe.description}")
        for name in sorted(SAMPLE_SETS):
            print(f"{name:22s} cached reference samples")
        return 0
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    profile = current_profile()
    print(f"zoo: profile {profile.name}, cache {cache_dir()}")
    print("| model | trained now | seconds | metrics |\n|---|---|---|---|")
    for row in build(argv[1:] or None, profile=profile):
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row["metrics"].items() if not isinstance(v, list))
        print(f"| {row['name']} | {row['trained_now']} | {row['seconds']:.1f} | {metrics} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))

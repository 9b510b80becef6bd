r"""Stage 2 (chapters 04-07) adds no model, only a cached reference sample set of the digit U-Net.

``digits_unet_ddpm1000``: 1,000-step DDPM ancestral samples of ``digits_unet`` (chapters 05 and
07 compare fast samplers against them), computed once and cached with
:func:`~course_lib.zoo.cache.cached_tensor`.

>>> "digits_unet_ddpm1000" in SAMPLE_SETS
True
"""

from __future__ import annotations

import torch

from course_lib.profiles import Profile

from .registry import SAMPLE_SETS, cache_path, pretrained_denoiser, register_sample_set

__all__: list[str] = []


def _digits_ddpm1000_config(profile: Profile) -> dict:
    return {"model": "digits_unet", "model_file": cache_path("digits_unet", profile).name, "sampler": "ddpm",
            "grid": ["ddpm_grid", 1000, 1000, "trailing"], "n": profile.digits_n_samples, "batch_size": 250,
            "seed": 0}


def _digits_ddpm1000_compute(config: dict, profile: Profile) -> torch.Tensor:
    from course_lib.samplers import ddpm_step, prior_sample, sample
    from course_lib.time_grids import ddpm_grid

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


register_sample_set("digits_unet_ddpm1000", _digits_ddpm1000_config, _digits_ddpm1000_compute)

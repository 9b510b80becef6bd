"""Which lever makes the latent shapes model good: training length, batch, EMA, width, conditioning, sampler.

Usage (one or two torch threads; about 35 minutes for the full set; the zoo's classroom ``shapes_vae``
and ``shapes_classifier`` are loaded, trained first if not cached):

    python benchmarks/shapes_levers.py [--only NAME ...] [--write benchmarks/shapes_levers.md]

Each variant trains chapter 11's latent U-Net (on the zoo VAE's scaled latents of the 8,000 training
shapes) from the same seed with one setting changed, draws 500 samples with DDIM (25 uniform steps)
from one fixed noise, decodes them and scores them with ``shapes_classifier``: the Fréchet distance
in its features to 500 test shapes (real vs real: about 3.5), the mean confidence, the class shares
(circle, square, triangle, cross) and the share of foreground pixels on the six-colour palette
(``palette_fraction``). Conditional variants (the shape as a class label, label dropout p_uncond)
are scored unconditionally (the null label), conditionally at s = 1 with the labels cycling, and with
classifier-free guidance at s = 2 and 3.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

VARIANTS = {  # name: changes to chapter 11's original recipe (1,500 steps of batch 64, unconditional)
    "original (1500 x 64)": {"steps": 1500, "batch_size": 64},
    "4x steps (6000 x 64)": {"steps": 6000, "batch_size": 64},
    "4x steps, EMA 0.999": {"steps": 6000, "batch_size": 64, "ema_decay": 0.999},
    "2x width (base 64)": {"steps": 1500, "batch_size": 64, "base_channels": 64},
    "batch 256 (1500 x 256)": {"steps": 1500, "batch_size": 256},
    "3000 x 256": {"steps": 3000, "batch_size": 256},
    "3000 x 256, conditional": {"steps": 3000, "batch_size": 256, "num_classes": 4, "p_uncond": 0.2},
    "750 x 1024, conditional": {"steps": 750, "batch_size": 1024, "num_classes": 4, "p_uncond": 0.2},
    "1500 x 256, conditional": {"steps": 1500, "batch_size": 256, "num_classes": 4, "p_uncond": 0.2},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="variant names to run (default: all)")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)

    from course_lib import zoo
    from course_lib.autoencoder import LatentSpace
    from course_lib.conditioning import ClassifierFreeGuidance
    from course_lib.data.shapes import palette_fraction, shapes
    from course_lib.metrics import frechet_distance
    from course_lib.parameterization import Denoiser
    from course_lib.profiles import get_profile
    from course_lib.samplers import ddim_step, prior_sample, sample
    from course_lib.shape_classifier import evaluate_shape_samples, shape_test_set
    from course_lib.time_grids import uniform_grid
    from course_lib.zoo import stage3
    from course_lib.zoo.registry import schedule_from_config
    from course_lib.zoo.stage1 import _build_unet, _fit_denoiser

    profile = get_profile("classroom")
    vae = zoo.load("shapes_vae", profile=profile, device="cpu", progress=False)
    space = LatentSpace(vae.model, vae.metrics["scale_factor"])
    classifier = zoo.pretrained("shapes_classifier", profile=profile, device="cpu", progress=False)
    n = 500
    test_x, _ = shape_test_set()
    feats_test = evaluate_shape_samples(classifier, test_x)["features"][:n]
    base = stage3._shapes_latent_config(profile)
    data = stage3._shapes_batch(base)
    latents = stage3._shapes_latents(vae.model, vae.metrics["scale_factor"], data.images, base["latent_seed"])

    def score(images):
        s = evaluate_shape_samples(classifier, images.clamp(-1, 1))
        return {"FD": frechet_distance(s["features"], feats_test), "conf": s["mean_confidence"],
                "classes": [round(float(v), 3) for v in s["class_histogram"]], "palette": palette_fraction(images)}

    rows = [("real shapes", "", score(shapes(n, generator=torch.Generator().manual_seed(123)).images))]
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        config = copy.deepcopy(base)
        net_params = {k: v for k, v in config["net_params"].items() if k != "num_classes"}
        for key in ("base_channels", "num_classes"):
            if key in change:
                net_params[key] = change[key]
        config["net_params"] = net_params
        config.update({k: v for k, v in change.items() if k not in ("base_channels", "num_classes")})
        config.setdefault("p_uncond", 0.0)
        if "p_uncond" not in change:
            config["p_uncond"] = 0.0
        torch.manual_seed(0)
        model = _build_unet(config)
        conditional = "num_classes" in change
        train_data = (latents, data.labels) if conditional else latents
        start = time.perf_counter()
        net, _ = _fit_denoiser(model, config, False, train_data)
        seconds = time.perf_counter() - start
        schedule = schedule_from_config(config)
        z_t = prior_sample(schedule, (n, 4, 4, 4), generator=torch.Generator().manual_seed(0))
        labels = torch.arange(n) % 4
        runs = {"unconditional": Denoiser(net.eval(), schedule, "eps")}
        if conditional:
            runs["s = 1"] = Denoiser(net, schedule, "eps", class_labels=labels)
            for s in (2.0, 3.0):
                runs[f"CFG s = {s:g}"] = ClassifierFreeGuidance(Denoiser(net, schedule, "eps"), labels, s)
        for how, den in runs.items():
            with torch.no_grad():
                images = space.decode(sample(den, z_t, uniform_grid(25), ddim_step)).cpu()
            rows.append((name, f"{how}; {seconds:.0f} s", score(images)))
            print(rows[-1], flush=True)
    lines = ["| variant | sampled; train time | FD (floor ~3.5) | confidence | classes (circle, square, triangle, cross) | palette |",
             "|---|---|--:|--:|---|--:|"]
    lines += [f"| {n_} | {how} | {r['FD']:.2f} | {r['conf']:.3f} | {', '.join(f'{c:.3f}' for c in r['classes'])} | {r['palette']:.3f} |"
              for n_, how, r in rows]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(f"# Levers of the latent shapes model (chapter 11, Stage 4's base)\n\n"
                              f"`python benchmarks/shapes_levers.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s).\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step cost of the course's samplers against diffusers' scheduler loops, on one network.

Usage (one torch thread, the trained digits U-Net of the zoo, trained first if not cached):

    python benchmarks/sampler_overhead.py [--steps 50] [--batches 1 16 256] [--write benchmarks/RESULTS.md]

For each batch size it times, repeated (the minimum of the repeats is reported; each course / diffusers
pair runs back to back in every repeat, in alternating order):

* ``net``: the network call alone, once per time of the grid (the floor of any sampler);
* batch "0": batch 1 with a network that costs nothing, so the figures are the loops' own cost;
* the course's ``sample()`` with ``ddim_step``, ``ddpm_step`` and ``dpm_solver_pp_2m_step``;
* diffusers' loop ``for k in scheduler.timesteps: x = scheduler.step(model(x, k), k, x).prev_sample``
  with DDIMScheduler, DDPMScheduler and DPMSolverMultistepScheduler, configured as the course
  model is (the same DDPM table, clip_sample where the course clips x0_hat, trailing spacing),
  calling the same network through a one-line adapter from diffusers' integer timestep k to the
  course's time t = (k + 1) / N.

Each pair is also checked to give the same samples (the largest absolute difference is printed;
DDPM with the same generator draws the same noise). The ratio course / diffusers is the figure
of issue 9: at most 1.0 means the course loop costs no more per step than diffusers'. A speed
target lives here, not in a timed test: absolute times on a shared machine are noise, ratios
measured side by side in one run are not.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

START, END = "<!-- sampler-overhead:start -->", "<!-- sampler-overhead:end -->"


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(steps: int, batches: list[int], repeats: dict[int, int], untrained: bool = False) -> tuple[str, list[dict]]:
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    from course_lib import zoo
    from course_lib.adapters.diffusers import sampling_grid
    from course_lib.samplers import ddim_step, ddpm_step, dpm_solver_pp_2m_step, sample

    from course_lib.parameterization import Denoiser

    if untrained:  # timing only: the same architecture with its initial weights
        recipe = zoo.RECIPES["digits_unet"]
        from course_lib.profiles import current_profile
        from course_lib.schedules import get_schedule

        config = recipe.config(current_profile())
        denoiser = Denoiser(recipe.build(config).eval(), get_schedule(config["schedule"], **config["schedule_params"]),
                            "eps", x0_range=(-1.0, 1.0))
    else:
        denoiser = zoo.pretrained_denoiser("digits_unet", device="cpu")
    net, N = denoiser.net, denoiser.schedule.table.n_train_steps
    table = denoiser.schedule.table
    common = dict(num_train_timesteps=N, trained_betas=table.betas.numpy(), timestep_spacing="trailing")
    schedulers = {
        "DDIM": (DDIMScheduler(**common, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True),
                 lambda: {}, ddim_step),
        "DDPM": (DDPMScheduler(**common, clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small"),
                 lambda: {}, ddpm_step),
        # DPMSolverMultistepScheduler has no clip_sample: both run unclipped (``den_unclipped`` below).
        "DPM-Solver++(2M)": (DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2),
                             lambda: {}, dpm_solver_pp_2m_step),
    }

    def model(x, k):  # diffusers' integer timestep k -> the course's time t = (k + 1) / N
        return net(x, (k.to(torch.float32).expand(x.shape[0]) + 1.0) / N)

    rows, checks = [], []
    for B in batches:
        if B == 0:  # the loop's own cost: a network that costs nothing (x -> 0.1 x)
            net_, model_ = (lambda x, t: 0.1 * x), (lambda x, k: 0.1 * x)
        else:
            net_, model_ = net, model
        gen = torch.Generator().manual_seed(0)
        x_T = torch.randn(max(B, 1), 1, 8, 8, generator=gen)
        den_clipped = Denoiser(net_, denoiser.schedule, "eps", x0_range=(-1.0, 1.0))
        den_unclipped = Denoiser(net_, denoiser.schedule, "eps")
        runs = {}
        grid_net = torch.linspace(1.0, 1.0 / N, steps)
        t_batches = [torch.full((max(B, 1),), float(t)) for t in grid_net]

        def net_only():
            with torch.no_grad():
                for t in t_batches:
                    net_(x_T, t)
        runs["net"] = net_only
        for name, (scheduler, _, step) in schedulers.items():
            scheduler.set_timesteps(steps)
            grid = sampling_grid(scheduler)

            def course(step=step, grid=grid, d=den_unclipped if name.startswith("DPM") else den_clipped):
                return sample(d, x_T, grid, step, generator=torch.Generator().manual_seed(1))

            def diffusers_loop(scheduler=scheduler):
                g = torch.Generator().manual_seed(1)
                scheduler.set_timesteps(steps)
                x = x_T
                with torch.no_grad():
                    for k in scheduler.timesteps:
                        if isinstance(scheduler, DDPMScheduler):
                            x = scheduler.step(model_(x, k), k, x, generator=g).prev_sample
                        elif isinstance(scheduler, DDIMScheduler):  # eps_hat from the clipped x0_hat, as the course
                            x = scheduler.step(model_(x, k), k, x, use_clipped_model_output=True).prev_sample
                        else:
                            x = scheduler.step(model_(x, k), k, x).prev_sample
                return x
            runs[f"course {name}"] = course
            runs[f"diffusers {name}"] = diffusers_loop
            if B == 1:
                diff = float((course() - diffusers_loop()).abs().max())
                checks.append(f"{name}: largest |course - diffusers| over the samples = {diff:.2e}")
        for fn in runs.values():  # warm-up
            fn()
        times = {key: [] for key in runs}
        for r in range(repeats.get(B, 3)):
            times["net"].append(_time(runs["net"]) / steps * 1e3)
            for name in schedulers:  # each pair back to back, alternating which goes first (ABBA)
                pair = [f"course {name}", f"diffusers {name}"]
                for key in (pair if r % 2 == 0 else pair[::-1]):
                    times[key].append(_time(runs[key]) / steps * 1e3)
        # the minimum over repeats: what a step costs when nothing else on the machine interferes
        # (interference only ever adds time); the paired ratios' median as a second view
        row = {"batch": B, **{key: min(v) for key, v in times.items()}}
        for name in schedulers:
            c, d = times[f"course {name}"], times[f"diffusers {name}"]
            row[f"ratio {name}"] = min(c) / min(d)
            row[f"paired {name}"] = statistics.median(ci / di for ci, di in zip(c, d))
        rows.append(row)
        print(f"batch {B}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "batch"),
              file=sys.stderr, flush=True)
    return "\n".join(checks), rows


def table(rows: list[dict]) -> str:
    names = ["DDIM", "DDPM", "DPM-Solver++(2M)"]
    head = "| batch | net |" + "".join(f" course {n} | diffusers {n} | ratio |" for n in names)
    sep = "|--:|--:|" + "--:|--:|--:|" * len(names)
    lines = [head, sep]
    for r in rows:
        cells = [str(r["batch"]) if r["batch"] else "1, no network", f"{r['net']:.3f}"]
        for n in names:
            c, d = r[f"course {n}"], r[f"diffusers {n}"]
            cells += [f"{c:.3f}", f"{d:.3f}", f"**{r[f'ratio {n}']:.2f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[0, 1, 16, 256],
                        help="batch sizes; 0 = batch 1 with a network that costs nothing (the loop's own cost)")
    parser.add_argument("--untrained", action="store_true",
                        help="time the U-Net with its initial weights (no zoo training; timing only)")
    parser.add_argument("--write", metavar="FILE", help="replace the sampler-overhead section of FILE (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import diffusers

    checks, rows = run(args.steps, args.batches, {0: 40, 1: 30, 16: 20, 256: 6}, args.untrained)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    text = "\n".join([
        START,
        "## Sampler overhead per step: the course loop against diffusers' (issue 9)",
        "",
        f"`python benchmarks/sampler_overhead.py --write benchmarks/RESULTS.md`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} thread, diffusers {diffusers.__version__}. The trained `digits_unet` "
        f"(8x8 digits), {args.steps} steps; milliseconds per step, the minimum over repeats (interference from "
        "the rest of the machine only adds time); the two of each pair ran back to back in every repeat, in "
        "alternating order. ratio = course / diffusers (at most 1.0: the course loop costs no more than "
        "diffusers'); below the table, the median of the per-repeat ratios as a second view. The first row "
        "replaces the network by x -> 0.1 x, so it measures the loops alone.",
        "",
        table(rows),
        "",
        "Median of the per-repeat ratios (batch: DDIM, DDPM, DPM-Solver++(2M)): " + "; ".join(
            f"{r['batch'] or '1, no network'}: " + ", ".join(f"{r[f'paired {n}']:.2f}" for n in
                                                             ("DDIM", "DDPM", "DPM-Solver++(2M)")) for r in rows) + ".",
        "",
        "Same samples: " + "; ".join(checks.splitlines()) + ".",
        END,
    ])
    print(text)
    if args.write:
        path = Path(args.write)
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if START in old and END in old:
            new = old[:old.index(START)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        path.write_text(new, encoding="utf-8")
        print(f"written to {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

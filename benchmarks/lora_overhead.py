"""The cost of a LoRA training step and of an adapted forward pass: the course's LoRA against peft's.

Usage (one torch thread; chapter 14's U-Net, ``digits_cond_unet``'s architecture, freshly initialised:
timing does not need trained weights):

    python benchmarks/lora_overhead.py [--ranks 1 4 16] [--batch 64] [--write benchmarks/RESULTS.md]

For each rank it times, repeated and in alternating order within every repeat (the minimum over repeats
is reported, and the median of the per-repeat ratios):

* a training step (forward, the epsilon loss, backward, AdamW step) with the course's ``add_lora`` and
  with peft's ``inject_adapter_in_model`` on the same layers (chapter 14's ``LORA_TARGETS``), same rank
  and alpha; and full fine-tuning of the same network as the reference a user starts from;
* one forward pass with the adapter unmerged (course and peft), and with it merged (course).

It also reports what is trained and stored: trainable parameters and the bytes of their AdamW state
(two moments per trained number, float32). The ratio course / peft is the figure: at most about 1.0
means the course's adapter costs no more than the library a user would pick instead. Speed figures
live here, not in timed tests: ratios measured side by side in one run are meaningful on a shared
machine, absolute times are not.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

START, END = "<!-- lora-overhead:start -->", "<!-- lora-overhead:end -->"


def _build():
    from course_lib.profiles import get_profile
    from course_lib.zoo import get_recipe

    recipe = get_recipe("digits_cond_unet")
    config = recipe.config(get_profile("classroom"))
    torch.manual_seed(0)
    return recipe.build(config), config


def _step_fn(net, schedule, batch):
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    den = Denoiser(net, schedule, "eps")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, 1, 8, 8, generator=g)
    y = torch.arange(batch) % 10

    def step():
        loss = diffusion_loss(den, x0, generator=torch.Generator().manual_seed(1), class_labels=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, sum(p.numel() for p in params)


def _forward_fn(net, batch):
    g = torch.Generator().manual_seed(2)
    x, t, y = torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g), torch.arange(batch) % 10

    @torch.no_grad()
    def forward():
        net(x, t, class_labels=y)
    return forward


def _time(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner * 1000.0


def run(ranks: list[int], batch: int, repeats: int, inner: int) -> tuple[str, list[dict]]:
    import peft

    from course_lib.networks.lora import add_lora, merge_lora
    from course_lib.zoo.registry import schedule_from_config
    from course_lib.zoo.stage4 import LORA_ALPHA, LORA_TARGETS

    base, config = _build()
    schedule = schedule_from_config(config)
    rows = []
    for rank in ranks:
        ours = copy.deepcopy(base)
        add_lora(ours, rank, LORA_TARGETS, alpha=LORA_ALPHA, generator=torch.Generator().manual_seed(0))
        theirs = copy.deepcopy(base)
        theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                              target_modules=list(LORA_TARGETS)), theirs)
        for n, p in theirs.named_parameters():
            p.requires_grad_("lora_" in n)
        full = copy.deepcopy(base).requires_grad_(True)
        # the same adapter weights in both (B random, so neither update is trivially zero), handed to
        # peft through its public state-dict loader (keys "<module>.lora_A.weight", adapter name omitted)
        adapter_state = {}
        with torch.no_grad():
            for name, m in ours.named_modules():
                if hasattr(m, "lora_B") and isinstance(m.lora_B, torch.nn.ParameterDict):
                    m.lora_B["default"].normal_(std=0.01, generator=torch.Generator().manual_seed(3))
                    adapter_state[f"{name}.lora_A.weight"] = m.lora_A["default"].detach().clone()
                    adapter_state[f"{name}.lora_B.weight"] = m.lora_B["default"].detach().clone()
        result = peft.set_peft_model_state_dict(theirs, adapter_state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"peft did not take the adapter weights: {result.unexpected_keys[:3]} ...")
        probe = _forward_fn(ours, 4)
        g = torch.Generator().manual_seed(5)
        x, t, y = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g), torch.arange(4)
        with torch.no_grad():
            parity = float((ours(x, t, class_labels=y) - theirs(x, t, class_labels=y)).abs().max())
        del probe
        step_ours, n_ours = _step_fn(ours, schedule, batch)
        step_theirs, n_theirs = _step_fn(theirs, schedule, batch)
        step_full, n_full = _step_fn(full, schedule, batch)
        if n_ours != n_theirs:
            raise RuntimeError(f"rank {rank}: the course trains {n_ours} numbers, peft {n_theirs}")
        fwd_ours, fwd_theirs = _forward_fn(ours, batch), _forward_fn(theirs, batch)
        merged = copy.deepcopy(ours)
        merge_lora(merged)
        fwd_merged = _forward_fn(merged, batch)
        for fn in (step_ours, step_theirs, step_full, fwd_ours, fwd_theirs, fwd_merged):  # warm-up
            fn()
        times = {k: [] for k in ("ours", "peft", "full", "fwd ours", "fwd peft", "fwd merged")}
        for rep in range(repeats):
            pairs = [("ours", step_ours), ("peft", step_theirs), ("full", step_full),
                     ("fwd ours", fwd_ours), ("fwd peft", fwd_theirs), ("fwd merged", fwd_merged)]
            for key, fn in (pairs if rep % 2 == 0 else pairs[::-1]):
                times[key].append(_time(fn, inner))
        ratio = statistics.median(o / p for o, p in zip(times["ours"], times["peft"]))
        fwd_ratio = statistics.median(o / p for o, p in zip(times["fwd ours"], times["fwd peft"]))
        rows.append({"rank": rank, "trainable": n_ours, "full trainable": n_full, "parity": parity,
                     **{k: min(v) for k, v in times.items()}, "ratio": ratio, "fwd ratio": fwd_ratio})
    lines = [f"`python benchmarks/lora_overhead.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
             f"{torch.get_num_threads()} thread(s), peft {peft.__version__}. Chapter 14's U-Net ({sum(p.numel() for p in base.parameters()):,} "
             f"weights), adapters on `LORA_TARGETS`, alpha {LORA_ALPHA:g}, batch {batch}; milliseconds, the minimum of "
             f"{repeats} repeats of {inner}; ratios are medians of the per-repeat ratios.", "",
             "| rank | trainable (course = peft) | AdamW state | course step | peft step | **course / peft** | full fine-tuning step "
             "| course forward | peft forward | **course / peft** | merged forward | max output diff course vs peft |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['trainable']:,} | {r['trainable'] * 8 / 1024:.0f} KiB | {r['ours']:.2f} | {r['peft']:.2f} | "
                     f"**{r['ratio']:.2f}** | {r['full']:.2f} | {r['fwd ours']:.2f} | {r['fwd peft']:.2f} | **{r['fwd ratio']:.2f}** | "
                     f"{r['fwd merged']:.2f} | {r['parity']:.1e} |")
    full_state = rows[0]["full trainable"] * 8 / 1024
    lines += ["", f"Full fine-tuning trains {rows[0]['full trainable']:,} numbers ({full_state:.0f} KiB of AdamW state). "
              "A LoRA step is not cheaper than a full step on a network this small: the frozen layers' forward and "
              "backward still run, and the adapters add their own; the saving is in what is trained, stored and "
              "shipped. Merged, an adapter costs nothing at inference."]
    return "\n".join(lines), rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="replace the section between the markers in this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    text, _ = run(args.ranks, args.batch, args.repeats, args.inner)
    section = f"{START}\n## LoRA: a training step and a forward pass, the course against peft (chapter 14)\n\n{text}\n{END}"
    print(section)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        if START in old and END in old:
            new = old[: old.index(START)] + section + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + section + "\n"
        args.write.write_text(new)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every chapter notebook in a fresh kernel and tabulate run time against its budget.

For each chapter of ``book.toml`` (in order) the notebook is executed top to bottom with
nbclient in a new kernel of the *current* Python environment (the interpreter running this
script, whatever kernels are installed), with the notebook's folder as working directory and
``COURSE_REPORT`` / ``COURSE_CHAPTER`` set so that ``course_lib.report.record`` collects the
notebook's key figures. The result is a markdown table: chapter, title, wall time, budget
(``minutes_cpu`` from ``book.toml``, in seconds), whether it ran within budget, and the
figures recorded.

Usage (``make benchmark`` runs the second line with one thread per kernel)::

    python benchmarks/run_benchmarks.py --chapters 00 02
    python benchmarks/run_benchmarks.py --write benchmarks/RESULTS.md

Exits with status 1 when a notebook fails to execute (the other notebooks still run), and 2
for a bad command line or an invalid ``book.toml``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO))

from course_lib.manifest import Chapter, load_manifest  # noqa: E402
from course_lib.report import CHAPTER_ENV, REPORT_ENV, read_records  # noqa: E402

CELL_TIMEOUT_S = 900


@dataclass
class Result:
    """One notebook run: wall seconds, the figures it recorded, and the error if it failed."""

    chapter: Chapter
    wall_s: float
    metrics: dict[str, float | int] = field(default_factory=dict)
    error: str | None = None

    @property
    def budget_s(self) -> float:
        return 60.0 * self.chapter.minutes_cpu

    @property
    def within_budget(self) -> bool:
        return self.error is None and self.wall_s <= self.budget_s


def run_chapter(chapter: Chapter, root: Path, report_dir: Path, timeout: int) -> Result:
    """Execute one chapter notebook in a fresh kernel and collect its recorded figures."""
    import nbformat

    from course_lib.execution import execute_notebook

    path = root / chapter.file
    report_file = report_dir / f"{chapter.id}.jsonl"
    env = dict(os.environ)
    env[REPORT_ENV] = str(report_file)
    env[CHAPTER_ENV] = chapter.id
    nb = nbformat.read(path, as_version=4)
    error = None
    start = time.perf_counter()
    try:
        execute_notebook(nb, path.parent, timeout=timeout, env=env)
    except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError, ...
        text = str(exc).strip() or "".join(traceback.format_exception_only(type(exc), exc))
        error = f"{type(exc).__name__}: {text}"
    wall = time.perf_counter() - start
    metrics: dict[str, float | int] = {}
    for entry in read_records(report_file):
        metrics[entry["key"]] = entry["value"]  # the last value of a key wins
    return Result(chapter=chapter, wall_s=wall, metrics=metrics, error=error)


def _format_value(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def render_table(results: list[Result]) -> str:
    """The markdown table of the results, with a total line."""
    lines = [
        "| Chapter | Title | Wall time (s) | Budget (s) | Within budget | Key metrics |",
        "|---|---|--:|--:|---|---|",
    ]
    for r in results:
        metrics = ", ".join(f"{k}={_format_value(v)}" for k, v in r.metrics.items()) or "–"
        verdict = "FAILED" if r.error else ("yes" if r.within_budget else "no")
        title = r.chapter.title.replace("|", "\\|")
        lines.append(
            f"| {r.chapter.id} | {title} | {r.wall_s:.1f} | {r.budget_s:.0f} | {verdict} "
            f"| {metrics} |"
        )
    total = sum(r.wall_s for r in results)
    budget = sum(r.budget_s for r in results)
    ok = sum(r.within_budget for r in results)
    failed = sum(r.error is not None for r in results)
    lines += [
        "",
        f"Total: {total:.1f} s for {len(results)} notebook(s) (budget {budget:.0f} s); "
        f"{ok}/{len(results)} within budget"
        + (f"; {failed} FAILED" if failed else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def machine_header() -> str:
    """Date, machine and settings the timings were measured with."""
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    except ImportError:
        torch_version, device = "not installed", "cpu"
    profile = os.environ.get("COURSE_PROFILE") or "unset (the classroom default)"
    threads = os.environ.get("OMP_NUM_THREADS") or "unset"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Every chapter notebook executed top to bottom in a fresh kernel "
            "(`make benchmark`, i.e. `python benchmarks/run_benchmarks.py --write "
            "benchmarks/RESULTS.md`); the budget is `minutes_cpu` from `book.toml`.",
            "",
            f"- Date: {now}",
            f"- Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}",
            f"- torch {torch_version}, device: {device}",
            f"- COURSE_PROFILE: {profile}",
            f"- OMP_NUM_THREADS: {threads}",
            "",
        ]
    )


def _section_starts(text: str) -> list[int]:
    """Where the marked sections (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``) of a results file begin."""
    starts, i = [], text.find("<!-- ")
    while i >= 0:
        head = text[i:text.find("-->", i) + 3]
        if head.endswith(":start -->") and head.replace(":start", ":end") in text[i:]:
            starts.append(i)
            i = text.index(head.replace(":start", ":end"), i)
        i = text.find("<!-- ", i + 1)
    return starts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="+", metavar="ID", help="chapter ids (default: all)")
    parser.add_argument("--write", metavar="FILE", help="also write the table to FILE (markdown)")
    parser.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds allowed per cell (default 900)"
    )
    parser.add_argument("--manifest", default=None, help="path to book.toml (default: the repo's)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")

    try:
        manifest = load_manifest(args.manifest or REPO / "book.toml")
        chapters = (
            list(manifest.chapters)
            if not args.chapters
            else [manifest.chapter(cid) for cid in args.chapters]
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="course-bench-") as report_dir:
        for chapter in chapters:
            print(f"[{chapter.id}] {chapter.file} ...", end=" ", flush=True)
            result = run_chapter(chapter, manifest.root, Path(report_dir), args.timeout)
            results.append(result)
            print("FAILED" if result.error else f"{result.wall_s:.1f} s", flush=True)
            if result.error:
                print(result.error, file=sys.stderr)

    table = render_table(results)
    print()
    print(table, end="")
    if args.write:
        path = Path(args.write)
        # keep the sections other benchmark scripts own (e.g. sampler_overhead.py's), marked start/end
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        kept = "".join(old[i:old.index("-->", old.index(":end -->", i)) + 3] + "\n"
                       for i in _section_starts(old))
        path.write_text(machine_header() + "\n" + table + ("\n" + kept if kept else ""), encoding="utf-8")
        print(f"written to {args.write}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

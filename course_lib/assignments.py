r"""Classroom assignments from the chapter notebooks: student versions and offline grading.

The exercises carry nbgrader-compatible markup (cell metadata ``nbgrader`` with ``solution``,
``grade``, ``grade_id``, ``points``, ``locked``; regions ``### BEGIN SOLUTION`` /
``### END SOLUTION`` and ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``), so an
instructor's nbgrader works on them unchanged. This module is the course's own small,
offline equivalent:

* :func:`student_version` removes the solutions (code becomes ``raise NotImplementedError()``,
  markdown answers become ``YOUR ANSWER HERE``), removes hidden tests and all outputs;
* :func:`grade` executes a submitted notebook from a clean kernel, after restoring every
  graded test cell from the instructor's notebook (a student cannot edit the tests away), and
  awards a test cell's points when it runs without error.

Command line::

    python -m course_lib.assignments student chapters/02_ddpm.ipynb -o release/
    python -m course_lib.assignments grade submitted/02_ddpm.ipynb --reference chapters/02_ddpm.ipynb

>>> strip_regions("a\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\nb", "code")
'a\nraise NotImplementedError()\nb'
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["strip_regions", "student_version", "grade", "GradeReport", "graded_cells", "withheld"]

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


@contextlib.contextmanager
def withheld(namespace: dict, *objects):
    """Make library functions or classes unavailable while a student's exercise code runs.

    A coding exercise that asks for a function the library already has must not pass by calling it.
    The graded test runs the student's code inside ``with withheld(globals(), lib_fn): ...``: every
    reference to each object in ``namespace`` (the notebook's globals) and in the modules of
    ``course_lib`` is replaced by a stub that raises ``RuntimeError`` naming it, and restored on exit
    (also after an error). Introduced in chapter 12.

    >>> import course_lib.metrics as metrics
    >>> ns = {"mmd": metrics.mmd}
    >>> with withheld(ns, metrics.mmd):
    ...     ns["mmd"](None, None)
    Traceback (most recent call last):
    ...
    RuntimeError: mmd is withheld in this exercise: write it yourself instead of calling it
    >>> ns["mmd"] is metrics.mmd
    True
    """
    if not isinstance(namespace, dict):
        raise ValueError(f"withheld: namespace must be a dict (pass globals()), got {type(namespace).__name__}")
    if not objects:
        raise ValueError("withheld: name at least one function or class to withhold")
    saved: list[tuple[object, str, object]] = []
    try:
        for obj in objects:
            name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))

            def stub(*args, _name=name, **kwargs):
                raise RuntimeError(f"{_name} is withheld in this exercise: write it yourself instead of calling it")

            for key, value in list(namespace.items()):
                if value is obj:
                    saved.append((namespace, key, value))
                    namespace[key] = stub
            for module_name, module in list(sys.modules.items()):
                if module is None or not (module_name == "course_lib" or module_name.startswith("course_lib.")):
                    continue
                for key, value in list(vars(module).items()):
                    if value is obj:
                        saved.append((module, key, value))
                        setattr(module, key, stub)
        yield
    finally:
        for holder, key, value in reversed(saved):
            if isinstance(holder, dict):
                holder[key] = value
            else:
                setattr(holder, key, value)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _remove_region(source: str, begin: str, end: str, replacement: str | None) -> str:
    lines, out, inside, depth_indent = source.split("\n"), [], False, ""
    for line in lines:
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ValueError(f"nested {begin!r} in a cell")
            inside, depth_indent = True, line[: len(line) - len(line.lstrip())]
            if replacement is not None:
                out.append(depth_indent + replacement)
            continue
        if stripped == end:
            if not inside:
                raise ValueError(f"{end!r} without a matching {begin!r}")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without a matching {end!r}")
    return "\n".join(out)


def strip_regions(source: str, cell_type: str) -> str:
    """Replace every solution region of a cell's source by the student placeholder."""
    if cell_type not in ("code", "markdown"):
        raise ValueError(f"cell_type must be 'code' or 'markdown', got {cell_type!r}")
    placeholder = "raise NotImplementedError()" if cell_type == "code" else "YOUR ANSWER HERE"
    if BEGIN_SOLUTION not in source and cell_type == "markdown":
        return placeholder
    return _remove_region(source, BEGIN_SOLUTION, END_SOLUTION, placeholder)


def student_version(nb):
    """A student copy of a notebook (nbformat NotebookNode): solutions, hidden tests and outputs removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        meta = _meta(cell)
        if meta.get("solution"):
            cell.source = strip_regions(cell.source, cell.cell_type)
        if meta.get("grade") and BEGIN_HIDDEN in cell.source:
            cell.source = _remove_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    return nb


def graded_cells(nb) -> dict[str, dict]:
    """grade_id -> the graded test cell, for every cell with ``nbgrader.grade`` true."""
    out = {}
    for cell in nb.cells:
        meta = _meta(cell)
        if meta.get("grade"):
            gid = meta.get("grade_id")
            if not gid:
                raise ValueError("a graded cell has no nbgrader grade_id")
            if gid in out:
                raise ValueError(f"duplicate nbgrader grade_id {gid!r}")
            out[gid] = cell
    return out


@dataclass
class GradeReport:
    """Points per graded cell and the total. ``errors`` holds the first error line of failed cells."""

    scores: dict = field(default_factory=dict)
    max_scores: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))

    @property
    def max_total(self) -> float:
        return float(sum(self.max_scores.values()))

    def table(self) -> str:
        rows = ["| test | points | max | error |", "|---|---|---|---|"]
        for gid, mx in self.max_scores.items():
            rows.append(f"| {gid} | {self.scores.get(gid, 0):g} | {mx:g} | {self.errors.get(gid, '')} |")
        rows.append(f"| **total** | **{self.total:g}** | **{self.max_total:g}** | |")
        return "\n".join(rows)


def grade(submission, reference=None, *, timeout: int = 900, cwd: str | Path | None = None) -> GradeReport:
    """Execute ``submission`` from a clean kernel and score its graded test cells.

    Args:
        submission: a notebook (NotebookNode) or a path to one.
        reference: the instructor's notebook (or path); its graded cells replace the
            submission's before execution, matched by ``grade_id``. Every graded cell of the
            reference must exist in the submission (a deleted test scores 0 and is reported).
        timeout: seconds per cell (the kernel runs in this Python environment).
        cwd: working folder of the kernel (the notebook's folder when given a path).
    """
    import nbformat

    from .execution import execute_notebook

    def _read(nb_or_path):
        if isinstance(nb_or_path, (str, Path)):
            return nbformat.read(str(nb_or_path), as_version=4), Path(nb_or_path).resolve().parent
        return copy.deepcopy(nb_or_path), None

    nb, folder = _read(submission)
    tests = graded_cells(nb)
    if reference is not None:
        ref, _ = _read(reference)
        ref_tests = graded_cells(ref)
        for gid, ref_cell in ref_tests.items():
            if gid in tests:
                tests[gid].source = ref_cell.source
                tests[gid].metadata["nbgrader"] = copy.deepcopy(ref_cell.metadata["nbgrader"])
        missing = [gid for gid in ref_tests if gid not in tests]
    else:
        ref_tests, missing = tests, []
    report = GradeReport()
    for gid, cell in ref_tests.items():
        report.max_scores[gid] = float(_meta(cell).get("points", 0))
    for gid in missing:
        report.scores[gid], report.errors[gid] = 0.0, "test cell deleted from the submission"
    execute_notebook(nb, cwd or folder or Path.cwd(), timeout=timeout, allow_errors=True)
    for gid, cell in graded_cells(nb).items():
        if gid not in report.max_scores:
            continue
        errs = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errs:
            report.scores[gid] = 0.0
            report.errors[gid] = f"{errs[0].get('ename')}: {errs[0].get('evalue', '')}"[:200]
        else:
            report.scores[gid] = report.max_scores[gid]
    return report


def _main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(prog="python -m course_lib.assignments")
    sub = parser.add_subparsers(dest="command", required=True)
    p_student = sub.add_parser("student", help="write student versions (solutions removed)")
    p_student.add_argument("notebooks", nargs="+")
    p_student.add_argument("-o", "--out", required=True, help="output folder")
    p_grade = sub.add_parser("grade", help="grade a submitted notebook")
    p_grade.add_argument("submission")
    p_grade.add_argument("--reference", help="the instructor's notebook (restores the test cells)")
    p_grade.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)
    if args.command == "student":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for path in args.notebooks:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(student_version(nb), str(out / Path(path).name))
            print(f"wrote {out / Path(path).name}")
        return 0
    report = grade(args.submission, args.reference, timeout=args.timeout)
    print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

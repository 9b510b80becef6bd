"""The course manifest: ``book.toml`` loaded, validated and rendered as the README's course map.

``book.toml`` is the one list of what the course contains: the course itself, its four
stages (基础入门 → 理论深化 → 进阶模型 → 应用实践) and its chapters in reading order. The
Makefile asks this module for the notebooks to test, the README's course map is generated
from it, and the hygiene tests compare the chapter folder with it.

Command line (run from anywhere inside the checkout)::

    python -m course_lib.manifest check                    # validate and summarise
    python -m course_lib.manifest notebooks                # chapter files, in order
    python -m course_lib.manifest readme                   # print the course map
    python -m course_lib.manifest readme --write README.md # refresh the README's map

Introduced in chapter 00 (the course tooling; no mathematics here).

Example, from a dictionary shaped like ``book.toml`` (``check_files=False`` because the
chapter file does not exist here):

>>> data = {
...     "course": {"title": "Demo", "title_zh": "演示", "version": "0.1.0", "license": "MIT"},
...     "stages": [{"id": "s1", "title": "Stage 1", "title_zh": "第一阶段"}],
...     "chapters": [{"id": "00", "stage": "s1", "file": "chapters/00_intro.ipynb",
...                   "title": "Intro", "title_zh": "导论", "minutes_cpu": 2,
...                   "prerequisites": [], "objectives": ["Say hello"]}],
... }
>>> manifest = manifest_from_dict(data, root=".", check_files=False)
>>> [chapter.file for chapter in manifest.chapters]
['chapters/00_intro.ipynb']
>>> print(render_course_map(manifest).splitlines()[-1])
| 00 | [Intro](chapters/00_intro.ipynb) | 导论 | 2 | Say hello |
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 only
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # reported by load_manifest with what to install

__all__ = [
    "Course",
    "Stage",
    "Chapter",
    "Manifest",
    "repo_root",
    "load_manifest",
    "manifest_from_dict",
    "render_course_map",
    "replace_course_map",
    "course_map_block",
    "COURSE_MAP_START",
    "COURSE_MAP_END",
]

MANIFEST_NAME = "book.toml"
CHAPTERS_DIR = "chapters"
COURSE_MAP_START = "<!-- course-map:start -->"
COURSE_MAP_END = "<!-- course-map:end -->"

_COURSE_KEYS = ("title", "title_zh", "version", "license")
_STAGE_KEYS = ("id", "title", "title_zh")
_CHAPTER_KEYS = (
    "id",
    "stage",
    "file",
    "title",
    "title_zh",
    "minutes_cpu",
    "prerequisites",
    "objectives",
)
_CHAPTER_OPTIONAL_KEYS = ("first_run_minutes_cpu",)


@dataclass(frozen=True)
class Course:
    """The ``[course]`` table of ``book.toml``: English and Chinese title, version, licence."""

    title: str
    title_zh: str
    version: str
    license: str


@dataclass(frozen=True)
class Stage:
    """One ``[[stages]]`` entry: a stage of the learning roadmap (e.g. "foundations")."""

    id: str
    title: str
    title_zh: str


@dataclass(frozen=True)
class Chapter:
    """One ``[[chapters]]`` entry, in reading order.

    ``file`` is relative to the repository root (e.g. ``chapters/02_ddpm.ipynb``);
    ``minutes_cpu`` is the expected run time of the notebook on a laptop CPU (classroom
    profile); ``first_run_minutes_cpu``, where given, is the run time of a first open in a fresh
    checkout, when the notebook trains the zoo models it needs (at least ``minutes_cpu``);
    ``prerequisites`` are ids of earlier chapters.
    """

    id: str
    stage: str
    file: str
    title: str
    title_zh: str
    minutes_cpu: float
    prerequisites: tuple[str, ...]
    objectives: tuple[str, ...]
    first_run_minutes_cpu: float | None = None


@dataclass(frozen=True)
class Manifest:
    """The whole of ``book.toml``; ``root`` is the folder holding it (the repository root)."""

    course: Course
    stages: tuple[Stage, ...]
    chapters: tuple[Chapter, ...]
    root: Path

    def chapter(self, chapter_id: str) -> Chapter:
        """The chapter with id ``chapter_id`` (e.g. ``"02"``); ValueError if there is none."""
        for chapter in self.chapters:
            if chapter.id == chapter_id:
                return chapter
        known = ", ".join(c.id for c in self.chapters) or "(none)"
        raise ValueError(f"no chapter with id {chapter_id!r} in {MANIFEST_NAME}; known ids: {known}")

    def stage(self, stage_id: str) -> Stage:
        """The stage with id ``stage_id``; ValueError if there is none."""
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        known = ", ".join(s.id for s in self.stages) or "(none)"
        raise ValueError(f"no stage with id {stage_id!r} in {MANIFEST_NAME}; known ids: {known}")

    def chapters_in(self, stage_id: str) -> tuple[Chapter, ...]:
        """The chapters of one stage, in reading order."""
        self.stage(stage_id)
        return tuple(c for c in self.chapters if c.stage == stage_id)

    def notebook_paths(self) -> list[Path]:
        """Absolute paths of the chapter notebooks, in reading order."""
        return [self.root / c.file for c in self.chapters]


def repo_root() -> Path:
    """The repository root: the folder above ``course_lib`` when it holds ``book.toml``
    (an editable install or a checkout), otherwise the current working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / MANIFEST_NAME).is_file():
        return here
    return Path.cwd()


# --------------------------------------------------------------------------- validation


def _where(kind: str, index: int, entry: Mapping[str, Any]) -> str:
    """How an error names an entry: ``chapters[2] (id '02')``."""
    ident = entry.get("id") if isinstance(entry, Mapping) else None
    return f"{kind}[{index}]" + (f" (id {ident!r})" if isinstance(ident, str) else "")


def _require_table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{MANIFEST_NAME}: {where} must be a table, got {type(value).__name__}")
    return value


def _check_keys(entry: Mapping[str, Any], required: tuple[str, ...], where: str,
                optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in required if k not in entry]
    if missing:
        raise ValueError(
            f"{MANIFEST_NAME}: {where} is missing required key(s) {', '.join(missing)}; "
            f"expected keys: {', '.join(required)}"
        )
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        expected = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
        raise ValueError(
            f"{MANIFEST_NAME}: {where} has unknown key(s) {', '.join(unknown)}; "
            f"expected keys: {expected} (a typo?)"
        )


def _string(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{MANIFEST_NAME}: {where}.{key} must be a non-empty string, got {value!r}")
    return value


def _string_list(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.{key} must be a list of non-empty strings, got {value!r}"
        )
    return tuple(value)


def _parse_chapter(entry: Mapping[str, Any], where: str) -> Chapter:
    _check_keys(entry, _CHAPTER_KEYS, where, _CHAPTER_OPTIONAL_KEYS)
    first_run = entry.get("first_run_minutes_cpu")
    minutes = entry["minutes_cpu"]
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, numbers.Real)
        or not math.isfinite(minutes)
        or minutes <= 0
    ):
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.minutes_cpu must be a positive number of minutes, "
            f"got {minutes!r}"
        )
    if first_run is not None and (isinstance(first_run, bool) or not isinstance(first_run, numbers.Real)
                                  or not math.isfinite(first_run) or first_run < minutes):
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.first_run_minutes_cpu must be a number of minutes at least "
            f"minutes_cpu = {minutes!r}, got {first_run!r}"
        )
    objectives = _string_list(entry, "objectives", where)
    if not objectives:
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.objectives is empty; list at least one learning objective"
        )
    file = _string(entry, "file", where)
    posix = Path(file).as_posix()
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.file must be a path relative to the repository root "
            f"inside {CHAPTERS_DIR}/, got {file!r}"
        )
    if not posix.startswith(f"{CHAPTERS_DIR}/") or not posix.endswith(".ipynb"):
        raise ValueError(
            f"{MANIFEST_NAME}: {where}.file must be a notebook under {CHAPTERS_DIR}/ "
            f"(like '{CHAPTERS_DIR}/02_ddpm.ipynb'), got {file!r}"
        )
    return Chapter(
        id=_string(entry, "id", where),
        stage=_string(entry, "stage", where),
        file=posix,
        title=_string(entry, "title", where),
        title_zh=_string(entry, "title_zh", where),
        minutes_cpu=minutes,
        prerequisites=_string_list(entry, "prerequisites", where),
        objectives=objectives,
        first_run_minutes_cpu=first_run,
    )


def _notebooks_on_disk(root: Path) -> list[str]:
    """Notebooks under ``chapters/`` (relative POSIX paths), skipping checkpoints and
    hidden folders."""
    folder = root / CHAPTERS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*.ipynb"):
        rel = path.relative_to(root)
        if any(part == ".ipynb_checkpoints" or part.startswith(".") for part in rel.parts[:-1]):
            continue
        found.append(rel.as_posix())
    return sorted(found)


def manifest_from_dict(
    data: Mapping[str, Any], root: str | Path, *, check_files: bool = True
) -> Manifest:
    """Validate a parsed ``book.toml`` and build the :class:`Manifest`.

    Args:
        data: the TOML document as a dictionary (``[course]``, ``[[stages]]``, ``[[chapters]]``).
        root: the folder the chapter files are relative to (the repository root).
        check_files: also check that every chapter file exists and that every notebook
            under ``chapters/`` is listed. The tooling always checks; ``False`` is for
            examples and for reading the structure before the notebooks exist.

    Raises:
        ValueError: naming the entry and what was expected, for a missing or unknown key,
            an empty objective list, a non-positive ``minutes_cpu``, a duplicate id or file,
            an unknown stage, a prerequisite that is unknown or not earlier in the order,
            chapters out of stage order, a missing chapter file or an unlisted notebook.
    """
    root = Path(root)
    data = _require_table(data, "the document")
    for table in ("course", "stages", "chapters"):
        if table not in data:
            raise ValueError(
                f"{MANIFEST_NAME}: missing required table [{table}]"
                if table == "course"
                else f"{MANIFEST_NAME}: missing required array of tables [[{table}]]"
            )

    course_table = _require_table(data["course"], "[course]")
    _check_keys(course_table, _COURSE_KEYS, "[course]")
    course = Course(**{k: _string(course_table, k, "[course]") for k in _COURSE_KEYS})

    if not isinstance(data["stages"], list) or not data["stages"]:
        raise ValueError(f"{MANIFEST_NAME}: [[stages]] must list at least one stage")
    stages: list[Stage] = []
    for i, raw in enumerate(data["stages"]):
        where = _where("stages", i, raw)
        entry = _require_table(raw, where)
        _check_keys(entry, _STAGE_KEYS, where)
        stage = Stage(**{k: _string(entry, k, where) for k in _STAGE_KEYS})
        if any(s.id == stage.id for s in stages):
            raise ValueError(f"{MANIFEST_NAME}: duplicate stage id {stage.id!r} in {where}")
        stages.append(stage)
    stage_order = {s.id: i for i, s in enumerate(stages)}

    if not isinstance(data["chapters"], list):
        raise ValueError(f"{MANIFEST_NAME}: [[chapters]] must be an array of tables")
    chapters: list[Chapter] = []
    for i, raw in enumerate(data["chapters"]):
        where = _where("chapters", i, raw)
        chapter = _parse_chapter(_require_table(raw, where), where)
        for earlier in chapters:
            if earlier.id == chapter.id:
                raise ValueError(f"{MANIFEST_NAME}: duplicate chapter id {chapter.id!r} in {where}")
            if earlier.file == chapter.file:
                raise ValueError(
                    f"{MANIFEST_NAME}: duplicate chapter file {chapter.file!r} in {where} "
                    f"(already used by chapter {earlier.id!r})"
                )
        if chapter.stage not in stage_order:
            raise ValueError(
                f"{MANIFEST_NAME}: {where} names unknown stage {chapter.stage!r}; "
                f"known stages: {', '.join(stage_order)}"
            )
        if chapters and stage_order[chapter.stage] < stage_order[chapters[-1].stage]:
            raise ValueError(
                f"{MANIFEST_NAME}: {where} is in stage {chapter.stage!r} but comes after chapter "
                f"{chapters[-1].id!r} of the later stage {chapters[-1].stage!r}; list chapters "
                "grouped by stage, in the order of [[stages]]"
            )
        earlier_ids = [c.id for c in chapters]
        for prereq in chapter.prerequisites:
            if prereq == chapter.id:
                raise ValueError(f"{MANIFEST_NAME}: {where} lists itself as a prerequisite")
            if prereq not in earlier_ids:
                later = any(
                    isinstance(r, Mapping) and r.get("id") == prereq
                    for r in data["chapters"][i + 1 :]
                )
                reason = "comes later in the order" if later else "is not a chapter id"
                raise ValueError(
                    f"{MANIFEST_NAME}: {where} has prerequisite {prereq!r}, which {reason}; "
                    f"a prerequisite must be an earlier chapter (earlier ids: "
                    f"{', '.join(earlier_ids) or 'none'})"
                )
        chapters.append(chapter)

    if check_files:
        for i, chapter in enumerate(chapters):
            if not (root / chapter.file).is_file():
                raise ValueError(
                    f"{MANIFEST_NAME}: chapters[{i}] (id {chapter.id!r}) file {chapter.file!r} "
                    f"does not exist under {root}"
                )
        listed = {c.file for c in chapters}
        unlisted = [nb for nb in _notebooks_on_disk(root) if nb not in listed]
        if unlisted:
            raise ValueError(
                f"{MANIFEST_NAME}: notebook(s) {', '.join(unlisted)} are in {CHAPTERS_DIR}/ but "
                f"not listed; add a [[chapters]] entry for each (or move drafts out of "
                f"{CHAPTERS_DIR}/)"
            )

    return Manifest(course=course, stages=tuple(stages), chapters=tuple(chapters), root=root)


def load_manifest(path: str | Path | None = None, *, check_files: bool = True) -> Manifest:
    """Read and validate ``book.toml``.

    Args:
        path: the manifest; default ``book.toml`` in :func:`repo_root`. A relative path is
            resolved against the repository root, not the working directory.
        check_files: see :func:`manifest_from_dict`.

    Raises:
        ValueError: the manifest is missing, is not valid TOML, or fails validation.
    """
    if _toml is None:  # pragma: no cover - Python 3.10 without tomli
        raise ValueError(
            "reading book.toml needs tomllib (Python >= 3.11) or the 'tomli' package on "
            f"Python {sys.version_info.major}.{sys.version_info.minor}: pip install tomli"
        )
    path = Path(MANIFEST_NAME if path is None else path)
    if not path.is_absolute():
        path = repo_root() / path
    if not path.is_file():
        raise ValueError(f"expected the course manifest at {path}, but there is no such file")
    try:
        with path.open("rb") as handle:
            data = _toml.load(handle)
    except _toml.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error
    return manifest_from_dict(data, root=path.parent, check_files=check_files)


# --------------------------------------------------------------------------- course map


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _minutes(value: float) -> str:
    return f"{value:g}"


def render_course_map(manifest: Manifest) -> str:
    """The README's course map as markdown: per stage a heading (English · 中文) and a
    table of its chapters (number, linked title, Chinese title, CPU minutes, objectives).

    The text is what ``make readme`` puts between ``<!-- course-map:start -->`` and
    ``<!-- course-map:end -->`` in README.md; the hygiene tests compare the two.
    """
    total = sum(c.minutes_cpu for c in manifest.chapters)
    lines = [
        "<!-- Generated from book.toml by `make readme`: edit book.toml, not this block. -->",
        "",
        f"{len(manifest.chapters)} chapters, about {_minutes(total)} minutes of notebook run "
        "time on a laptop CPU in all (classroom profile), once the models they load are cached; "
        "a first run trains them (see Trained models).",
    ]
    for stage in manifest.stages:
        chapters = [c for c in manifest.chapters if c.stage == stage.id]
        lines += ["", f"### {stage.title} · {stage.title_zh}", ""]
        if not chapters:
            lines.append("_No chapters yet._")
            continue
        lines += [
            "| # | Chapter | 章节 | CPU min | Objectives |",
            "|---|---|---|--:|---|",
        ]
        for c in chapters:
            link = f"[{_cell(c.title)}]({quote(c.file)})"
            objectives = "; ".join(_cell(o).rstrip(".") for o in c.objectives)
            lines.append(
                f"| {_cell(c.id)} | {link} | {_cell(c.title_zh)} | {_minutes(c.minutes_cpu)}"
                f"{f' (first run {_minutes(c.first_run_minutes_cpu)})' if c.first_run_minutes_cpu else ''} "
                f"| {objectives} |"
            )
    lines.append("")
    return "\n".join(lines)


def _find_markers(text: str, source: str) -> tuple[int, int] | None:
    """Positions of the course-map markers, or None when neither is present."""
    start, end = text.count(COURSE_MAP_START), text.count(COURSE_MAP_END)
    if start == 0 and end == 0:
        return None
    if start != 1 or end != 1 or text.index(COURSE_MAP_START) > text.index(COURSE_MAP_END):
        raise ValueError(
            f"{source}: expected exactly one {COURSE_MAP_START} followed by one "
            f"{COURSE_MAP_END}, found {start} start and {end} end marker(s)"
        )
    return text.index(COURSE_MAP_START), text.index(COURSE_MAP_END)


def course_map_block(readme_text: str, source: str = "README.md") -> str | None:
    """The text between the course-map markers of a README (None when there are no markers)."""
    found = _find_markers(readme_text, source)
    if found is None:
        return None
    start, end = found
    return readme_text[start + len(COURSE_MAP_START) : end].strip("\n") + "\n"


def replace_course_map(readme_text: str, course_map: str, source: str = "README.md") -> str:
    """The README with the block between the markers replaced by ``course_map``.

    A README without markers gets a "Course map" section with the markers appended.
    """
    block = f"{COURSE_MAP_START}\n{course_map.strip(chr(10))}\n{COURSE_MAP_END}"
    found = _find_markers(readme_text, source)
    if found is None:
        return readme_text.rstrip("\n") + "\n\n## Course map · 课程地图\n\n" + block + "\n"
    start, end = found
    return readme_text[:start] + block + readme_text[end + len(COURSE_MAP_END) :]


# --------------------------------------------------------------------------- command line


def _cmd_check(manifest: Manifest) -> None:
    total = sum(c.minutes_cpu for c in manifest.chapters)
    print(
        f"{MANIFEST_NAME} OK: {manifest.course.title} ({manifest.course.title_zh}) "
        f"v{manifest.course.version}, {len(manifest.stages)} stages, "
        f"{len(manifest.chapters)} chapters, {_minutes(total)} CPU-minutes in all"
    )
    for stage in manifest.stages:
        chapters = manifest.chapters_in(stage.id)
        print(f"  {stage.title} · {stage.title_zh}: {len(chapters)} chapter(s)")
        for c in chapters:
            print(f"    {c.id}  {c.file}  ({_minutes(c.minutes_cpu)} min)  {c.title} · {c.title_zh}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.manifest", description="Validate and use book.toml."
    )
    parser.add_argument(
        "--manifest", default=None, help="path to book.toml (default: the repository's)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="validate book.toml and print a summary")
    commands.add_parser("notebooks", help="print the chapter notebooks in order, space-separated")
    readme = commands.add_parser("readme", help="print the course map, or write it into a README")
    readme.add_argument("--write", metavar="README", help="replace the course-map block in this file")
    args = parser.parse_args(argv)

    try:
        manifest = load_manifest(args.manifest)
        if args.command == "check":
            _cmd_check(manifest)
        elif args.command == "notebooks":
            print(" ".join(c.file for c in manifest.chapters))
        else:
            course_map = render_course_map(manifest)
            if args.write is None:
                print(course_map, end="")
            else:
                target = Path(args.write)
                old = target.read_text(encoding="utf-8") if target.exists() else ""
                new = replace_course_map(old, course_map, source=str(target))
                if new != old:
                    target.write_text(new, encoding="utf-8")
                    print(f"course map written to {target}")
                else:
                    print(f"course map in {target} already up to date")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

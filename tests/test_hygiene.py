"""Repository hygiene: the checks a reviewer would otherwise do by hand.

(a) notebooks are stored without outputs (nbstripout clean); (b) chapters/ and book.toml
agree; (c) the README's course map is generated from book.toml; (d) environment.yml names the
packages of pyproject.toml; (e) notebooks use the course kernel; (f) every chapter follows the
template of the course plan, with nbgrader-marked exercises; (g) no absolute paths and no
downloads in course_lib or the chapters.

Each failure message says what to run or change. The checks run on whatever notebooks exist;
the checkers themselves are also tested on small synthetic notebooks, so none is vacuous.
"""

from __future__ import annotations

import difflib
import functools
import io
import numbers
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib.manifest import (
    Chapter,
    course_map_block,
    load_manifest,
    render_course_map,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
CHAPTERS_DIR = REPO / "chapters"
KERNEL_NAME = "diffusion-course"


# --------------------------------------------------------------------------- what exists


def _structure():
    """book.toml read without the file checks (None when it does not even parse)."""
    try:
        return load_manifest(REPO / "book.toml", check_files=False)
    except ValueError:
        return None


def _notebooks_on_disk() -> list[str]:
    """Notebooks under chapters/ as relative POSIX paths, checkpoints and hidden folders
    excluded (found independently of course_lib.manifest)."""
    found = []
    for path in CHAPTERS_DIR.rglob("*.ipynb") if CHAPTERS_DIR.is_dir() else []:
        rel = path.relative_to(REPO)
        if not any(part.startswith(".") for part in rel.parts[:-1]):
            found.append(rel.as_posix())
    return sorted(found)


MANIFEST = _structure()
LISTED = [c.file for c in MANIFEST.chapters] if MANIFEST else []
NOTEBOOKS = sorted(set(_notebooks_on_disk()) | {f for f in LISTED if (REPO / f).is_file()})
CHAPTERS = [c for c in MANIFEST.chapters if (REPO / c.file).is_file()] if MANIFEST else []


@functools.lru_cache(maxsize=None)
def read_notebook(rel: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / rel, as_version=4)


# --------------------------------------------------------------------------- (b) manifest


def test_book_toml_is_valid_and_lists_exactly_the_notebooks():
    try:
        load_manifest(REPO / "book.toml")
        error = None
    except ValueError as caught:
        error = caught
    assert error is None, (
        f"{error}\nFix the [[chapters]] entries of book.toml or the files in chapters/, "
        "then check with `python -m course_lib.manifest check`."
    )


def test_chapters_folder_and_book_toml_agree():
    assert MANIFEST is not None, "book.toml does not load: run `python -m course_lib.manifest check`"
    on_disk = set(_notebooks_on_disk())
    unlisted = sorted(on_disk - set(LISTED))
    missing = sorted(set(LISTED) - on_disk)
    assert not unlisted, f"notebooks not listed in book.toml: {unlisted}; add a [[chapters]] entry"
    assert not missing, f"book.toml lists notebooks that do not exist: {missing}"


def test_there_are_notebooks_to_check_once_book_toml_lists_chapters():
    """Guards every per-notebook test below against running over an empty list."""
    assert MANIFEST is not None and MANIFEST.chapters, "book.toml lists no chapters"
    assert NOTEBOOKS, (
        f"book.toml lists {len(LISTED)} chapter(s) but chapters/ holds no notebook, so the "
        "notebook checks in this file would check nothing"
    )


# --------------------------------------------------------------------------- (a) outputs


def output_problems(nb) -> list[str]:
    """Cells that carry outputs or execution counts."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has execution_count {cell.execution_count}")
    return problems


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(rel):
    problems = output_problems(read_notebook(rel))
    assert not problems, f"{rel}: {'; '.join(problems)}. Run `make strip` before committing."


def _nbstripout() -> str | None:
    local = Path(sys.executable).parent / "nbstripout"
    return str(local) if local.is_file() else shutil.which("nbstripout")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_no_control_characters_in_sources(path):
    """A control character in a source is almost always a lost backslash ("\\v" of \\varepsilon in a
    Python string written without r"...")."""
    import re

    nb = nbformat.read(REPO / path, as_version=4)
    bad = [(i, repr(c.source[max(0, m.start() - 20):m.end() + 10]))
           for i, c in enumerate(nb.cells) for m in re.finditer(r"[\x00-\x08\x0b-\x1f\x7f]", c.source)]
    assert not bad, f"{path}: control characters in cells {bad}"


def test_nbstripout_verify_passes():
    tool = _nbstripout()
    if tool is None:
        pytest.skip("nbstripout is not installed in this environment (pip install nbstripout)")
    if not NOTEBOOKS:
        pytest.skip("no notebooks yet (test_there_are_notebooks_to_check... reports this)")
    done = subprocess.run(
        [tool, "--verify", *NOTEBOOKS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"nbstripout --verify would change these notebooks:\n{done.stdout}{done.stderr}"
        "Run `make strip` (it removes outputs, execution counts and widget state and "
        "renumbers cell ids) and commit the result."
    )


# --------------------------------------------------------------------------- (c) README


def test_readme_course_map_is_generated_from_book_toml():
    assert MANIFEST is not None, "book.toml does not load: run `python -m course_lib.manifest check`"
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    block = course_map_block(text)
    assert block is not None, (
        "README.md has no <!-- course-map:start --> / <!-- course-map:end --> block: run "
        "`make readme` (it adds the block)"
    )
    expected = render_course_map(MANIFEST)
    diff = "".join(
        difflib.unified_diff(
            block.splitlines(keepends=True), expected.splitlines(keepends=True),
            "README.md", "book.toml", n=0,
        )
    )
    assert block == expected, (
        f"README.md's course map is out of date with book.toml: run `make readme`.\n{diff[:2000]}"
    )


# --------------------------------------------------------------------------- (d) environment.yml

CONDA_TO_PIP = {"pytorch": "torch", "pytorch-cpu": "torch", "matplotlib-base": "matplotlib"}
IGNORED = {"python", "pip"}
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 name normalisation (Scikit_Learn -> scikit-learn)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = NAME.match(spec)
    if not match:
        raise ValueError(f"expected a requirement like 'numpy>=1.24', got {spec!r}")
    return normalise(match.group(1))


def pip_names(pyproject: dict) -> set[str]:
    project = pyproject["project"]
    specs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return {requirement_name(s) for s in specs}


def conda_names(environment: dict) -> set[str]:
    names = set()
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):  # the pip: section
            for spec in entry.get("pip", []):
                if not spec.strip().startswith("-"):  # "-e ." installs the course itself
                    names.add(requirement_name(spec))
            continue
        name = requirement_name(str(entry).split("::")[-1])
        names.add(CONDA_TO_PIP.get(name, name))
    return names - IGNORED


def test_environment_yml_names_the_packages_of_pyproject():
    environment = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert environment["name"] == KERNEL_NAME
    assert "conda-forge" in environment["channels"]
    plain = [str(d) for d in environment["dependencies"] if not isinstance(d, dict)]
    assert any(re.fullmatch(r"python\s*=\s*3\.11(\.\*)?", d) for d in plain), (
        f"environment.yml must pin python=3.11, has {plain}"
    )
    assert "pip" in plain
    pip_section = [d for d in environment["dependencies"] if isinstance(d, dict)]
    assert pip_section and "-e ." in pip_section[0].get("pip", []), (
        "environment.yml must install the course itself with a pip section `- -e .`"
    )
    wanted, have = pip_names(pyproject), conda_names(environment)
    assert have == wanted, (
        "environment.yml and pyproject.toml (dependencies + [test] extra) disagree: "
        f"missing from environment.yml: {sorted(wanted - have)}; "
        f"only in environment.yml: {sorted(have - wanted)}. Edit environment.yml to match "
        "(conda-forge names: torch -> pytorch)."
    )


def test_environment_name_mapping():
    env = {"dependencies": ["python=3.11", "pip", "pytorch>=2.2", "Scikit_Learn", "conda-forge::tqdm",
                            {"pip": ["-e .", "nbval>=0.11"]}]}
    assert conda_names(env) == {"torch", "scikit-learn", "tqdm", "nbval"}
    assert pip_names({"project": {"dependencies": ["torch>=2.2"],
                                  "optional-dependencies": {"test": ["pytest-xdist>=3"]}}}) == {
        "torch", "pytest-xdist"}


# --------------------------------------------------------------------------- (e) kernel


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_notebook_uses_the_course_kernel(rel):
    name = read_notebook(rel).metadata.get("kernelspec", {}).get("name")
    assert name == KERNEL_NAME, (
        f"{rel}: kernelspec name is {name!r}, expected {KERNEL_NAME!r}. In JupyterLab pick "
        "Kernel > Change Kernel > 'Diffusion course (Python 3)' (registered by `make setup`) "
        "and save, or set metadata.kernelspec.name in the notebook."
    )


# --------------------------------------------------------------------------- (f) template

SECTIONS = [
    "Intuition", "Derivation", "From scratch", "Experiment", "Explorer",
    "Exercises", "Summary", "Glossary", "References",
]
OPTIONAL_SECTIONS = {"00": {"Explorer"}}
RUN_TIME = re.compile(r"run[\s-]?time", re.IGNORECASE)
DURATION = re.compile(r"\d+(\.\d+)?\s*(-\s*\d+\s*)?(min|minutes?|s|sec|seconds?)\b", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def headings(nb) -> list[str]:
    """Markdown headings in order (lines starting with #, outside fenced code)."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if FENCE.match(line):
                fenced = not fenced
            elif not fenced and (match := HEADING.match(line)):
                found.append(match.group(1))
    return found


def section_problems(found: list[str], required: list[str]) -> list[str]:
    """Which required sections are missing or out of order (matched case-insensitively as a
    substring of a heading, each after the previous one)."""
    problems, position, previous = [], 0, "the title"
    for section in required:
        hits = [i for i, h in enumerate(found) if section.lower() in h.lower()]
        after = [i for i in hits if i >= position]
        if after:
            position, previous = after[0] + 1, section
        elif hits:
            problems.append(
                f"section '{section}' must come after '{previous}' but its heading "
                f"'{found[hits[0]]}' comes before it"
            )
        else:
            problems.append(f"section '{section}' is missing (no heading contains '{section}')")
    return problems


def first_cell_problems(nb, chapter: Chapter) -> list[str]:
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        return ["the first cell must be a markdown cell with the title, objectives, "
                "prerequisites and run time"]
    text = nb.cells[0].source
    problems = [
        f"the first cell lacks {what}"
        for what, present in [
            (f"the English title {chapter.title!r} from book.toml", chapter.title in text),
            (f"the Chinese title {chapter.title_zh!r} from book.toml", chapter.title_zh in text),
            ("the words 'Learning objectives'", "learning objectives" in text.lower()),
            ("the word 'Prerequisites'", "prerequisites" in text.lower()),
            ("an expected run time (e.g. 'Expected run time: about 3 minutes on a laptop CPU')",
             bool(RUN_TIME.search(text) and DURATION.search(text))),
        ]
        if not present
    ]
    return problems


def _positive(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def exercise_problems(nb, minimum: int = 3) -> list[str]:
    """nbgrader markup: solution cells, graded test cells, unique grade ids."""
    problems, solutions, tests, ids = [], 0, 0, {}
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader")
        has_marker = BEGIN in cell.source or END in cell.source
        if meta is None:
            if has_marker:
                problems.append(
                    f"cell {index} has '{BEGIN}' but no nbgrader metadata with solution: true "
                    "(the solution would leak into the student version)"
                )
            continue
        grade_id = meta.get("grade_id")
        if not isinstance(grade_id, str) or not grade_id.strip():
            problems.append(f"cell {index}: nbgrader metadata needs a non-empty grade_id")
        elif grade_id in ids:
            problems.append(f"cell {index}: grade_id {grade_id!r} already used by cell {ids[grade_id]}")
        else:
            ids[grade_id] = index
        if meta.get("solution") is True:
            if cell.cell_type == "code":
                begin, end = cell.source.find(BEGIN), cell.source.find(END)
                if begin < 0 or end < begin:
                    problems.append(
                        f"cell {index} ({grade_id}): a solution cell needs '{BEGIN}' then '{END}'"
                    )
                else:
                    solutions += 1
        elif has_marker:
            problems.append(f"cell {index} ({grade_id}) has '{BEGIN}' but is not a solution cell")
        if meta.get("grade") is True and meta.get("solution") is not True:
            ok = True
            if cell.cell_type != "code":
                problems.append(f"cell {index} ({grade_id}): a graded test cell must be a code cell")
                ok = False
            if not _positive(meta.get("points")):
                problems.append(
                    f"cell {index} ({grade_id}): graded test cell needs points > 0, "
                    f"has {meta.get('points')!r}"
                )
                ok = False
            if meta.get("locked") is not True:
                problems.append(f"cell {index} ({grade_id}): graded test cell needs locked: true")
                ok = False
            tests += ok
    for index, cell in enumerate(nb.cells):  # answers and expected outcomes never reach students
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("*Answer") and not (
                cell.get("metadata", {}).get("nbgrader", {}).get("solution") is True):
            problems.append(f"cell {index} gives an answer in plain markdown: make it an nbgrader solution cell")
    if solutions < minimum:
        problems.append(
            f"{solutions} exercise solution cell(s) (code, nbgrader solution: true, with "
            f"'{BEGIN}'/'{END}'); at least {minimum} are required"
        )
    if tests < minimum:
        problems.append(
            f"{tests} graded test cell(s) (code, nbgrader grade: true, points > 0, locked: true); "
            f"at least {minimum} are required"
        )
    return problems


def template_problems(nb, chapter: Chapter) -> list[str]:
    required = [s for s in SECTIONS if s not in OPTIONAL_SECTIONS.get(chapter.id, set())]
    return (
        first_cell_problems(nb, chapter)
        + section_problems(headings(nb), required)
        + exercise_problems(nb)
    )


TEMPLATE_HELP = (
    "Every chapter follows the template of the course plan: a first markdown cell with the "
    "English and Chinese titles, 'Learning objectives', 'Prerequisites' and the expected run "
    "time; then headings containing, in order, " + ", ".join(SECTIONS) + " (Explorer optional "
    "in chapter 00); at least 3 exercises marked up for nbgrader."
)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.id for c in CHAPTERS])
def test_chapter_follows_the_template(chapter):
    nb = read_notebook(chapter.file)
    problems = template_problems(nb, chapter)
    assert not problems, (
        f"{chapter.file}:\n  - " + "\n  - ".join(problems)
        + f"\nHeadings found: {headings(nb)}\n{TEMPLATE_HELP}"
    )


def _synthetic_chapter(chapter_id: str = "02") -> tuple[nbformat.NotebookNode, Chapter]:
    chapter = Chapter(
        id=chapter_id, stage="foundations", file=f"chapters/{chapter_id}_x.ipynb",
        title="DDPM: learning to denoise", title_zh="DDPM：学习去噪", minutes_cpu=3,
        prerequisites=(), objectives=("x",),
    )
    cells = [new_markdown_cell(
        "# DDPM: learning to denoise · DDPM：学习去噪\n\n**Learning objectives**\n- a\n\n"
        "**Prerequisites**: chapter 01\n\n**Expected run time:** about 3 minutes on a laptop CPU"
    )]
    for title in ["1. Intuition", "2. Derivation in SymPy", "3. From scratch, then the library",
                  "4. Experiment", "5. Explorer", "6. Exercises"]:
        cells.append(new_markdown_cell(f"## {title}\n\n```python\n# not a heading\n```"))
    for k in range(3):
        cells.append(new_code_cell(
            f"def f{k}():\n    ### BEGIN SOLUTION\n    return {k}\n    ### END SOLUTION",
            metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": f"ex{k}",
                                   "locked": False}}))
        cells.append(new_code_cell(
            f"assert f{k}() == {k}",
            metadata={"nbgrader": {"solution": False, "grade": True, "grade_id": f"test{k}",
                                   "points": 1, "locked": True}}))
    for title in ["7. Summary", "8. Glossary · 术语表", "9. References"]:
        cells.append(new_markdown_cell(f"## {title}"))
    return new_notebook(cells=cells), chapter


def test_template_checker_accepts_a_conforming_notebook():
    nb, chapter = _synthetic_chapter()
    assert template_problems(nb, chapter) == []


def test_template_checker_names_what_is_missing():
    nb, chapter = _synthetic_chapter()
    nb.cells[0].source = "# DDPM: learning to denoise\n\nObjectives: a"
    nb.cells[2].source = "## 2. Maths"  # no "Derivation"
    nb.cells[4].source, nb.cells[5].source = "## 5. Explorer", "## 4. Experiment"
    nb.cells[8].metadata.nbgrader["points"] = 0
    nb.cells[9].metadata.nbgrader["grade_id"] = "ex0"
    problems = template_problems(nb, chapter)
    assert problems == [
        "the first cell lacks the Chinese title 'DDPM：学习去噪' from book.toml",
        "the first cell lacks the words 'Learning objectives'",
        "the first cell lacks the word 'Prerequisites'",
        "the first cell lacks an expected run time (e.g. 'Expected run time: about 3 minutes "
        "on a laptop CPU')",
        "section 'Derivation' is missing (no heading contains 'Derivation')",
        "section 'Explorer' must come after 'Experiment' but its heading '5. Explorer' comes "
        "before it",
        "cell 8 (test0): graded test cell needs points > 0, has 0",
        "cell 9: grade_id 'ex0' already used by cell 7",
        "2 graded test cell(s) (code, nbgrader grade: true, points > 0, locked: true); "
        "at least 3 are required",
    ]


def test_template_checker_explorer_is_optional_only_in_chapter_00():
    nb, chapter = _synthetic_chapter("00")
    nb.cells = [c for c in nb.cells if "Explorer" not in c.source]
    assert template_problems(nb, chapter) == []
    nb, chapter = _synthetic_chapter("01")
    nb.cells = [c for c in nb.cells if "Explorer" not in c.source]
    assert template_problems(nb, chapter) == [
        "section 'Explorer' is missing (no heading contains 'Explorer')"
    ]


def test_template_checker_catches_leaking_and_malformed_solutions():
    nb, _ = _synthetic_chapter()
    nb.cells[7].metadata = {}  # solution markers without nbgrader metadata
    nb.cells[9].source = "def f1():\n    ### END SOLUTION\n    ### BEGIN SOLUTION\n"
    problems = exercise_problems(nb)
    assert problems[0].startswith("cell 7 has '### BEGIN SOLUTION' but no nbgrader metadata")
    assert problems[1] == (
        "cell 9 (ex1): a solution cell needs '### BEGIN SOLUTION' then '### END SOLUTION'"
    )
    assert problems[2].startswith("1 exercise solution cell(s)")


# --------------------------------------------------------------------------- (g) paths, downloads

ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~/-])(?:/root\b|/(?:home|Users|work|mnt|tmp)/\w)[^\s'\"`)\]]*"
    r"|\b[A-Za-z]:\\{1,2}(?:Users|Documents|Windows)\b[^\s'\"]*"
)
DOWNLOAD = re.compile(
    r"\burllib\s*\.\s*request\b|\bfrom\s+urllib\s+import\s+request\b|\burlopen\s*\("
    r"|\burlretrieve\s*\(|\bimport\s+requests\b|\brequests\s*\.\s*(get|post|request|Session)\b"
    r"|\bdownload\s*=\s*True\b|\btorch\s*\.\s*hub\b|\bload_state_dict_from_url\b"
    r"|\bhf_hub_download\b|\bhttpx\s*\.\s*(get|stream|Client)\b"
)
SHELL_DOWNLOAD = re.compile(r"\b(wget|curl|pip\s+install|conda\s+install|git\s+clone)\b")


def code_lines_without_strings(source: str) -> dict[int, str]:
    """Python source, line by line, with comments and string literals removed (docstrings
    may mention urllib.request; code may not call it). Falls back to the raw lines if the
    source does not tokenize."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return dict(enumerate(source.splitlines(), start=1))
    literal = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    lines: dict[int, list[str]] = {}
    for token in tokens:
        if token.type not in literal and token.string.strip():
            lines.setdefault(token.start[0], []).append(token.string)
    return {number: " ".join(parts) for number, parts in lines.items()}


def scan_python(source: str, where: str, *, notebook: bool = False) -> list[str]:
    """Absolute paths anywhere in the text; download calls in the code."""
    problems = []
    for number, line in enumerate(source.splitlines(), start=1):
        if match := ABSOLUTE_PATH.search(line):
            problems.append(
                f"{where} line {number}: absolute path {match.group(0)!r}; use paths relative "
                "to the repository (course_lib.manifest.repo_root()) or tempfile"
            )
    code_lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.lstrip()
        if notebook and (stripped.startswith(("!", "%")) or source.startswith("%%")):
            if SHELL_DOWNLOAD.search(line):
                problems.append(
                    f"{where} line {number}: shell download or install {stripped!r}; the course "
                    "runs offline and installs only through `make setup`"
                )
            code_lines.append("")
        else:
            code_lines.append(line)
    for number, code in code_lines_without_strings("\n".join(code_lines)).items():
        if DOWNLOAD.search(code):
            problems.append(
                f"{where} line {number}: download call {code_lines[number - 1].strip()!r}; "
                "the course never "
                "downloads at run time (use its offline data and the models it trains itself)"
            )
    return problems


def scan_notebook(nb, rel: str) -> list[str]:
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            problems += scan_python(cell.source, f"{rel} cell {index}", notebook=True)
        else:  # markdown: absolute paths only (references may name URLs)
            for number, line in enumerate(cell.source.splitlines(), start=1):
                if match := ABSOLUTE_PATH.search(line):
                    problems.append(
                        f"{rel} cell {index} line {number}: absolute path {match.group(0)!r}"
                    )
    return problems


LIBRARY_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "course_lib").rglob("*.py"))


def test_library_has_no_absolute_paths_or_downloads():
    assert LIBRARY_FILES, "course_lib has no Python files?"
    problems = []
    for rel in LIBRARY_FILES:
        problems += scan_python((REPO / rel).read_text(encoding="utf-8"), rel)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_notebook_has_no_absolute_paths_or_downloads(rel):
    problems = scan_notebook(read_notebook(rel), rel)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import urllib.request\nurllib.request.urlretrieve(url, 'x')",
        "from urllib import request",
        "import requests\nr = requests.get(url)",
        "ds = torchvision.datasets.MNIST('data', download=True)",
        "model = torch.hub.load('a', 'b')",
        "open('/home/alice/data.pt')",
        "CACHE = '/root/.cache/course'",
        "path = 'C:\\\\Users\\\\me\\\\x.pt'",
    ],
)
def test_scanner_flags_paths_and_downloads(source):
    assert scan_python(source, "snippet")


def test_scanner_allows_references_and_relative_paths():
    source = (
        '"""Ho et al. 2020, https://arxiv.org/abs/2006.11239; never calls urllib.request."""\n'
        "# download=True is what we avoid\n"
        "path = repo_root() / 'chapters' / 'data'  # relative: fine\n"
        "ratio = a/b/c\n"
    )
    assert scan_python(source, "snippet") == []


def test_scanner_names_the_place_and_the_whole_path():
    assert scan_python("x = 1\ncache = '/root/.cache/course'", "m.py") == [
        "m.py line 2: absolute path '/root/.cache/course'; use paths relative to the "
        "repository (course_lib.manifest.repo_root()) or tempfile"
    ]
    assert scan_python("!pip install torch", "nb cell 0", notebook=True) == [
        "nb cell 0 line 1: shell download or install '!pip install torch'; the course runs "
        "offline and installs only through `make setup`"
    ]
    nb = new_notebook(cells=[new_markdown_cell("See /home/me/notes."), new_code_cell("x = 1")])
    assert scan_notebook(nb, "n.ipynb") == [
        "n.ipynb cell 0 line 1: absolute path '/home/me/notes.'"
    ]

"""Tests of course_lib.manifest (book.toml) and course_lib.report (the benchmark's recorder).

Bad manifests are written into tmp_path beside a fake chapters/ folder; each bad case must
raise a ValueError whose message names the problem.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.manifest import (
    COURSE_MAP_END,
    COURSE_MAP_START,
    Chapter,
    course_map_block,
    load_manifest,
    main,
    manifest_from_dict,
    render_course_map,
    replace_course_map,
    repo_root,
)
from course_lib.report import read_records, record, report_to

REPO = Path(__file__).resolve().parent.parent

GOOD = {
    "course": {"title": "Demo course", "title_zh": "演示课程", "version": "0.1.0", "license": "MIT"},
    "stages": [
        {"id": "foundations", "title": "Stage 1 · Foundations", "title_zh": "第一阶段：基础入门"},
        {"id": "theory", "title": "Stage 2 · Theory", "title_zh": "第二阶段：理论深化"},
    ],
    "chapters": [
        {
            "id": "00",
            "stage": "foundations",
            "file": "chapters/00_start.ipynb",
            "title": "Start here",
            "title_zh": "从这里开始",
            "minutes_cpu": 2,
            "prerequisites": [],
            "objectives": ["Check the device", "Pick a profile"],
        },
        {
            "id": "01",
            "stage": "foundations",
            "file": "chapters/01_forward.ipynb",
            "title": "The forward process",
            "title_zh": "前向加噪过程",
            "minutes_cpu": 2.5,
            "prerequisites": ["00"],
            "objectives": ["Derive q(x_t | x_0)."],
        },
        {
            "id": "04",
            "stage": "theory",
            "file": "chapters/04_elbo.ipynb",
            "title": "Posterior and ELBO",
            "title_zh": "后验与 ELBO",
            "minutes_cpu": 3,
            "prerequisites": ["00", "01"],
            "objectives": ["Derive the posterior"],
        },
    ],
}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_manifest(root: Path, data: dict, *, make_files: bool = True) -> Path:
    """Write ``data`` as book.toml into ``root`` and (by default) an empty notebook for
    every chapter file."""
    lines = []
    if "course" in data:
        lines.append("[course]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["course"].items()]
    for table in ("stages", "chapters"):
        for entry in data.get(table, []):
            lines.append(f"\n[[{table}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    path = root / "book.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "chapters").mkdir(exist_ok=True)
    if make_files:
        for chapter in data.get("chapters", []):
            if isinstance(chapter.get("file"), str) and chapter["file"].startswith("chapters/"):
                (root / chapter["file"]).write_text("{}", encoding="utf-8")
    return path


@pytest.fixture
def good():
    return copy.deepcopy(GOOD)


# --------------------------------------------------------------------------- good manifests


def test_good_manifest_loads_with_every_field(tmp_path, good):
    manifest = load_manifest(write_manifest(tmp_path, good))
    assert manifest.root == tmp_path
    assert manifest.course.title_zh == "演示课程" and manifest.course.license == "MIT"
    assert [s.id for s in manifest.stages] == ["foundations", "theory"]
    assert [c.id for c in manifest.chapters] == ["00", "01", "04"]
    chapter = manifest.chapter("04")
    assert chapter == Chapter(
        id="04",
        stage="theory",
        file="chapters/04_elbo.ipynb",
        title="Posterior and ELBO",
        title_zh="后验与 ELBO",
        minutes_cpu=3,
        prerequisites=("00", "01"),
        objectives=("Derive the posterior",),
    )
    assert [c.id for c in manifest.chapters_in("foundations")] == ["00", "01"]
    assert manifest.notebook_paths()[1] == tmp_path / "chapters/01_forward.ipynb"


def test_checkpoint_notebooks_are_ignored(tmp_path, good):
    path = write_manifest(tmp_path, good)
    (tmp_path / "chapters/.ipynb_checkpoints").mkdir()
    (tmp_path / "chapters/.ipynb_checkpoints/00_start-checkpoint.ipynb").write_text("{}")
    assert len(load_manifest(path).chapters) == 3


def test_unknown_chapter_and_stage_lookups_name_the_known_ids(tmp_path, good):
    manifest = load_manifest(write_manifest(tmp_path, good))
    with pytest.raises(ValueError, match=r"no chapter with id '99'.*00, 01, 04"):
        manifest.chapter("99")
    with pytest.raises(ValueError, match=r"no stage with id 'nope'.*foundations, theory"):
        manifest.chapters_in("nope")


def test_real_book_toml_is_well_formed():
    manifest = load_manifest(check_files=False)
    assert manifest.root == repo_root() == REPO
    assert manifest.chapters, "book.toml lists no chapters"
    assert manifest.chapters[0].id == "00"


def test_real_book_toml_loads_with_its_notebooks():
    """Every chapter file exists and every notebook in chapters/ is listed."""
    manifest = load_manifest()
    assert all(path.is_file() for path in manifest.notebook_paths())


def test_relative_path_resolves_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_manifest("book.toml", check_files=False).root == REPO


# --------------------------------------------------------------------------- bad manifests


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ValueError, match="expected the course manifest at .*no such file"):
        load_manifest(tmp_path / "book.toml")


def test_invalid_toml(tmp_path):
    (tmp_path / "book.toml").write_text("[course\ntitle = 1\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_manifest(tmp_path / "book.toml")


def test_missing_course_table(tmp_path, good):
    del good["course"]
    with pytest.raises(ValueError, match=r"missing required table \[course\]"):
        load_manifest(write_manifest(tmp_path, good))


def test_missing_chapters_array(tmp_path, good):
    del good["chapters"]
    with pytest.raises(ValueError, match=r"missing required array of tables \[\[chapters\]\]"):
        load_manifest(write_manifest(tmp_path, good))


def test_missing_course_key(tmp_path, good):
    del good["course"]["license"]
    with pytest.raises(ValueError, match=r"\[course\] is missing required key\(s\) license"):
        load_manifest(write_manifest(tmp_path, good))


def test_missing_stage_key(tmp_path, good):
    del good["stages"][1]["title_zh"]
    with pytest.raises(ValueError, match=r"stages\[1\] \(id 'theory'\) is missing .*title_zh"):
        load_manifest(write_manifest(tmp_path, good))


@pytest.mark.parametrize(
    "key", ["id", "stage", "file", "title", "title_zh", "minutes_cpu", "prerequisites", "objectives"]
)
def test_missing_chapter_key(tmp_path, good, key):
    del good["chapters"][1][key]
    with pytest.raises(ValueError, match=rf"chapters\[1\].* is missing required key\(s\) {key}"):
        load_manifest(write_manifest(tmp_path, good))


def test_unknown_chapter_key_is_reported_as_a_typo(tmp_path, good):
    good["chapters"][0]["minute_cpu"] = 2
    with pytest.raises(ValueError, match=r"chapters\[0\] \(id '00'\) has unknown key\(s\) minute_cpu"):
        load_manifest(write_manifest(tmp_path, good))


def test_empty_title_is_rejected(tmp_path, good):
    good["chapters"][0]["title_zh"] = " "
    with pytest.raises(ValueError, match=r"chapters\[0\].*title_zh must be a non-empty string"):
        load_manifest(write_manifest(tmp_path, good))


def test_chapter_file_that_does_not_exist(tmp_path, good):
    path = write_manifest(tmp_path, good)
    (tmp_path / "chapters/01_forward.ipynb").unlink()
    with pytest.raises(ValueError, match=r"'chapters/01_forward.ipynb' does not exist"):
        load_manifest(path)


@pytest.mark.parametrize("file", ["/abs/chapters/x.ipynb", "chapters/../x.ipynb", "notes/x.ipynb", "chapters/x.py"])
def test_chapter_file_outside_chapters_or_not_a_notebook(tmp_path, good, file):
    good["chapters"][2]["file"] = file
    with pytest.raises(ValueError, match=r"chapters\[2\].*\.file must be"):
        load_manifest(write_manifest(tmp_path, good))


def test_duplicate_chapter_id(tmp_path, good):
    good["chapters"][2]["id"] = "01"
    good["chapters"][2]["prerequisites"] = ["00"]
    with pytest.raises(ValueError, match=r"duplicate chapter id '01' in chapters\[2\]"):
        load_manifest(write_manifest(tmp_path, good))


def test_duplicate_chapter_file(tmp_path, good):
    good["chapters"][2]["file"] = "chapters/00_start.ipynb"
    with pytest.raises(
        ValueError, match=r"duplicate chapter file 'chapters/00_start.ipynb'.*chapter '00'"
    ):
        load_manifest(write_manifest(tmp_path, good))


def test_duplicate_stage_id(tmp_path, good):
    good["stages"][1]["id"] = "foundations"
    with pytest.raises(ValueError, match="duplicate stage id 'foundations'"):
        load_manifest(write_manifest(tmp_path, good))


def test_unknown_stage(tmp_path, good):
    good["chapters"][2]["stage"] = "theroy"
    with pytest.raises(ValueError, match=r"names unknown stage 'theroy'; known stages: foundations, theory"):
        load_manifest(write_manifest(tmp_path, good))


def test_chapters_out_of_stage_order(tmp_path, good):
    good["chapters"][0]["stage"] = "theory"
    with pytest.raises(ValueError, match=r"chapters\[1\].*comes after chapter '00' of the later stage"):
        load_manifest(write_manifest(tmp_path, good))


def test_unknown_prerequisite(tmp_path, good):
    good["chapters"][2]["prerequisites"] = ["00", "02"]
    with pytest.raises(ValueError, match=r"prerequisite '02', which is not a chapter id"):
        load_manifest(write_manifest(tmp_path, good))


def test_prerequisite_that_comes_later(tmp_path, good):
    good["chapters"][1]["prerequisites"] = ["04"]
    with pytest.raises(ValueError, match=r"prerequisite '04', which comes later in the order"):
        load_manifest(write_manifest(tmp_path, good))


def test_prerequisite_equal_to_the_chapter(tmp_path, good):
    good["chapters"][1]["prerequisites"] = ["00", "01"]
    with pytest.raises(ValueError, match=r"chapters\[1\] \(id '01'\) lists itself as a prerequisite"):
        load_manifest(write_manifest(tmp_path, good))


def test_unlisted_notebook(tmp_path, good):
    path = write_manifest(tmp_path, good)
    (tmp_path / "chapters/99_draft.ipynb").write_text("{}")
    with pytest.raises(ValueError, match=r"chapters/99_draft.ipynb are in chapters/ but not listed"):
        load_manifest(path)


@pytest.mark.parametrize("minutes", [0, -1.5, "2", True, float("nan")])
def test_minutes_cpu_not_a_positive_number(tmp_path, good, minutes):
    good["chapters"][0]["minutes_cpu"] = minutes
    with pytest.raises(ValueError, match=r"minutes_cpu must be a positive number of minutes"):
        load_manifest(write_manifest(tmp_path, good))


def test_first_run_minutes_are_optional_and_shown_in_the_map(tmp_path, good):
    good["chapters"][0]["first_run_minutes_cpu"] = 7
    manifest = load_manifest(write_manifest(tmp_path, good))
    assert manifest.chapters[0].first_run_minutes_cpu == 7 and manifest.chapters[1].first_run_minutes_cpu is None
    assert "| 2 (first run 7) |" in render_course_map(manifest)


@pytest.mark.parametrize("minutes", [1, "7", True, float("inf")])
def test_first_run_minutes_below_minutes_cpu_or_not_a_number(tmp_path, good, minutes):
    good["chapters"][0]["first_run_minutes_cpu"] = minutes
    with pytest.raises(ValueError, match=r"first_run_minutes_cpu must be a number of minutes at least"):
        load_manifest(write_manifest(tmp_path, good))


def test_empty_objectives(tmp_path, good):
    good["chapters"][1]["objectives"] = []
    with pytest.raises(ValueError, match=r"chapters\[1\] \(id '01'\)\.objectives is empty"):
        load_manifest(write_manifest(tmp_path, good))


def test_objectives_not_strings(tmp_path, good):
    good["chapters"][1]["objectives"] = ["ok", ""]
    with pytest.raises(ValueError, match=r"objectives must be a list of non-empty strings"):
        load_manifest(write_manifest(tmp_path, good))


# --------------------------------------------------------------------------- course map


def test_course_map_has_stage_headings_and_linked_chapter_rows(good):
    good["chapters"][1]["title"] = "Forward | process"
    text = render_course_map(manifest_from_dict(good, root=".", check_files=False))
    assert "### Stage 1 · Foundations · 第一阶段：基础入门" in text
    assert "### Stage 2 · Theory · 第二阶段：理论深化" in text
    assert (
        "| 00 | [Start here](chapters/00_start.ipynb) | 从这里开始 | 2 "
        "| Check the device; Pick a profile |"
    ) in text
    # a pipe in a title or objective must not break the table; the trailing period is dropped
    assert "| 01 | [Forward \\| process](chapters/01_forward.ipynb) | 前向加噪过程 | 2.5 " in text
    assert "| Derive q(x_t \\| x_0) |" in text
    assert "3 chapters, about 7.5 minutes" in text
    assert text.index("### Stage 1") < text.index("| 01 |") < text.index("### Stage 2")


def test_course_map_marks_a_stage_without_chapters(good):
    good["chapters"] = good["chapters"][:2]
    text = render_course_map(manifest_from_dict(good, root=".", check_files=False))
    assert text.split("### Stage 2 · Theory · 第二阶段：理论深化")[1].strip() == "_No chapters yet._"


def test_replace_course_map_between_markers_keeps_the_rest():
    readme = f"# Title\n\nintro\n\n{COURSE_MAP_START}\nold map\n{COURSE_MAP_END}\n\n## After\n"
    new = replace_course_map(readme, "new map\n")
    assert new == f"# Title\n\nintro\n\n{COURSE_MAP_START}\nnew map\n{COURSE_MAP_END}\n\n## After\n"
    assert course_map_block(new) == "new map\n"


def test_replace_course_map_appends_a_section_when_markers_are_missing():
    new = replace_course_map("# Title\n", "map\n")
    assert new.startswith("# Title\n\n## Course map")
    assert course_map_block(new) == "map\n"
    assert course_map_block("# Title\n") is None


def test_replace_course_map_rejects_a_lone_marker():
    with pytest.raises(ValueError, match="expected exactly one .* found 1 start and 0 end"):
        replace_course_map(f"# T\n{COURSE_MAP_START}\n", "map")


# --------------------------------------------------------------------------- command line


def test_cli_notebooks_prints_the_files_in_order(tmp_path, good, capsys):
    path = write_manifest(tmp_path, good)
    assert main(["--manifest", str(path), "notebooks"]) == 0
    assert capsys.readouterr().out == (
        "chapters/00_start.ipynb chapters/01_forward.ipynb chapters/04_elbo.ipynb\n"
    )


def test_cli_check_summarises_and_fails_with_the_reason(tmp_path, good, capsys):
    path = write_manifest(tmp_path, good)
    assert main(["--manifest", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert "book.toml OK: Demo course (演示课程) v0.1.0, 2 stages, 3 chapters, 7.5 CPU-minutes" in out
    (tmp_path / "chapters/04_elbo.ipynb").unlink()
    assert main(["--manifest", str(path), "check"]) == 1
    assert "'chapters/04_elbo.ipynb' does not exist" in capsys.readouterr().err


def test_cli_readme_write_replaces_the_block_once(tmp_path, good, capsys):
    path = write_manifest(tmp_path, good)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Demo\n\n{COURSE_MAP_START}\n{COURSE_MAP_END}\n\nFooter\n", encoding="utf-8")
    assert main(["--manifest", str(path), "readme", "--write", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert course_map_block(text) == render_course_map(load_manifest(path))
    assert text.endswith("Footer\n")
    assert main(["--manifest", str(path), "readme", "--write", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_cli_runs_as_a_module(tmp_path, good):
    path = write_manifest(tmp_path, good)
    done = subprocess.run(
        [sys.executable, "-m", "course_lib.manifest", "--manifest", str(path), "readme"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    assert done.stdout == render_course_map(load_manifest(path))


# --------------------------------------------------------------------------- course_lib.report


def test_record_without_a_report_file_returns_the_value_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_REPORT", raising=False)
    monkeypatch.chdir(tmp_path)
    value = torch.tensor(0.5)
    assert record("loss", value) is value
    assert list(tmp_path.iterdir()) == []


def test_record_appends_json_lines_with_the_chapter(tmp_path, monkeypatch):
    path = tmp_path / "report.jsonl"
    monkeypatch.setenv("COURSE_REPORT", str(path))
    monkeypatch.setenv("COURSE_CHAPTER", "02")
    record("mmd_moons", 0.0012)
    record("steps", 3000, chapter="03")
    record("accuracy", torch.tensor([0.99]))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"chapter": "02", "key": "mmd_moons", "value": 0.0012},
        {"chapter": "03", "key": "steps", "value": 3000},
        {"chapter": "02", "key": "accuracy", "value": pytest.approx(0.99)},
    ]
    assert read_records(path) == lines


def test_report_to_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_REPORT", raising=False)
    monkeypatch.setenv("COURSE_CHAPTER", "07")
    with report_to(tmp_path / "r.jsonl"):
        record("x", 1.0)
    assert read_records(tmp_path / "r.jsonl") == [{"chapter": None, "key": "x", "value": 1.0}]
    import os

    assert "COURSE_REPORT" not in os.environ and os.environ["COURSE_CHAPTER"] == "07"


@pytest.mark.parametrize("key", ["", "  ", None, 3])
def test_record_rejects_a_bad_key(key):
    with pytest.raises(ValueError, match="expected key to be a non-empty string"):
        record(key, 1.0)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), "0.5", None, True, torch.tensor([1.0, 2.0])]
)
def test_record_rejects_a_value_that_is_not_a_finite_number(value):
    with pytest.raises(ValueError, match=r"record\('mmd', \.\.\.\): expected a finite number"):
        record("mmd", value)


def test_record_rejects_a_bad_chapter():
    with pytest.raises(ValueError, match="expected chapter to be a non-empty string or None"):
        record("mmd", 1.0, chapter="")


def test_record_reports_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_REPORT", str(tmp_path / "nope" / "r.jsonl"))
    with pytest.raises(ValueError, match="expected a file in an existing folder"):
        record("mmd", 1.0)


def test_read_records_names_a_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"chapter": "00", "key": "a", "value": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: expected a JSON record"):
        read_records(path)

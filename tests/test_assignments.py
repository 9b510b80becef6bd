"""Student versions and grading on a small synthetic exercise notebook (real chapters use the same markup)."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib.assignments import grade, graded_cells, strip_regions, student_version


def _nb():
    sol = new_code_cell("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION")
    sol.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "ex1-solution", "locked": False}
    test = new_code_cell("assert square(3) == 9\n### BEGIN HIDDEN TESTS\nassert square(-2) == 4\n### END HIDDEN TESTS")
    test.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "ex1-test", "points": 2, "locked": True}
    free = new_code_cell("y = 1")
    test2 = new_code_cell("assert y == 1")
    test2.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "ex2-test", "points": 1, "locked": True}
    answer = new_markdown_cell("### BEGIN SOLUTION\nBecause the variance adds.\n### END SOLUTION")
    answer.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "ex3-answer", "locked": False}
    return new_notebook(cells=[new_markdown_cell("# Exercises"), sol, test, free, test2, answer])


def test_student_version_removes_solutions_and_hidden_tests():
    student = student_version(_nb())
    sources = [c.source for c in student.cells]
    assert "return x * x" not in sources[1] and "raise NotImplementedError()" in sources[1]
    assert "def square(x):" in sources[1]
    assert "square(-2)" not in sources[2] and "square(3) == 9" in sources[2]
    assert sources[5] == "YOUR ANSWER HERE"


def test_solution_scores_full_marks_and_untouched_student_version_does_not(tmp_path):
    full = grade(_nb(), cwd=tmp_path, timeout=60)
    assert full.total == full.max_total == 3.0
    student = grade(student_version(_nb()), reference=_nb(), cwd=tmp_path, timeout=60)
    assert student.scores == {"ex1-test": 0.0, "ex2-test": 1.0}
    assert "NotImplementedError" in student.errors["ex1-test"]
    assert "total" in student.table()


def test_edited_or_deleted_tests_are_restored_from_the_reference(tmp_path):
    cheat = student_version(_nb())
    cheat.cells[2].source = "pass"        # a student 'fixes' the test
    del cheat.cells[4]                    # and deletes another
    report = grade(cheat, reference=_nb(), cwd=tmp_path, timeout=60)
    assert report.scores["ex1-test"] == 0.0
    assert report.scores["ex2-test"] == 0.0 and "deleted" in report.errors["ex2-test"]


def test_markup_errors_are_reported():
    with pytest.raises(ValueError, match="without a matching"):
        strip_regions("### BEGIN SOLUTION\nx = 1", "code")
    with pytest.raises(ValueError, match="cell_type"):
        strip_regions("x", "raw")
    nb = _nb()
    nb.cells[4].metadata["nbgrader"]["grade_id"] = "ex1-test"
    with pytest.raises(ValueError, match="duplicate"):
        graded_cells(nb)


def test_cli_writes_student_notebooks(tmp_path):
    from course_lib.assignments import _main

    src = tmp_path / "ex.ipynb"
    nbformat.write(_nb(), str(src))
    assert _main(["student", str(src), "-o", str(tmp_path / "release")]) == 0
    out = nbformat.read(str(tmp_path / "release" / "ex.ipynb"), as_version=4)
    assert "return x * x" not in out.cells[1].source


def test_withheld_hides_the_library_function_everywhere_and_restores_it():
    import course_lib.conditioning as conditioning
    import course_lib.conditioning.guidance as guidance
    from course_lib.assignments import withheld

    original = guidance.cfg_combine
    namespace = {"cfg_combine": original, "alias": original, "other": 3}

    def student_code():  # what a lazy answer would do: call the library through its module
        return guidance.cfg_combine(1.0, 2.0, 3.0)

    with pytest.raises(RuntimeError, match="cfg_combine is withheld"):
        with withheld(namespace, original):
            assert namespace["other"] == 3
            for fn in (namespace["cfg_combine"], namespace["alias"], conditioning.cfg_combine):
                with pytest.raises(RuntimeError, match="withheld"):
                    fn()
            student_code()
    assert guidance.cfg_combine is original and conditioning.cfg_combine is original
    assert namespace["cfg_combine"] is original and namespace["alias"] is original
    with pytest.raises(ValueError, match="pass globals"):
        with withheld([], original):
            pass


# A coding exercise that asks for something the library has must not pass by calling it: its graded test
# runs the student's code inside `withheld(...)`. (Chapters 00 and 03 ask for what the library has as a
# method, `Schedule.add_noise` and `SelfAttention.forward`, which `withheld` cannot hide yet.)
WITHHELD_IN_TESTS = {
    "02_ddpm": ("ch02-ex2-test", ("ddpm_step", "sample")),
    "05_ddim": ("ch05-ex2-test", ("ddim_invert",)),
    "06_sde_ode": ("ch06-ex2-test", ("euler_maruyama_step",)),
    "07_fast_samplers": ("ch07-ex2-test", ("karras_grid",)),
    "10_consistency_models": ("ch10-ex2-test", ("consistency_training_loss",)),
    "16_editing": ("ch16-ex1-test", ("sdedit_start",)),
    "17_evaluation": ("ch17-ex1-test", ("frechet_distance", "frechet_distance_gaussian")),
}


@pytest.mark.parametrize("chapter", sorted(WITHHELD_IN_TESTS))
def test_coding_exercises_withhold_the_library_function_they_ask_for(chapter):
    import re
    from pathlib import Path

    import nbformat

    grade_id, names = WITHHELD_IN_TESTS[chapter]
    nb = nbformat.read(Path(__file__).resolve().parent.parent / "chapters" / f"{chapter}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, f"{chapter}: no graded cell {grade_id}"
    calls = re.findall(r"withheld\(globals\(\),([^)]*)\)", cells[0].source)
    assert calls, f"{chapter} {grade_id}: the student's code does not run inside withheld(...)"
    held = {name.strip() for call in calls for name in call.split(",")}
    assert set(names) <= held, f"{chapter} {grade_id}: withholds {sorted(held)}, not {names}"

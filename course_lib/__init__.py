"""course_lib: the small PyTorch library behind the Diffusion Models course.

Every module is introduced by a chapter (its docstring says which). The notation
table in ``NOTATION.md`` maps the symbols of the text to the names used here.
Time runs over t in [0, 1] with t = 0 the data and t = 1 pure noise.
"""

__version__ = "0.1.0"

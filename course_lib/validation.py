"""Argument checks shared by the library's constructors: bad input raises a ``ValueError`` that says
what was expected and what was given, and nothing is silently corrected.

>>> check_positive_int("rank", 4)
4
>>> check_positive_int("rank", True)
Traceback (most recent call last):
...
ValueError: rank must be a positive int, got True
"""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int (not a bool) above zero; else raise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value

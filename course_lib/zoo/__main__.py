"""``python -m course_lib.zoo build [NAME ...] | list`` (see :mod:`course_lib.zoo.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

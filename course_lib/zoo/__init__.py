r"""The course's model zoo: ``pretrained(name)`` trains on first use and caches (chapter 00).

Later chapters reuse models trained by earlier ones without retraining. Every model has a
*recipe*: a configuration (architecture, schedule, training steps from the profile, seed) and a
training function. The package is laid out as the parts it has:

* :mod:`~course_lib.zoo.cache`: the cache folder, config-keyed file names, atomic writes,
  ``weights_only`` loading, the lock two processes share, finiteness and writability checks;
* :mod:`~course_lib.zoo.registry`: :class:`Recipe`, :data:`RECIPES` and :func:`load`;
* one module of recipes per stage of the course, ``stage1.py``, ``stage2.py``, ... Every module
  named ``stage<N>.py`` in this folder is imported, in the order of N, and registers its recipes;
  the names in its ``__all__`` are re-exported here. A new stage adds its file and nothing else;
* :mod:`~course_lib.zoo.progress` and :mod:`~course_lib.zoo.cli`: the progress display and the
  command line.

The cache file name is the recipe name plus a hash of its configuration and the course version, so
a changed recipe never loads old weights. Files are written atomically, loaded with
``torch.load(weights_only=True)`` (no pickle code execution), checked against their configuration
and for finite weights, and rebuilt (not crashed on) when corrupt. A process that needs a model
another process is building waits for it and shows the builder's progress; a cache folder that
cannot be written to only warns (the trained model is returned uncached).

Cache folder: ``$COURSE_CACHE_DIR`` if set (``~`` expanded; a relative path is taken relative to
the course checkout), else ``.model_cache/`` in the course checkout (when the package runs from
one), else ``~/.cache/diffusion-course``. The test command sets ``COURSE_CACHE_DIR`` inside the
checkout, so tests always train what they test.

Command line: ``python -m course_lib.zoo build [NAME ...]`` trains (or loads) the zoo and prints
each model's row as it is done; ``python -m course_lib.zoo list`` shows what is cached.

>>> {"ddpm_moons", "digits_unet", "fm_moons"} <= set(RECIPES)
True
>>> [stage.__name__.rsplit(".", 1)[1] for stage in STAGES][:3]
['stage1', 'stage2', 'stage3']
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from .cache import ZOO_FORMAT, cache_dir, cached_tensor, config_key
from .registry import (RECIPES, SAMPLE_SETS, Recipe, ZooEntry, build, cache_path, get_recipe, load, pretrained,
                       pretrained_denoiser, register, register_sample_set, sample_set)

__all__ = ["RECIPES", "Recipe", "SAMPLE_SETS", "STAGES", "ZOO_FORMAT", "ZooEntry", "build", "cache_dir", "cache_path",
           "cached_tensor", "get_recipe", "load", "pretrained", "pretrained_denoiser", "register",
           "register_sample_set", "sample_set"]


def _import_stages() -> tuple:
    """Import every ``stage<N>`` module of this package, in the order of N."""
    names = [info.name for info in pkgutil.iter_modules(__path__) if re.fullmatch(r"stage\d+", info.name)]
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in sorted(names, key=lambda n: int(n[5:])))


STAGES = _import_stages()
for _stage in STAGES:
    for _name in getattr(_stage, "__all__", ()):
        globals()[_name] = getattr(_stage, _name)
        __all__.append(_name)

# Older names, kept for the chapters (which print some of these recipes' sources) and the tests.
_config_key = config_key
_get_recipe = get_recipe
from .stage1 import _build_mlp, _build_unet, _digits_config, _fit_denoiser, _fit_digits, _fit_toy  # noqa: E402
from .stage3 import _fit_consistency, _fit_on_pairs  # noqa: E402

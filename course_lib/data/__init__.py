"""Offline data sets of the course: nothing is ever downloaded.

=====================  =====================================================  =========
name for ``load``      what                                                   function
=====================  =====================================================  =========
"moons", "swiss_roll", 2-D toy distributions, (n, 2)                          ``toy2d``
"eight_gaussians",
"checkerboard",
"spirals"
"digits"               scikit-learn's 1,797 real 8 x 8 digits, fixed split   ``digits``
"shapes"               rendered coloured shapes with captions, masks, edges  ``shapes``
"image_folder"         a learner's own PNG / JPEG files                      ``image_folder``
"mnist", "cifar10"     only if the files are already on disk                 ``optional_dataset``
=====================  =====================================================  =========

Every image set lives in [-1, 1]; every random draw takes a ``generator``.

>>> import torch
>>> load("moons", n=5, generator=torch.Generator().manual_seed(0)).shape
torch.Size([5, 2])
>>> load("digits", split="test")[0].shape
torch.Size([359, 1, 8, 8])

Introduced in chapter 00.
"""

from __future__ import annotations

from typing import Any

from course_lib.data.digits import digits
from course_lib.data.folder import image_folder, optional_dataset
from course_lib.data.shapes import COLOR_NAMES, SHAPE_NAMES, SIZE_NAMES, ShapesBatch, shapes
from course_lib.data.toy2d import TOY2D_NAMES, toy2d

__all__ = [
    "COLOR_NAMES",
    "DATASET_NAMES",
    "SHAPE_NAMES",
    "SIZE_NAMES",
    "ShapesBatch",
    "TOY2D_NAMES",
    "digits",
    "image_folder",
    "load",
    "optional_dataset",
    "shapes",
    "toy2d",
]

DATASET_NAMES: tuple[str, ...] = TOY2D_NAMES + ("digits", "shapes", "image_folder", "mnist", "cifar10")


def load(name: str, **kw: Any) -> Any:
    """Load a data set by name; keyword arguments go to the function in the table above.

    ``load("moons", n=1000, generator=g)`` is ``toy2d("moons", 1000, generator=g)``;
    ``load("digits", split="train")`` is ``digits("train")``; ``load("shapes", n=64)``
    is ``shapes(64)``; ``load("image_folder", path=...)`` is ``image_folder(...)``;
    ``load("mnist", root=...)`` is ``optional_dataset("mnist", ...)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).

    Introduced in chapter 00.
    """
    if name in TOY2D_NAMES:
        return toy2d(name, **kw)
    if name == "digits":
        return digits(**kw)
    if name == "shapes":
        return shapes(**kw)
    if name == "image_folder":
        return image_folder(**kw)
    if name in ("mnist", "cifar10"):
        return optional_dataset(name, **kw)
    raise ValueError(f"load: unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")

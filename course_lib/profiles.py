r"""Profiles: one environment variable picks the size of every experiment (chapter 00).

``COURSE_PROFILE`` = ``quick`` (seconds; smoke tests, no quality claims), ``classroom``
(the default: what a learner runs on a laptop CPU, minutes per chapter; the numbers the
text describes and the notebooks assert) or ``full`` (bigger runs for a GPU).

>>> get_profile("quick").name
'quick'
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

__all__ = ["Profile", "PROFILES", "get_profile", "current_profile", "ENV_VAR"]

ENV_VAR = "COURSE_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes of the course's experiments. ``check_quality``: whether notebooks assert quality floors."""

    name: str
    check_quality: bool
    toy_train_steps: int      # 2-D DDPM (chapter 02)
    toy_batch_size: int
    toy_n_samples: int        # samples drawn for MMD / sliced Wasserstein
    digits_train_steps: int   # digit U-Net (chapters 00, 03)
    digits_batch_size: int
    digits_n_samples: int     # samples for classifier confidence / Frechet distance
    classifier_steps: int     # the course's digit classifier (metrics)
    sample_steps: int         # sampler steps used for image models

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "quick": Profile("quick", False, toy_train_steps=400, toy_batch_size=256, toy_n_samples=500,
                     digits_train_steps=150, digits_batch_size=64, digits_n_samples=64,
                     classifier_steps=300, sample_steps=20),
    "classroom": Profile("classroom", True, toy_train_steps=3000, toy_batch_size=512, toy_n_samples=2000,
                         digits_train_steps=1500, digits_batch_size=128, digits_n_samples=500,
                         classifier_steps=1500, sample_steps=100),
    "full": Profile("full", True, toy_train_steps=10000, toy_batch_size=1024, toy_n_samples=5000,
                    digits_train_steps=6000, digits_batch_size=256, digits_n_samples=2000,
                    classifier_steps=3000, sample_steps=1000),
}


def get_profile(name: str) -> Profile:
    """The profile of that name; a ValueError lists the valid names."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)} "
                         f"(set {ENV_VAR} to one of them)")
    return PROFILES[name]


def current_profile() -> Profile:
    """The profile named by $COURSE_PROFILE, 'classroom' when unset."""
    return get_profile(os.environ.get(ENV_VAR, "classroom").strip() or "classroom")

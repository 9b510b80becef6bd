"""Adapters between the course's conventions and other libraries (introduced in chapter 07).

Each adapter lives in its own module and imports its library only inside its functions, so the
course runs without it:

* :mod:`course_lib.adapters.diffusers`: Hugging Face diffusers' schedulers (``DDPMScheduler``,
  ``DDIMScheduler``, ``DPMSolverMultistepScheduler``) <-> ``DDPMTable``, time grids, ``Denoiser``.

>>> from course_lib.adapters.diffusers import times_from_timesteps
>>> times_from_timesteps([999, 0], 1000).tolist()      # diffusers' k is the course's n = k + 1
[1.0, 0.0010000000474974513]
"""

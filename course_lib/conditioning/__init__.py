r"""Conditioning: guidance, ControlNet and LoRA change the denoiser or the network, never the loop (Stage 4).

* :mod:`~course_lib.conditioning.guidance`: classifier and classifier-free guidance as denoiser
  wrappers, label dropout, and the remedies for over-saturation (chapter 12);
* :mod:`~course_lib.conditioning.mixture`: exact class-conditional denoisers of 1-D densities, where
  guided sampling can be compared with the density it aims at (chapter 12);
* :mod:`~course_lib.conditioning.editing`: SDEdit's start, inpainting by replacement, RePaint's resampling step
  and null-text inversion (chapter 16).
"""

from .guidance import (ClassifierFreeGuidance, ClassifierGuidance, PromptGuidance, apg_combine, cfg_combine, drop_labels,
                       dynamic_threshold, guidance_scale_from_w, rescale_guidance, w_from_guidance_scale)

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "PromptGuidance", "apg_combine", "cfg_combine", "drop_labels",
           "dynamic_threshold", "guidance_scale_from_w", "rescale_guidance", "w_from_guidance_scale"]

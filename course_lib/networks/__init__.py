"""Networks of the course: the time embedding, a toy-data MLP and an image U-Net.

* :mod:`course_lib.networks.embeddings`: sinusoidal time embedding (chapter 03).
* :mod:`course_lib.networks.mlp`: ``TimeMLP`` for 2-D toy data (chapter 02).
* :mod:`course_lib.networks.unet`: ``UNet`` and its blocks, ``count_parameters`` and
  ``parameter_table`` (chapter 03).

>>> from course_lib.networks import TimeMLP, count_parameters
>>> count_parameters(TimeMLP())
75010
"""

from course_lib.networks.embeddings import TimeEmbedding, resolve_class_labels, sinusoidal_embedding
from course_lib.networks.mlp import TimeMLP
from course_lib.networks.unet import (
    CrossAttention,
    Downsample,
    MidBlock,
    ResBlock,
    SelfAttention,
    UNet,
    UNetBlock,
    Upsample,
    count_parameters,
    multi_head_attention,
    parameter_table,
)

__all__ = [
    "sinusoidal_embedding",
    "TimeEmbedding",
    "resolve_class_labels",
    "TimeMLP",
    "UNet",
    "ResBlock",
    "SelfAttention",
    "CrossAttention",
    "Downsample",
    "Upsample",
    "UNetBlock",
    "MidBlock",
    "multi_head_attention",
    "count_parameters",
    "parameter_table",
]

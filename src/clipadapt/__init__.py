"""clipadapt: adapt CLIP-style vision-language models to new image-classification tasks."""

from .backbone import Backbone, ImageTokens, list_models, load_backbone
from .errors import CheckpointError, ClipadaptError, DataError

__version__ = "0.1.0"
__all__ = [
    "Backbone",
    "ImageTokens",
    "load_backbone",
    "list_models",
    "ClipadaptError",
    "DataError",
    "CheckpointError",
    "__version__",
]

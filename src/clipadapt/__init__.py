"""clipadapt: adapt CLIP-style vision-language models to new image-classification tasks."""

from .api import adapt
from .backbone import Backbone, ImageTokens, list_models, load_backbone
from .classifier import Classifier, load_classifier
from .errors import CheckpointError, ClipadaptError, DataError
from .version import __version__

__all__ = [
    "adapt",
    "load_classifier",
    "Classifier",
    "Backbone",
    "ImageTokens",
    "load_backbone",
    "list_models",
    "ClipadaptError",
    "DataError",
    "CheckpointError",
    "__version__",
]

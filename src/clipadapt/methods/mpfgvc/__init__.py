"""MP-FGVC (Jiang et al., AAAI 2024), multimodal prompting for fine-grained classification, as a package:
`towers` (the tuned image encoders), `ssvp` (token selection and where it looks), `fusion` (VLFM), `method` (the
two-stage method; its docstring has the paper's design and our choices), `finetune` (the fine-tuned baseline) and
`views` (how the report shows where SsVP looks). Importing it registers `mpfgvc`, `finetune` and that view."""

from .finetune import FineTune
from .fusion import FUSIONS, VisionLanguageFusion
from .method import MPFGVC
from .ssvp import box_in_crop, part_overlap, patch_boxes, resized_shorter_side, ssvp_scores, ssvp_tokens
from .towers import ClipTower, TimmTower
from .views import model_input

__all__ = [
    "FUSIONS",
    "MPFGVC",
    "ClipTower",
    "FineTune",
    "TimmTower",
    "VisionLanguageFusion",
    "box_in_crop",
    "model_input",
    "part_overlap",
    "patch_boxes",
    "resized_shorter_side",
    "ssvp_scores",
    "ssvp_tokens",
]

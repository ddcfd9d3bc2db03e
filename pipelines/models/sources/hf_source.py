"""`hf:ORG/NAME`: transformers AutoModelForImageClassification (pipelines.models.hf holds the
transformers details: the logits wrapper, processor configs, the facts known offline)."""
from __future__ import annotations

from pipelines.errors import BadInput
from pipelines.models.sources.base import Source, crop_pct_of
from pipelines.models.spec import ModelSpec


def _auto_model():
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise BadInput("hf: models need the transformers package (pip install 'sing[hf]')") from None
    return AutoModelForImageClassification


class HFSource(Source):
    name = "hf"
    builds_on_meta = False  # the config may need the hub; describe() reports no shapes

    def family(self, ms: ModelSpec) -> str:
        return ms.name.split("/")[-1].split("-")[0].lower()  # facebook/dinov2-large-... -> dinov2

    def preprocess(self, ms: ModelSpec):
        from pipelines.models.hf import processor_config, processor_spec

        pre = processor_spec(processor_config(ms.name), ms.name)
        return pre, crop_pct_of(pre)

    def weight_sources(self, ms: ModelSpec) -> list:
        from pipelines.models.hub import HubWeights

        if ms.weights != "pretrained":
            return []
        # its config and processor config come with the weights
        return [HubWeights(ms.name, ("model.safetensors", "pytorch_model.bin"))]

    def architecture(self, ms: ModelSpec, num_classes: int | None = None):
        import torch

        from pipelines.models.hf import HFLogits, config

        cfg = config(ms.name)
        n = num_classes or ms.num_classes
        if n:
            cfg.num_labels = n
        return HFLogits(_auto_model().from_config(cfg)).to(torch.float32)

    def pretrained(self, ms: ModelSpec):
        import torch

        from pipelines.models.hf import HFLogits

        return HFLogits(_auto_model().from_pretrained(ms.name)).to(torch.float32), None

    def load_file(self, ms: ModelSpec, model, path: str):
        from pipelines.models.checkpoints import apply_state_dict, load_state_dict_file

        apply_state_dict(model.model, load_state_dict_file(path), ms.path or path)
        return model


HF = HFSource()

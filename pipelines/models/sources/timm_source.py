"""timm classifiers: `timm:NAME[.TAG]`. The pretrained cfg of the tag (or the architecture's
default tag) decides the eval transform and where the weights live, also when the weights are
random or a local file (a fine-tuned checkpoint of a tag keeps the tag's preprocessing)."""
from __future__ import annotations

from pipelines.models.registry import suggest
from pipelines.models.sources.base import Source
from pipelines.models.spec import ModelSpec, UnknownModelError


def full_name(ms: ModelSpec) -> str:
    return f"{ms.name}.{ms.tag}" if ms.tag else ms.name


class TimmSource(Source):
    name = "timm"

    def check_arch(self, ms: ModelSpec) -> None:
        import timm

        if not timm.is_model(ms.name):
            raise UnknownModelError(f"timm has no model {ms.name!r}.{suggest(ms.name, timm.list_models())}")

    def check(self, ms: ModelSpec) -> None:
        import timm

        self.check_arch(ms)
        if ms.weights == "pretrained" or ms.tag:
            avail = timm.list_pretrained(f"{ms.name}.*")
            if not avail:
                raise UnknownModelError(f"timm has no pretrained weights for {ms.name!r}; use "
                                        f"timm:{ms.name}@random or timm:{ms.name}@/path/to/ckpt")
            if ms.tag and f"{ms.name}.{ms.tag}" not in avail:
                raise UnknownModelError(f"timm has no pretrained tag {ms.tag!r} for {ms.name!r}; "
                                        f"available: {', '.join(a.split('.', 1)[1] for a in avail)}")

    def family(self, ms: ModelSpec) -> str:
        """timm's model module (resnet, vision_transformer, convnext, ...)."""
        from timm.models import _registry

        return _registry._model_to_module.get(ms.name) or super().family(ms)

    def data_config(self, ms: ModelSpec) -> dict:
        """timm's resolved data config of the tag, as create_model would attach it."""
        import timm.models
        from timm.data import resolve_data_config

        cfg = timm.models.get_pretrained_cfg(full_name(ms))
        return resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})

    def preprocess(self, ms: ModelSpec):
        from pipelines.models.preprocess import timm_spec

        cfg = self.data_config(ms)
        return timm_spec(cfg), float(cfg.get("crop_pct") or 0.875)

    def weight_sources(self, ms: ModelSpec) -> list:
        import timm.models

        from pipelines.models.hub import HubWeights, UrlWeights, hf_alternatives, torch_hub_file

        if ms.weights != "pretrained":
            return []
        cfg = timm.models.get_pretrained_cfg(full_name(ms))
        if cfg is None or cfg.file or cfg.state_dict is not None or cfg.source == "local-dir":
            return []
        if cfg.hf_hub_id:  # timm prefers the hub whenever the config names a repo
            repo, _, rev = cfg.hf_hub_id.partition("@")
            files = hf_alternatives(cfg.hf_hub_filename or "pytorch_model.bin", "pytorch_model.bin",
                                    "model.safetensors")
            return [HubWeights(repo, files, rev or None)]
        return [UrlWeights(cfg.url, torch_hub_file(cfg.url))] if cfg.url else []

    def architecture(self, ms: ModelSpec, num_classes: int | None = None):
        import timm

        n = num_classes or ms.num_classes
        return timm.create_model(full_name(ms), pretrained=False, **({"num_classes": n} if n else {}))

    def pretrained(self, ms: ModelSpec):
        import timm

        return timm.create_model(full_name(ms), pretrained=True), None

    def with_classes(self, ms: ModelSpec, model, n: int):
        model.reset_classifier(n)
        return model


TIMM = TimmSource()

"""torchvision classifiers: `torchvision:NAME[.WEIGHTS]`. The weights enum member (DEFAULT
unless named) decides the eval transform, exactly its own transforms(), and the download URL."""
from __future__ import annotations

from pipelines.models.registry import suggest
from pipelines.models.sources.base import Source, crop_pct_of
from pipelines.models.spec import ModelSpec, UnknownModelError


def weights_enum(ms: ModelSpec):
    """The torchvision weights enum member a string names (DEFAULT when it names none)."""
    import torchvision

    names = torchvision.models.list_models()
    if ms.name not in names:
        raise UnknownModelError(f"torchvision has no model {ms.name!r}.{suggest(ms.name, names)}")
    enum = torchvision.models.get_model_weights(ms.name)
    if ms.tag:
        if ms.tag not in enum.__members__:
            raise UnknownModelError(f"torchvision {ms.name} has no weights {ms.tag!r}; available: "
                                    f"{', '.join(enum.__members__)}")
        return enum[ms.tag]
    return enum.DEFAULT


def transform_of(weights):
    """Exactly the weights' own transforms (ImageClassification: Resize(int) + CenterCrop)."""
    from pipelines.models.preprocess import PreprocessSpec

    t = weights.transforms()
    for attr in ("crop_size", "resize_size", "interpolation", "mean", "std"):
        if not hasattr(t, attr):
            raise ValueError(f"torchvision weights {weights} have no image-classification transforms "
                             f"({type(t).__name__}); SING needs a classifier's eval transform")
    if len(t.resize_size) != 1:
        raise ValueError(f"torchvision weights {weights}: resize to {t.resize_size} is not a shorter-side resize")
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    crop = tuple(t.crop_size) if len(t.crop_size) == 2 else (t.crop_size[0], t.crop_size[0])
    return PreprocessSpec(size=crop, resize=int(t.resize_size[0]), interpolation=interp,
                          mean=tuple(t.mean), std=tuple(t.std))


class TorchvisionSource(Source):
    name = "torchvision"

    def check_arch(self, ms: ModelSpec) -> None:
        weights_enum(ms)

    def preprocess(self, ms: ModelSpec):
        pre = transform_of(weights_enum(ms))
        return pre, crop_pct_of(pre)

    def weight_sources(self, ms: ModelSpec) -> list:
        from pipelines.models.hub import UrlWeights, torch_hub_file

        if ms.weights != "pretrained":
            return []
        try:
            w = weights_enum(ms)
        except UnknownModelError:
            return []  # the loader says which name or tag is unknown
        return [UrlWeights(w.url, torch_hub_file(w.url))]

    def architecture(self, ms: ModelSpec, num_classes: int | None = None):
        import torchvision

        n = num_classes or ms.num_classes
        return torchvision.models.get_model(ms.name, weights=None, **({"num_classes": n} if n else {}))

    def pretrained(self, ms: ModelSpec):
        import torchvision

        return torchvision.models.get_model(ms.name, weights=weights_enum(ms)), None


TORCHVISION = TorchvisionSource()

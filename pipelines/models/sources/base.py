"""What every classifier source answers (see pipelines.models.sources)."""
from __future__ import annotations

from pipelines.models.preprocess import PreprocessSpec
from pipelines.models.spec import ModelSpec


class Source:
    """One library's classifiers. Subclasses answer for their MODEL strings; nothing here loads
    weights unless asked to (`pretrained`, `load_file`)."""

    name = ""
    # whether `architecture` can run under torch.device("meta") (shapes without memory)
    builds_on_meta = True

    def check_arch(self, ms: ModelSpec) -> None:
        """Raise UnknownModelError when the architecture does not exist (tags not looked at)."""

    def check(self, ms: ModelSpec) -> None:
        """Raise UnknownModelError when the name, or the pretrained tag it names, does not exist."""
        self.check_arch(ms)

    def family(self, ms: ModelSpec) -> str:
        """The architecture's family: its name with the size digits dropped (resnet50 -> resnet)."""
        import re

        return re.sub(r"[\d_]+.*$", "", ms.name.split("/")[-1]) or ms.name

    def preprocess(self, ms: ModelSpec) -> tuple[PreprocessSpec, float]:
        """(eval transform, crop_pct) without building the model or fetching weights."""
        raise NotImplementedError

    def weight_sources(self, ms: ModelSpec) -> list:
        """Where a pretrained string's weights come from (pipelines.models.hub HubWeights /
        UrlWeights), as the library resolves them; [] when none can be checked beforehand."""
        return []

    def weights_label(self, ms: ModelSpec) -> str | None:
        """How describe() names pretrained weights that are not a hub or URL source."""
        return None

    def architecture(self, ms: ModelSpec, num_classes: int | None = None):
        """The bare architecture, randomly initialised by the library (the caller seeds it)."""
        raise NotImplementedError

    def pretrained(self, ms: ModelSpec):
        """-> (module, sha256 of the weights file or None): the library's own pretrained load."""
        raise NotImplementedError

    def load_file(self, ms: ModelSpec, model, path: str):
        """A local checkpoint into `model` (strict); a head with another class count is rebuilt
        first. Returns the module."""
        from pipelines.models.checkpoints import apply_state_dict, load_state_dict_file
        from pipelines.models.heads import find_head, head_name

        sd = load_state_dict_file(path)
        head_key = head_name(model, find_head(model)) + ".weight"
        if head_key in sd and sd[head_key].shape[0] != model.state_dict()[head_key].shape[0]:
            model = self.with_classes(ms, model, int(sd[head_key].shape[0]))
        apply_state_dict(model, sd, ms.path or path)  # messages name the URL, not the cache
        return model

    def with_classes(self, ms: ModelSpec, model, n: int):
        """`model` with a head of n classes (a checkpoint fine-tuned to another label set)."""
        return self.architecture(ms, num_classes=n)


def crop_pct_of(pre: PreprocessSpec) -> float:
    """crop / shorter resize side, as timm's crop_pct, for transforms that do not state one."""
    short = pre.resize if isinstance(pre.resize, int) else min(pre.resize)
    return round(pre.crop_hw[0] / short, 4)

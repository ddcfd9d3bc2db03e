"""Classifier loading: timm, torchvision, hf, lite0; pretrained, local checkpoints, seeded random init.

`load_classifier(spec)` builds what `pipelines.models.resolve.resolve(spec)` resolves and
returns a `Classifier`: the eval-mode module, a CPU float32 copy of its final linear layer
(W, b), the eval preprocessing, ImageNet class names, and a sha256 that keys the checkpoint by
its weights. `Classifier.features_and_logits(x)` returns the head's input f
(captured by a forward hook, so any architecture works) and the logits.

Checkpoint files are never unpickled with code: safetensors, or torch.load(weights_only=True);
a pickle that needs arbitrary globals is refused (UnsafeCheckpointError).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.models.checkpoints import state_dict_sha256
from pipelines.models.heads import find_head, forward_capture, head_name
from pipelines.models.preprocess import PreprocessSpec
from pipelines.models.resolve import resolve
from pipelines.models.spec import slug


@dataclass
class Classifier:
    model_id: str
    slug: str
    module: torch.nn.Module
    head_weight: torch.Tensor  # (c, m) float32 CPU
    head_bias: torch.Tensor | None  # (c,) float32 CPU
    preprocess: PreprocessSpec
    num_classes: int
    num_features: int
    class_names: list[str]
    checkpoint_sha256: str | None
    head_name: str = ""  # qualified module name of the head, e.g. "fc", "classifier.3"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @property
    def head(self) -> torch.nn.Module:
        return self.module.get_submodule(self.head_name) if self.head_name else find_head(self.module)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised (B, 3, H, W) on the module's device/dtype. Returns float32
        f (B, m) = the head's input and logits (B, c) = the model's output."""
        return forward_capture(self.module, self.head, x, verify=False)

    def to(self, device, dtype: torch.dtype | None = None, channels_last: bool = False) -> "Classifier":
        """Move the module (in place) and return self. head_weight/bias stay CPU float32."""
        self.module.to(device=device, dtype=dtype)
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.device = str(torch.device(device))
        self.dtype = dtype or self.dtype
        self.channels_last = channels_last
        return self


def load_classifier(spec: str, device="cpu", verify: bool = True) -> Classifier:
    """Build the classifier for a MODEL string (see pipelines.models.spec).

    verify: run one forward on two random images to check that the model's output equals
    the head's output and the head's input is one vector per image (logits = W f + b).
    """
    r = resolve(spec)
    ms, pre = r.spec, r.preprocess
    model, sha = r.build()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = find_head(model)
    hname = head_name(model, head)
    w = head.weight.detach().to("cpu", torch.float32)
    w = w.reshape(w.shape[0], -1).clone()
    b = head.bias.detach().to("cpu", torch.float32).clone() if head.bias is not None else None
    if verify:
        x = torch.randn(2, 3, *pre.crop_hw, generator=torch.Generator().manual_seed(0))
        f, logits = forward_capture(model, head, x, verify=True)
        if f.shape[1] != w.shape[1]:
            raise ValueError(f"head input has {f.shape[1]} features but W is {tuple(w.shape)}")
    if sha is None:
        sha = state_dict_sha256(model.state_dict())
    c, m = w.shape
    if c == 1000:
        from pipelines.models.imagenet_classes import imagenet_class_names

        names = list(imagenet_class_names())
    else:
        names = [f"class_{i}" for i in range(c)]
    clf = Classifier(model_id=ms.model_id, slug=slug(ms.model_id), module=model, head_weight=w,
                     head_bias=b, preprocess=pre, num_classes=int(c), num_features=int(m),
                     class_names=names, checkpoint_sha256=sha, head_name=hname)
    if str(device) != "cpu":
        clf.to(device)
    return clf

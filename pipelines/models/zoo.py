"""The paper's 13 classifiers (SING, CVPR 2026: the supplement's Fig. 12b sweep and Table 1), as MODEL strings.

Each entry names the model as the official code does (`name`, also the official translator's
directory: translators/<name>/linear/best.pt), the exact weights it loads (`model`: torchvision
IMAGENET1K_V1 weights and transforms; timm pretrained tags as `timm.create_model(...,
pretrained=True)` resolves them; transformers for DINOv2), the feature dimension its head
reads, and the null dimension of a full-rank 1000-class head on it (m - 1000, or 0).
Facts from the paper and the official repository's configs/models.yaml; no code of theirs.
No heavy imports: `sing models --paper` lists this table without building anything.
"""
from __future__ import annotations

from dataclasses import dataclass

# The CLIP space of the official translators: CLIP ViT-L/14 image embeddings as the Karlo
# unCLIP model uses them (kakao_karlo_v1_alpha_image_variations), i.e. OpenAI ViT-L/14.
PAPER_CLIP = "openclip:ViT-L-14@openai"
# What the provenance of a file imported from the official release says (pipelines.models.official):
# its numbers came from OpenAI's real CLIP, whatever sing built when it was imported.
OFFICIAL_PROVENANCE = "imported from the official SING release"
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ZooModel:
    name: str  # official short name (and translator directory)
    model: str  # the exact MODEL string
    feature_dim: int
    paper_label: str  # how the paper's figures and tables name it

    @property
    def source(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def null_dim(self) -> int:
        return max(0, self.feature_dim - NUM_CLASSES)

    @property
    def translator(self) -> str:
        return f"{self.name}/linear"


PAPER_MODELS: tuple[ZooModel, ...] = (
    ZooModel("resnet", "torchvision:resnet50.IMAGENET1K_V1", 2048, "ResNet50"),
    # the paper's "DinoViT": the official code loads timm's vit_large_patch16_224 default tag
    ZooModel("dinovit1", "timm:vit_large_patch16_224.augreg_in21k_ft_in1k", 1024, "DinoViT"),
    ZooModel("bitresnet", "timm:resnetv2_50x1_bit.goog_in21k_ft_in1k", 2048, "BiT-ResNet"),
    ZooModel("resnext", "timm:resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 2048, "ResNeXt101"),
    ZooModel("efficientnet", "timm:tf_efficientnet_b0.ns_jft_in1k", 1280, "EfficientNet"),
    # the head reads the CLS token concatenated with the mean patch token: 2 x 1024
    ZooModel("dinov2", "hf:facebook/dinov2-large-imagenet1k-1-layer", 2048, "DINOv2"),
    ZooModel("swin_large", "timm:swin_large_patch4_window7_224.ms_in22k_ft_in1k", 1536, "Swin-L"),
    ZooModel("deit", "timm:deit3_large_patch16_224.fb_in1k", 1024, "DeiT"),
    ZooModel("densenet", "torchvision:densenet121.IMAGENET1K_V1", 1024, "DenseNet"),
    ZooModel("eva02_large", "timm:eva02_large_patch14_448.mim_in22k_ft_in22k_in1k", 1024, "EVA02-L"),
    ZooModel("convnext", "timm:convnext_base.fb_in22k_ft_in1k", 1024, "ConvNeXt"),
    ZooModel("vgg16", "torchvision:vgg16.IMAGENET1K_V1", 4096, "VGG16"),
    ZooModel("vgg19", "torchvision:vgg19.IMAGENET1K_V1", 4096, "VGG19"),
)

BY_NAME = {m.name: m for m in PAPER_MODELS}


def paper_model(name: str) -> ZooModel:
    """A zoo entry by official short name (case-insensitive), or by its exact MODEL string."""
    key = name.strip()
    hit = BY_NAME.get(key.lower()) or next((m for m in PAPER_MODELS if m.model == key), None)
    if hit is None:
        raise KeyError(f"no paper model {name!r}; one of {', '.join(BY_NAME)}")
    return hit

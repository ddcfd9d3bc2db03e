"""The online path, rehearsed offline: random weights placed in a temporary HF hub cache in
exactly the files timm, open_clip and transformers look up, then loaded through the ordinary
MODEL strings with the hub offline, in a fresh process (the hub libraries read their cache
location at import)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REVISION = "0123456789abcdef0123456789abcdef01234567"

TINY_DINOV2 = {"model_type": "dinov2", "architectures": ["Dinov2ForImageClassification"], "hidden_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14, "image_size": 518,
               "mlp_ratio": 2, "layerscale_value": 1.0, "num_labels": 10,
               "id2label": {str(i): f"class_{i}" for i in range(10)}, "label2id": {f"class_{i}": i for i in range(10)}}
BIT_PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 72},
                 "resample": 3, "do_center_crop": True, "crop_size": {"height": 56, "width": 56},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _place(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/REV/FILE}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def _safetensors(sd: dict, tmp: Path) -> bytes:
    path = tmp / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    import open_clip
    import timm
    from transformers import AutoConfig, AutoModelForImageClassification

    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub"
    probes = {}
    # timm: the tag's pretrained config names the hub repo timm/resnet50.a1_in1k, model.safetensors
    torch.manual_seed(1)
    rn = timm.create_model("resnet50.a1_in1k", pretrained=False)
    _place(cache, "timm/resnet50.a1_in1k", {"model.safetensors": _safetensors(rn.state_dict(), tmp)})
    probes["timm"] = float(rn.fc.weight[3, 7])
    # open_clip: ViT-B-32@openai comes from timm/vit_base_patch32_clip_224.openai,
    # open_clip_model.safetensors (the safetensors alternative of open_clip_pytorch_model.bin)
    torch.manual_seed(2)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    _place(cache, "timm/vit_base_patch32_clip_224.openai",
           {"open_clip_model.safetensors": _safetensors(clip.state_dict(), tmp)})
    probes["clip"] = float(clip.text_projection[5, 9])
    # transformers: config.json, model.safetensors, preprocessor_config.json of a tiny DINOv2 classifier
    cfg = dict(TINY_DINOV2)
    torch.manual_seed(3)
    hf = AutoModelForImageClassification.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    _place(cache, "sing-test/tiny-dinov2-classifier", {
        "config.json": json.dumps(TINY_DINOV2).encode(), "preprocessor_config.json": json.dumps(BIT_PROCESSOR).encode(),
        "model.safetensors": _safetensors(hf.state_dict(), tmp)})
    probes["hf"] = float(hf.classifier.weight[2, 4])
    return cache, probes


def test_pretrained_model_strings_load_from_the_hub_cache_offline(hub_cache, tmp_path):
    cache, probes = hub_cache
    script = textwrap.dedent("""
        import json
        from pipelines.models.clip import load_clip
        from pipelines.models.classifiers import load_classifier
        out = {}
        clf = load_classifier("timm:resnet50.a1_in1k")
        out["timm"] = [float(clf.head_weight[3, 7]), clf.num_features, clf.preprocess.view_key]
        clip = load_clip("openclip:ViT-B-32@openai")
        out["clip"] = [float(clip.module.text_projection[5, 9]), clip.embed_dim, clip.preprocess.view_key]
        hf = load_classifier("hf:sing-test/tiny-dinov2-classifier")
        out["hf"] = [float(hf.head_weight[2, 4]), hf.num_features, hf.preprocess.view_key, hf.head_name]
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    # the weights placed in the cache are the weights loaded
    assert got["timm"][0] == pytest.approx(probes["timm"]) and got["timm"][1] == 2048
    assert got["timm"][2] == "224c-235r-bicubic"  # resnet50.a1_in1k: crop_pct 0.95, bicubic
    assert got["clip"][0] == pytest.approx(probes["clip"]) and got["clip"][1] == 512
    assert got["clip"][2] == "224c-224r-bicubic"
    # DINOv2's head reads [CLS, mean(patches)]: 2 x 32
    assert got["hf"][0] == pytest.approx(probes["hf"]) and got["hf"][1] == 64
    assert got["hf"][2] == "56x56c-72shortest-bicubic-floor" and got["hf"][3] == "model.classifier"

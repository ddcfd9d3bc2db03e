"""ImageNet class metadata read from timm's shipped files without importing timm (or torch):
the same synsets and descriptions as timm's own ImageNetInfo, and `make_shards` stays light."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.models import imagenet_classes as ic


def test_the_same_metadata_as_timms_own_reader():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert list(ic.imagenet_synsets()) == info.label_names()
    assert list(ic.imagenet_descriptions()) == [info.index_to_description(i) for i in range(1000)]
    names = ic.imagenet_class_names()
    assert names[0] == "tench" and names[134] == "crane (bird)" and names[517] == "crane (machine)"
    assert ic.synset_to_index()["n01440764"] == 0 and ic.synset_to_index()[info.label_names()[999]] == 999


def test_making_shards_imports_neither_timm_nor_torch(tmp_path):
    from tests.pipeline_data import photo_folder

    photos = photo_folder(tmp_path / "photos", per_class=2)
    code = ("import sys; from pipelines.jobs.make_shards import make_shards; "
            f"make_shards({str(photos)!r}, {str(tmp_path / 'shards')!r}, per_shard=4); "
            "print(sorted(m for m in ('timm', 'torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 2

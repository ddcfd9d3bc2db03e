"""`sing bench`'s floor (pipelines.jobs.bench.floor): the audit's stream with a model actor
that only imports, over real shards, counted against the shards' own contents; and the
split of an audit's seconds into floor, model compute and sing's own."""
from __future__ import annotations

import dataclasses
import sys

import pytest

from pipelines.jobs.bench.fixed import fixed_cost, floor_split
from pipelines.jobs.bench.floor import FloorActor, library_imports, run_floor
from tests.pipeline_data import CLASSIFIER, bad_shard, photo_folder


def test_library_imports_name_the_model_library():
    assert library_imports("timm:resnet50.a1_in1k") == ["torch", "timm"]
    assert library_imports("torchvision:resnet50@random") == ["torch", "torchvision"]
    assert library_imports("lite0") == ["torch", "timm"]  # the zoo's Lite0 is a timm model


def test_floor_actor_imports_what_it_is_told(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    a = FloorActor(imports=["colorsys"])
    assert "colorsys" in sys.modules
    spawned, entered, ready = a.ready
    assert spawned <= entered <= ready


def test_floor_split_adds_up():
    s = floor_split(audit_last=20.0, floor_last=12.0, images=100, bare_ips=50.0)
    assert s["model_s"] == pytest.approx(2.0) and s["sing_s"] == pytest.approx(6.0)
    assert s["floor_s"] + s["model_s"] + s["sing_s"] == pytest.approx(s["to_last_row_s"])


def test_fixed_cost_is_the_intercept_of_wall_over_images():
    # wall = 7 + n / 40 at n = 80 and 320
    a, rate = fixed_cost([(80, 7 + 80 / 40), (320, 7 + 320 / 40)])
    assert a == pytest.approx(7.0) and rate == pytest.approx(40.0)
    with pytest.raises(ValueError):
        fixed_cost([(80, 9.0), (80, 9.5)])


def test_floor_streams_every_readable_image_through_an_importing_actor(tmp_path, ray_session):
    from pipelines.jobs.make_shards import make_shards
    from pipelines.models.resolve import resolve_preprocess

    make_shards(str(photo_folder(tmp_path / "photos", per_class=3)), str(tmp_path / "shards"), per_shard=4)
    bad = bad_shard(tmp_path / "shards" / "zz-bad.tar")  # unreadable samples are not images
    view, _ = resolve_preprocess(CLASSIFIER)
    res = run_floor([str(tmp_path / "shards" / "*.tar")], dataclasses.asdict(view), CLASSIFIER, batch_size=4,
                    device="cpu", decode="host")
    # read-stage survivors: decodable images, a label outside the head included (a model error)
    assert res["rows"] == 9 + sum(v in ("ok", "model") for v in bad.values()) == 14
    tl = res["timeline"]
    assert tl["ray_up"] <= tl["stream_started"] <= tl["first_result"] <= tl["last_result"]
    assert tl["actor_entered"] <= tl["actor_ready"] <= tl["first_result"]

"""--shards-per-task K: each read task reads K shards into one block of whole shards (each
shard's rows in order, then its end row), so the model actors' tasks take K shards each. The
audit's results do not depend on K (tests/test_pipeline.py); this checks the blocks themselves."""
from __future__ import annotations

import pytest

from tests.pipeline_data import photo_folder


@pytest.fixture(scope="module")
def seven_shards(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("per_task")
    make_shards(str(photo_folder(root / "photos", per_class=7)), str(root / "shards"), per_shard=3)
    return sorted(str(p) for p in (root / "shards").glob("*.tar"))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_a_block_holds_k_whole_shards_in_order(seven_shards, k):
    import ray

    from pipelines.jobs import spine
    from pipelines.jobs.bench.scale_stream import ScaleOptions
    from pipelines.models.preprocess import PreprocessSpec
    from pipelines.io.shards import shard_name

    view = PreprocessSpec(size=8, resize=8, interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3)
    opts = ScaleOptions(shards=seven_shards, out="-", shards_per_task=k, progress=False)
    ds = spine.read_stage(seven_shards, opts, [view]).materialize()
    blocks = [ray.get(ref) for bundle in ds.iter_internal_ref_bundles() for ref in bundle.block_refs]
    blocks = [b.to_pandas() for b in blocks if b.num_rows]
    n = len(seven_shards)
    assert len(blocks) == -(-n // k)  # ceil(n / k) tasks, one block each
    seen = []
    for b in blocks:
        shards = list(dict.fromkeys(b["shard"]))
        assert len(shards) <= k
        for s in shards:
            rows = b[b["shard"] == s]
            assert list(rows["status"])[-1] == "end" and (rows["status"] == "end").sum() == 1
            assert list(rows["seq"][:-1]) == list(range(len(rows) - 1))  # whole, in position order
        seen += shards
    assert sorted(seen) == sorted(shard_name(p) for p in seven_shards) and len(seen) == n

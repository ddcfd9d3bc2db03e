"""Every failure is a row or an exit code: degenerate scores, non-finite samples in a fit, and
oversized tar members become rows of an errors table instead of vanishing or failing a run."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from pipelines.cli import main as sing
from tests.pipeline_data import CLASSIFIER, photo_folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("failrows")
    make_shards(str(photo_folder(root / "photos", per_class=3)), str(root / "shards"), per_shard=5)
    return root


def test_degenerate_scores_are_error_rows_not_silent_nulls(shards, tmp_path):
    """A translator that maps every feature to 0: every angle is undefined. Each image must be
    an `errors` row of stage `score`, none an images row with NULL scores."""
    from sing_ops import Translator

    from pipelines.models.translator_file import save_translator
    from pipelines.models.classifiers import load_classifier

    clf = load_classifier(CLASSIFIER)
    tr = save_translator(Translator(torch.zeros(32, clf.num_features), torch.zeros(32),
                                    {"source_model": clf.model_id, "clip_model": "openclip:tiny@random"}),
                         tmp_path / "zero.safetensors")
    out = tmp_path / "res"
    assert sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(tr), "--shards",
                 str(shards / "shards" / "*.tar"), "--out", str(out)]) == 0
    errors = pl.read_parquet(str(out / "errors" / "**" / "*.parquet"))
    images = list(out.glob("images/**/*.parquet"))
    assert sum(pl.read_parquet(p).height for p in images) == 0
    assert errors.height == 9 and set(errors["stage"]) == {"score"}
    assert errors["reason"].str.contains("undefined").all()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_an_oversized_member_is_an_error_row_and_never_read(tmp_path, monkeypatch):
    from pipelines.io import shards as sh

    photo_folder(tmp_path / "photos", per_class=1)
    jpeg = next((tmp_path / "photos").rglob("*.jpg")).read_bytes()
    _tar(tmp_path / "s.tar", {"a.jpg": jpeg, "a.cls": b"0", "big.jpg": b"\xff" * 300_000, "big.cls": b"1",
                              "c.jpg": jpeg, "c.cls": b"2"})
    reads = []
    real = tarfile.ExFileObject.read

    def counting_read(self, *a, **k):
        data = real(self, *a, **k)
        reads.append(len(data))
        return data

    monkeypatch.setattr(tarfile.ExFileObject, "read", counting_read)
    got = list(sh.iter_shard(str(tmp_path / "s.tar"), max_sample_bytes=100_000))
    assert [type(g).__name__ for g in got] == ["Sample", "SampleError", "Sample"]
    assert got[1].key == "big" and got[1].stage == "read" and "above the limit of 100000" in got[1].reason
    assert max(reads) < 100_000  # the 300 kB member was never read into memory


def test_the_read_limit_reaches_the_audit(shards, tmp_path, capsys):
    """--max-sample-bytes is a read option: declared once, passed to the read tasks as is."""
    from tests.test_multimodel import random_translator

    tr = random_translator(CLASSIFIER, tmp_path / "t.safetensors")
    out = tmp_path / "res"
    assert sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(tr), "--shards",
                 str(shards / "shards" / "*.tar"), "--out", str(out), "--max-sample-bytes", "100"]) == 0
    errors = pl.read_parquet(str(out / "errors" / "**" / "*.parquet"))
    assert errors.height == 9 and errors["reason"].str.contains("--max-sample-bytes").all()
    man = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert man["config"]["max_sample_bytes"] == 100
    assert sing(["audit", "--model", CLASSIFIER, "--translator", str(tr), "--shards", "x", "--out", "o",
                 "--max-sample-bytes", "0"]) == 2
    assert "--max-sample-bytes must be at least 1" in capsys.readouterr().err


def test_fit_sums_leave_out_non_finite_samples_and_name_them():
    from sing_ops import RidgeStats

    from pipelines.jobs.fit.stats import NONFINITE, ridge_aggregation, unpack_many, unpack_stats

    m, d = 4, 3
    rng = np.random.default_rng(0)
    f, z = rng.normal(size=(5, m)).astype(np.float32), rng.normal(size=(5, d)).astype(np.float32)
    f[1, 2] = np.nan
    z[3, 0] = np.inf
    # the shard's "end" row is a marker: neither used nor an error
    block = pa.table({"key": ["a", "b", "c", "d", "e", "x", "s#end"], "shard": ["s"] * 7,
                      "status": ["ok"] * 5 + ["error", "end"], "stage": [""] * 5 + ["decode", ""],
                      "reason": [""] * 5 + ["broken jpeg", ""],
                      "f0/emb": list(np.vstack([f, np.zeros((2, m), np.float32)])),
                      "z/emb": list(np.vstack([z, np.zeros((2, d), np.float32)]))})
    agg = ridge_aggregation([m], d)
    # two blocks merged as Ray merges them: the first five rows, then the unreadable one and the end
    merged = agg.combine(agg.aggregate_block(block.slice(0, 5)), agg.aggregate_block(block.slice(5, 2)))
    blobs = unpack_many(merged)
    assert int(np.frombuffer(blobs[-1], np.int64)[0]) == 5  # the readable images seen
    stats, errors = unpack_stats(blobs[0], m, d)
    assert stats.n == 3 and torch.isfinite(stats.sum_ff).all()
    direct = RidgeStats(m, d).update(torch.from_numpy(f[[0, 2, 4]]), torch.from_numpy(z[[0, 2, 4]]))
    torch.testing.assert_close(stats.sum_fz, direct.sum_fz)
    assert sorted(map(tuple, errors)) == [("b", "s", "model", NONFINITE), ("d", "s", "model", NONFINITE),
                                                    ("x", "s", "decode", "broken jpeg")]

"""The model actor on CUDA (bf16 autocast, channels_last, nvJPEG decode) against the CPU
float32 actor on the same images. Skipped without a GPU; run by tests/scripts/gpu_check.sh."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.models.translator_file import save_translator
from tests.pipeline_data import CLASSIFIER, photo_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batches(tmp_path, encoded: bool):
    from pipelines.models.classifiers import load_classifier
    from pipelines.stages.read import read_decode
    from pipelines.jobs.make_shards import make_shards

    if not (tmp_path / "shards").exists():
        make_shards(str(photo_folder(tmp_path / "photos", per_class=6)), str(tmp_path / "shards"), per_shard=18)
    view = load_classifier(CLASSIFIER).preprocess
    path = np.array([str(next((tmp_path / "shards").glob("*.tar")))])
    return [b for b in read_decode({"path": path}, [view], chunk_size=64, encoded=encoded)
            if (b["status"] == "ok").any()]


def _actor(tmp_path, device, decode):
    from pipelines.stages.actors import ScoreActor
    from pipelines.models.classifiers import load_classifier
    from sing_ops import Translator

    clf, g = load_classifier(CLASSIFIER), torch.Generator().manual_seed(0)
    tr = save_translator(Translator(torch.randn(32, clf.num_features, generator=g), torch.randn(32, generator=g),
                                    {"source_model": clf.model_id, "clip_model": "openclip:tiny@random"}),
                         tmp_path / "t.safetensors")
    text = np.random.default_rng(0).standard_normal((10, 32)).astype(np.float32)
    return ScoreActor("m0", CLASSIFIER, str(tr), text, device=device, decode=decode)


def test_cuda_actor_matches_cpu_actor(tmp_path):
    (batch,) = _batches(tmp_path, encoded=False)
    cpu = _actor(tmp_path, "cpu", "host")(batch)
    gpu = _actor(tmp_path, "cuda", "host")(batch)
    (enc,) = _batches(tmp_path, encoded=True)
    gdev = _actor(tmp_path, "cuda", "device")(enc)
    ok = batch["status"] == "ok"
    assert ok.sum() == 18 and (gpu["m0/error"] == "").all() and (gdev["m0/error"] == "").all()
    for out in (gpu, gdev):
        assert np.nanmax(out["m0/logit_drift"][ok]) < 5e-2  # bf16 features, float32 projector
        d = np.abs(out["m0/as_deg"][ok] - cpu["m0/as_deg"][ok])
        assert np.median(d) < 1.0, np.median(d)
    assert (gpu["m0/pred"][ok] == cpu["m0/pred"][ok]).mean() >= 0.9


def test_threads_on_one_cuda_actor_give_the_serial_results(tmp_path):
    """--actor-threads: two threads call one actor at once, each on its own CUDA stream; each
    batch's results equal the same batch scored alone (nothing crosses between streams)."""
    from concurrent.futures import ThreadPoolExecutor

    (enc,) = _batches(tmp_path, encoded=True)
    actor = _actor(tmp_path, "cuda", "device")
    halves = []
    for part in (slice(0, 9), slice(9, None)):
        halves.append({k: v[part] for k, v in enc.items()})
    serial = [actor(h) for h in halves]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            threaded = list(pool.map(actor, halves))
            for s, t in zip(serial, threaded):
                for col in ("m0/as_deg", "m0/is_deg", "m0/logit_drift", "m0/pred"):
                    np.testing.assert_allclose(t[col], s[col], rtol=0, atol=1e-5, err_msg=col)

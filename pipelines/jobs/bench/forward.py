"""`sing bench`'s measurements inside one process: the bare forward (eager or compiled, the
ceiling a pipeline races), the naive per-image loop, and the memory of a process tree."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from pipelines.models.translator_file import load_translator
from pipelines.models.precision import DEFAULT_PRECISION


def _rss_tree(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        pss = _pss(q.pid)
        if pss is None:
            try:
                pss = q.memory_info().rss
            except psutil.Error:
                pss = 0
        total += pss
    return total


def _pss(pid: int) -> int | None:
    """PSS: shared pages (Ray's object store, libraries) split among their users, so a sum
    over processes counts them once. smaps_rollup is one cheap read; psutil's full smaps
    walk took a visible share of a 2-core machine at this sampling rate."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_pss_of(cmd: list[str], env: dict) -> tuple[int, int, str]:
    """Run cmd; sample the memory (PSS) of its whole process tree every 200 ms. (peak bytes, rc, tail)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _rss_tree(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    return peak[0], proc.returncode, out[-2000:]


def bare_forward_rate(clf, batch_size: int, n_images: int, threads: int, device: str = "cpu",
                      precision: str = DEFAULT_PRECISION, compile: str = "off") -> tuple[float, float]:
    """The ceiling: in-memory random inputs, the precision and layout the actors use
    (pipelines.models.precision; channels_last on CUDA), eager or compiled as the actors would
    (pipelines.models.compiled). Returns (images/s, seconds spent compiling)."""
    import torch

    from pipelines.models.compiled import CompiledClassifier, torch_mode
    from pipelines.models.precision import configure, features_and_logits, model_inputs

    torch.set_num_threads(threads)
    configure(precision)
    cuda = device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (batch_size, *clf.preprocess.crop_hw, 3), dtype=torch.uint8, generator=g)
    x = model_inputs(u8, clf.preprocess, precision, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, t_compile = clf, 0.0
    if torch_mode(compile):
        t0 = time.perf_counter()
        model = CompiledClassifier(clf, compile, batch_size)
        model.warm_up(precision, device)
        sync()
        t_compile = time.perf_counter() - t0
    try:
        for _ in range(3 if cuda else 1):  # warm-up (cuDNN picks its algorithms)
            features_and_logits(model, x, precision)
        sync()
        n, t0 = 0, time.perf_counter()
        while n < n_images:
            features_and_logits(model, x, precision)
            n += batch_size
        sync()
        return n / (time.perf_counter() - t0), t_compile
    finally:
        if model is not clf:
            model.close()


def naive_loop_rate(clf, translator_path: Path, shard_paths: list[str], n_images: int, threads: int,
                    device: str = "cpu") -> float:
    """Single-image code: for each image decode -> transform -> forward -> SING scores
    (float32, as the official code does)."""
    import torch

    from sing_ops import AuditScorer, HeadDecomposition

    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.io.shards import Sample, iter_shard

    torch.set_num_threads(threads)
    tr = load_translator(translator_path)
    dec = HeadDecomposition.from_weight(clf.head_weight)
    text = torch.randn(clf.num_classes, tr.out_dim)
    samples = [s for p in shard_paths for s in iter_shard(p) if isinstance(s, Sample)][:n_images]
    t0 = time.perf_counter()
    for s in samples:
        # the single-image path rebuilds its projector and scorer per image, like one-image code
        scorer = AuditScorer(clf.head_weight, dec, tr, text, device=device)
        u8 = torch.from_numpy(to_uint8_view(decode_image(s.image), clf.preprocess))[None].to(device)
        with torch.inference_mode():
            f, logits = clf.features_and_logits(normalise(u8, clf.preprocess))
            res = scorer.score(f, torch.tensor([s.label % clf.num_classes], device=device), logits)
        float(res["is_deg"][0])  # the result reaches the host, as single-image code prints it
    return len(samples) / (time.perf_counter() - t0)

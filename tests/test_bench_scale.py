"""bench-scale's arithmetic: the driver's CPU split into a time-based part (Ray Data's polling)
and a per-image part, from a free-running and a throttled run, checked against runs made from
known parts; and the report lines it derives from them."""
from __future__ import annotations

import pytest

from pipelines.jobs.bench.scale import ScaleConfig, format_results, split_driver_cpu


def _run(a: float, b: float, images: int, wall: float) -> dict:
    cpu = a * wall + b * images
    return {"images": images + 1000, "measured_images": images, "driver_cpu_s": cpu, "wall_s": wall,
            "cpu_us_per_image": cpu / images * 1e6, "images_per_s": images / wall, "peak_rss_mb": 680.0,
            "shards": 100}


@pytest.mark.parametrize("a,b", [(0.035, 5.6e-6), (0.0, 13.8e-6), (0.2, 1e-7)])
def test_the_split_recovers_known_parts(a, b):
    free, slow = _run(a, b, 99_000, 20.8), _run(a, b, 99_000, 143.3)
    got_a, got_b = split_driver_cpu(free, slow)
    assert got_a == pytest.approx(a, abs=1e-9) and got_b == pytest.approx(b, rel=1e-9, abs=1e-15)


def test_a_throttled_run_that_is_not_slower_is_refused():
    with pytest.raises(ValueError, match="longer"):
        split_driver_cpu(_run(0.03, 5e-6, 1000, 10.0), _run(0.03, 5e-6, 1000, 10.0))


def test_the_report_extrapolates_from_the_split():
    cfg = ScaleConfig(sizes=(1, 10), shards_per_task=(4,), throttled=1500.0, gpu_rate=12_000.0, models=2)
    runs = {(4, 1): _run(0.033, 5.6e-6, 16_000, 1.2), (4, 10): _run(0.033, 5.6e-6, 196_000, 37.1)}
    lines = format_results(cfg, runs, {4: _run(0.033, 5.6e-6, 196_000, 133.8)})
    assert "4 shard(s) per task, split: 3.3% of a core whatever flows + 5.6 us per image" in "\n".join(lines)
    need = 64 * 12_000 / 2
    want = f"4 shard(s) per task,  64 GPUs, from the split: {need:,.0f} img/s ask {0.033 + need * 5.6e-6:.3f}"
    assert any(line.startswith(want) for line in lines), lines

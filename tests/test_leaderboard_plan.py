"""The leaderboard's selection and planning, no Ray: SELECTION strings to MODEL strings, every
model described before any work (pipelines.models.resolve), the skipped ones with a reason, and
the runnable ones grouped into decode passes by eval transform."""
from __future__ import annotations

import fnmatch

import pytest

from pipelines.jobs.leaderboard.plan import passes, plan_models
from pipelines.jobs.leaderboard.selection import SelectionError, expand


def test_timm_patterns_select_the_imagenet_heads():
    import timm

    every = expand(["timm:*"])
    want = [n for n in timm.list_pretrained() if timm.models.get_pretrained_cfg(n).num_classes == 1000]
    assert every == [f"timm:{n}" for n in want] and len(every) == 1321  # timm 1.0.31's ImageNet-1k tags
    some = expand(["timm:resnet50.*"])
    assert some and all(fnmatch.fnmatch(m, "timm:resnet50.*") for m in some) and set(some) <= set(every)
    with pytest.raises(SelectionError, match="matches no timm pretrained tag"):
        expand(["timm:no_such_net_*"])


def test_files_paper_and_zoo_names_keep_order_once(tmp_path):
    from pipelines.models.zoo import PAPER_MODELS

    f = tmp_path / "m.txt"
    f.write_text("# mine\nlite0\n\ntimm:test_vit@random  # a tiny one\nlite0\n")
    got = expand([str(f), "resnet", "paper"])
    assert got[:3] == ["lite0", "timm:test_vit@random", "torchvision:resnet50.IMAGENET1K_V1"]
    assert got[2:] == [m.model for m in PAPER_MODELS]  # resnet is the paper's first; no repeats
    with pytest.raises(SelectionError, match="at least one"):
        expand([" "])


def test_plan_says_why_a_model_cannot_take_part():
    cands = plan_models(["timm:mobilenetv3_small_050@random", "timm:resnet50.a1_in1k", "timm:no_such_net",
                         "torchvision:squeezenet1_0@random", "timm:test_vit@random", "lite0",
                         "timm:resnet18@random?num_classes=10"])
    why = {c.model_string: c.reason for c in cands}
    assert why["timm:mobilenetv3_small_050@random"] == "" and why["lite0"] == ""
    assert why["timm:resnet50.a1_in1k"].startswith("weights not available: the pretrained weights for "
                                                   "timm:resnet50.a1_in1k are not in the local cache")
    assert why["timm:no_such_net"].startswith("UnknownModelError: timm has no model 'no_such_net'")
    assert why["torchvision:squeezenet1_0@random"].startswith("no single linear head: the head's input is spatial")
    assert why["timm:test_vit@random"] == "no null space: 64 features for 1000 classes"
    assert why["timm:resnet18@random?num_classes=10"] == ("its head has 10 classes; the leaderboard ranks "
                                                          "ImageNet-1k (1000) heads")
    d = cands[0].described
    assert (d.family, d.pretrain, d.num_features, d.num_classes, d.null_dim_bound) == \
        ("mobilenetv3", "random", 1024, 1000, 24)
    assert d.params == sum(p.numel() for p in __import__("timm").create_model("mobilenetv3_small_050").parameters())


def test_passes_group_models_by_eval_transform():
    cands = plan_models(["timm:mobilenetv3_small_050@random", "lite0", "timm:lcnet_050@random",
                         "timm:mobilenetv3_small_075@random", "timm:test_vit@random"])
    got = [[c.model_string for c in p] for p in passes(cands, 2)]
    assert got == [["timm:mobilenetv3_small_050@random", "timm:lcnet_050@random"],
                   ["timm:mobilenetv3_small_075@random"], ["lite0"]]  # 224c-256r-bicubic twice, then Lite0's


def test_ratio_intervals_match_a_naive_bootstrap():
    """The row's 95% intervals of both IS/|AS| ratios (scipy's vectorized bootstrap, seeded)
    against a plain loop over resamples with another generator: the same percentiles within
    Monte Carlo error; too few images give no interval."""
    import numpy as np

    from pipelines.jobs.leaderboard.summary import ratio_intervals

    rng = np.random.default_rng(7)
    aa, i = np.abs(rng.normal(2.0, 1.0, 400)), np.abs(rng.normal(5.0, 2.0, 400))
    got = ratio_intervals(aa, i, 4000)
    boot = np.random.default_rng(123)
    of_means, medians = [], []
    for _ in range(4000):
        idx = boot.integers(0, len(aa), len(aa))
        of_means.append(i[idx].mean() / aa[idx].mean())
        medians.append(np.median(i[idx] / aa[idx]))
    for name, samples in (("ratio_of_means", of_means), ("median_ratio", medians)):
        lo, hi = np.percentile(samples, [2.5, 97.5])
        width = hi - lo
        assert abs(got[f"{name}_lo"] - lo) < 0.1 * width and abs(got[f"{name}_hi"] - hi) < 0.1 * width, (name, got)
    assert set(ratio_intervals(aa[:1], i[:1], 1000).values()) == {None}

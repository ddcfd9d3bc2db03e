"""Schemas the queries rely on: the results tables that a query may find in either of two
layouts (the concept angles: lists since 2026-12-03, long before), for the empty stand-in of a
layout a results directory does not hold (equal to the writers': tests/test_queries.py checks),
and the leaderboard's summary rows (`sing leaderboard` writes one file per model and board:
OUT/leaderboard/model=<slug>/run=<board id>/summary.parquet)."""
from __future__ import annotations

import pyarrow as pa

SCHEMAS = {
    "concept_angles": pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()),
        ("angle_before_deg", pa.list_(pa.float32())), ("angle_after_deg", pa.list_(pa.float32()))]),
    "concept_vocab": pa.schema([("concept_index", pa.int32()), ("concept", pa.string())]),
    "concepts": pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("concept", pa.string()),
        ("angle_before_deg", pa.float32()), ("angle_after_deg", pa.float32()), ("as_deg", pa.float32())]),
    # one row per model of a leaderboard (pipelines/jobs/leaderboard); status "ok" rows carry the
    # numbers, "skipped" rows (weights missing, no linear head, no null space...) and "failed"
    # rows the reason and NULL numbers
    "leaderboard": pa.schema([
        ("model_string", pa.string()), ("model_id", pa.string()), ("family", pa.string()),
        ("pretrain", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("params", pa.int64()), ("num_features", pa.int32()), ("num_classes", pa.int32()),
        ("null_dim", pa.int32()), ("eval_transform", pa.string()),
        ("n_images", pa.int64()), ("n_scored", pa.int64()), ("top1", pa.float64()),
        ("median_abs_as", pa.float64()), ("median_is", pa.float64()),
        ("ratio_of_means", pa.float64()), ("ratio_of_means_lo", pa.float64()), ("ratio_of_means_hi", pa.float64()),
        ("median_ratio", pa.float64()), ("median_ratio_lo", pa.float64()), ("median_ratio_hi", pa.float64()),
        ("heldout_cosine", pa.float64()), ("heldout_r2", pa.float64()), ("translator_id", pa.string()),
        ("top_concepts", pa.list_(pa.struct([("concept", pa.string()), ("mean_as", pa.float64())]))),
        ("seconds", pa.float64()), ("audit_run", pa.string())]),
}

"""The schemas of the results tables that a query may find in either of two layouts (the
concept angles: lists since 2026-12-03, long before), for the empty stand-in of a layout a
results directory does not hold. Equal to the writers' (tests/test_queries.py checks)."""
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
}

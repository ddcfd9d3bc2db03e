"""Ray Data stage 1: one task per shard reads the tar and decodes every image once.

Output batches are dicts of numpy arrays, one row per sample:
    key, shard            str
    label                 int64 (-1 when unknown)
    status                "ok" | "error" | "end"
    stage, reason         str (error rows)
    seq                   int64 (the row's position in its shard, 0..n_rows-1; end row: -1)
    n_rows                int64 (end row: rows emitted for this shard before it)
    t_read                float64 (end row: seconds spent reading + decoding the shard)
    img:<view_key>        uint8 (N, H, W, 3), one column per distinct eval transform
  device-decode mode, instead of img:*:
    enc                   object (bytes): a JPEG the model actor decodes on its device
                          (pipelines.stages.device_decode); its header was checked here; b"" when
                          the row was decoded here
    u8:<view_key>         object (bytes): the (H, W, 3) uint8 view decoded here, for images
                          the device cannot take (PNG, CMYK, truncated ...) and the host
                          share; b"" for rows the actor decodes
Each shard ends with exactly one "end" row, after all of its rows, and the whole shard leaves
the task as one block (pipelines.stages.ray_session: no block splitting), so the model actor
that writes the shard (pipelines.stages.shard_writer) sees all of its rows, then the end row.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from pipelines.stages.device_decode import device_can_take, host_view_bytes
from pipelines.io.images import ImageDecodeError, decode_image, open_image, to_uint8_view
from pipelines.models.preprocess import PreprocessSpec
from pipelines.io.shards import DEFAULT_MAX_SAMPLE_BYTES, SampleError, iter_shard, shard_name

IMG_PREFIX = "img:"
ENC_COLUMN = "enc"  # encoded image bytes (device-decode mode)
U8_PREFIX = "u8:"  # host-decoded view bytes (device-decode mode)
DECODE_ERROR_PREFIX = "decode_error:"


def view_column(spec: PreprocessSpec) -> str:
    return IMG_PREFIX + spec.view_key


def u8_column(spec: PreprocessSpec) -> str:
    return U8_PREFIX + spec.view_key


def decode_error_column(spec: PreprocessSpec) -> str:
    """Device mode, several models of one view: why a row failed to decode ("" when it did),
    written beside img:<view> by the model actor that decoded the view for the others."""
    return DECODE_ERROR_PREFIX + spec.view_key


def encoded_columns(views: list[PreprocessSpec]) -> list[str]:
    """The image columns of device-decode mode (what the last model actor drops)."""
    return [ENC_COLUMN] + [c for v in views for c in (u8_column(v), view_column(v), decode_error_column(v))]


def unique_views(specs) -> list[PreprocessSpec]:
    """Distinct decode views (models with equal resize/crop/interpolation share one)."""
    seen: dict[str, PreprocessSpec] = {}
    for s in specs:
        seen.setdefault(s.view_key, s)
    return list(seen.values())


class _Chunk:
    def __init__(self, shard: str, views: list[PreprocessSpec], encoded: bool = False):
        self.shard, self.views, self.encoded = shard, views, encoded
        self.rows: list[tuple] = []  # (key, label, status, stage, reason, n_rows, t_read, images|bytes|None, seq)
        self.seq = 0  # rows of the shard so far
        # images: {view_key: (S, S, 3) uint8} decoded here, or (encoded mode) JPEG bytes

    def add(self, key, label=-1, status="ok", stage="", reason="", n_rows=0, t_read=0.0, images=None):
        seq = -1 if status == "end" else self.seq
        self.seq += status != "end"
        self.rows.append((key, label, status, stage, reason, n_rows, t_read, images, seq))

    def flush(self) -> dict:
        rows, self.rows = self.rows, []
        n = len(rows)
        out = {
            "key": np.array([r[0] for r in rows], dtype=object),
            "shard": np.array([self.shard] * n, dtype=object),
            "label": np.array([r[1] for r in rows], dtype=np.int64),
            "status": np.array([r[2] for r in rows], dtype=object),
            "stage": np.array([r[3] for r in rows], dtype=object),
            "reason": np.array([r[4] for r in rows], dtype=object),
            "n_rows": np.array([r[5] for r in rows], dtype=np.int64),
            "t_read": np.array([r[6] for r in rows], dtype=np.float64),
            "seq": np.array([r[8] for r in rows], dtype=np.int64),
        }
        if self.encoded:
            out[ENC_COLUMN] = _objects([r[7] if isinstance(r[7], bytes) else b"" for r in rows])
            for v in self.views:
                out[u8_column(v)] = _objects([host_view_bytes(r[7][v.view_key]) if isinstance(r[7], dict) else b""
                                              for r in rows])
            return out
        for v in self.views:
            arr = np.zeros((n, *v.crop_hw, 3), dtype=np.uint8)
            for i, r in enumerate(rows):
                if r[7] is not None:
                    arr[i] = r[7][v.view_key]
            out[view_column(v)] = arr
        return out


def _objects(values: list) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def host_pick(share: float, n: int) -> bool:
    """Whether the n-th (0-based) device-decodable image of a shard is decoded on the host:
    `share` of them, evenly spread (a fixed rule, so a rerun decodes each image the same way)."""
    return int((n + 1) * share) > int(n * share)


def read_decode(batch: dict, views: list[PreprocessSpec], chunk_size: int = 64,
                max_pixels: int | None = None, only_label: int | None = None,
                encoded: bool = False, host_share: float = 0.0,
                max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES) -> Iterator[dict]:
    """map_batches UDF (batch_size=1 over shard paths): yields chunks of decoded samples.

    only_label: decode and emit only samples of this class (`sing steer`: one class is ~0.1%
    of ImageNet, the rest is never decoded); read errors are kept either way.
    encoded: device-decode mode: check each header and pass device-decodable JPEGs on as
    bytes; the rest, and `host_share` of those, are decoded here (the read tasks' CPU cores
    and the GPU's JPEG decoder then work side by side)."""
    if encoded and not views:
        raise ValueError("device-decode mode needs the views, for the images decoded on the host")
    if not 0.0 <= host_share <= 1.0:
        raise ValueError(f"host_share must be within [0, 1], got {host_share}")
    for path in batch["path"]:
        t0 = time.perf_counter()
        shard = shard_name(path)
        chunk = _Chunk(shard, views, encoded)
        emitted = n_device = 0
        for item in iter_shard(path, max_sample_bytes=max_sample_bytes):
            if isinstance(item, SampleError):
                chunk.add(item.key, status="error", stage=item.stage, reason=item.reason)
            elif only_label is not None and item.label != only_label:
                continue
            else:
                try:
                    limit = {"max_pixels": max_pixels} if max_pixels else {}
                    to_device = False
                    if encoded and device_can_take(open_image(item.image, **limit), item.image):
                        to_device = not host_pick(host_share, n_device)
                        n_device += 1
                    if to_device:
                        chunk.add(item.key, label=int(item.label), images=bytes(item.image))
                    else:
                        img = decode_image(item.image, **limit)
                        images = {v.view_key: to_uint8_view(img, v) for v in views}
                        chunk.add(item.key, label=int(item.label), images=images)
                except ImageDecodeError as exc:
                    chunk.add(item.key, label=int(item.label), status="error", stage="decode", reason=str(exc))
            if len(chunk.rows) >= chunk_size:
                emitted += len(chunk.rows)
                yield chunk.flush()
        emitted += len(chunk.rows)
        chunk.add(f"{shard}#end", status="end", n_rows=emitted, t_read=time.perf_counter() - t0)
        yield chunk.flush()

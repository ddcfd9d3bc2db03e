"""Models the driver prepared, handed to the model actors through Ray's object store.

The driver loads every model anyway (to check it and describe it in the manifest), and the
audit's driver decomposes each head (a float64 SVD: seconds for a large head, more under
contention). Each actor used to repeat all of it: build the architecture (random init of
every weight), load the checkpoint, hash it, run a verification forward, decompose the head.
With `share`, the driver's objects go into the object store once and every actor `take`s
them: one deserialisation, nothing rebuilt, and every actor scores with exactly the
driver's weights and bases.

The object travels packed (`pack`): its tensors' bytes as numpy arrays beside a small
pickle of everything else, so the object store holds them out of band (no pickling of the
bytes on `put`, zero-copy views on `get`), and `take` copies each into a writable tensor
(one memcpy; in-place writes into the store's read-only memory would crash). Measured on the
2-core CPU with ViT-L/16 (1.2 GB): put 2.5 -> 0.7 s, an actor's get 3.5 s -> a copy.

This is Ray's own serialisation of objects this process built (like every actor argument);
no checkpoint file is unpickled here.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass


@dataclass
class PreparedModel:
    model: object  # pipelines.models.classifiers.Classifier or pipelines.models.clip.ClipModel, on the CPU
    decomposition: object | None = None  # sing_ops.HeadDecomposition (audit)
    translator: object | None = None  # sing_ops.Translator (audit)


@dataclass
class Packed:
    blob: bytes  # the object, each CPU tensor replaced by its index in `arrays`
    arrays: list  # numpy uint8 arrays: the tensors' bytes


def pack(obj) -> Packed:
    import torch
    from ray import cloudpickle

    arrays: list = []

    class _Pickler(cloudpickle.CloudPickler):
        def persistent_id(self, o):
            if type(o) not in (torch.Tensor, torch.nn.Parameter) or o.device.type != "cpu" \
                    or o.layout != torch.strided or o.is_quantized:
                return None  # pickled as usual
            t = o.detach().contiguous()
            arrays.append(t.reshape(-1).view(torch.uint8).numpy())  # any dtype, bf16 included
            return ("tensor", len(arrays) - 1, t.dtype, tuple(t.shape), isinstance(o, torch.nn.Parameter),
                    o.requires_grad)

    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(obj)
    return Packed(buf.getvalue(), arrays)


def unpack(p: Packed):
    import numpy as np
    import torch

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            _, i, dtype, shape, is_param, grad = pid
            if p.arrays[i].size == 0:  # no bytes to view as `dtype`
                t = torch.empty(shape, dtype=dtype)
            else:  # a writable copy: the store's arrays are read-only
                t = torch.from_numpy(np.array(p.arrays[i], copy=True)).view(dtype).reshape(shape)
            return torch.nn.Parameter(t, requires_grad=grad) if is_param else t

    return _Unpickler(io.BytesIO(p.blob)).load()


def share(model, decomposition=None, translator=None):
    """An object-store reference to the prepared model (Ray must be up), packed. The caller
    keeps the reference for the whole run: the object lives as long as a reference does, and
    a restarted actor needs it again."""
    import ray

    if getattr(model, "tokenizer", None) is not None:  # a CLIP's tokenizer: the actors embed no text
        model = dataclasses.replace(model, tokenizer=None)
    return ray.put(pack(PreparedModel(model, decomposition, translator)))


def take(prepared) -> PreparedModel:
    """The PreparedModel behind a reference (or the object itself, for in-process callers)."""
    import ray

    obj = ray.get(prepared) if isinstance(prepared, ray.ObjectRef) else prepared
    return unpack(obj) if isinstance(obj, Packed) else obj

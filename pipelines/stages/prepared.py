"""Models the driver prepared, handed to the model actors through Ray's object store.

The driver loads every model anyway (to check it and describe it in the manifest), and the
audit's driver decomposes each head (a float64 SVD: seconds for a large head, more under
contention). Each actor used to repeat all of it: build the architecture (random init of
every weight), load the checkpoint, hash it, run a verification forward, decompose the head.
With `share`, the driver's objects go into the object store once and every actor `take`s
them: one deserialisation, nothing rebuilt, and every actor scores with exactly the
driver's weights and bases.

This is Ray's own serialisation of objects this process built (like every actor argument);
no checkpoint file is unpickled here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class PreparedModel:
    model: object  # pipelines.models.classifiers.Classifier or pipelines.models.clip.ClipModel, on the CPU
    decomposition: object | None = None  # sing_ops.HeadDecomposition (audit)
    translator: object | None = None  # sing_ops.Translator (audit)


def share(model, decomposition=None, translator=None):
    """An object-store reference to the prepared model (Ray must be up). The caller keeps the
    reference for the whole run: the object lives as long as a reference does, and a
    restarted actor needs it again."""
    import ray

    if getattr(model, "tokenizer", None) is not None:  # a CLIP's tokenizer: the actors embed no text
        model = dataclasses.replace(model, tokenizer=None)
    return ray.put(PreparedModel(model, decomposition, translator))


def take(prepared) -> PreparedModel:
    """The PreparedModel behind a reference (or the object itself, for in-process callers)."""
    import ray

    return ray.get(prepared) if isinstance(prepared, ray.ObjectRef) else prepared

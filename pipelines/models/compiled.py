"""`--compile`: the classifier's forward through torch.compile, raced against eager by
`sing bench` and held to the precision budget by `sing bench-precision --compile`.

    off     eager PyTorch (the default)
    auto    the mode measured best: "default" (Inductor kernels, no CUDA graphs; see below)
    default | reduce-overhead | max-autotune-no-cudagraphs | max-autotune   torch.compile's own

What is compiled is the capturing forward (image -> head input f, logits) as one module, so
the hook that captures f is traced with the model. Shapes are kept static: every batch is
padded to the actor's batch size (with copies of its last row) and the result sliced, so one
graph serves the whole run and CUDA graphs (reduce-overhead) can replay; the compilation
happens in the actor's constructor (a warm-up batch), not on the first real batch.

Measured on the 2-core CPU, 2026-12-01 (README "Speed"): compiled ("default" mode) bare
forwards ran 1.7-3.5x faster than eager (ResNet50 fp32 22.0 vs 12.2 img/s, bf16 73 vs 21;
Lite0 fp32 76 vs 33) after 20-27 s of compiling; at fp32 the scores stay within the
precision budget of eager (|dIS| max 1e-5 deg), at bf16 they do not (compiled bf16 moves
|dIS| by 0.05 deg against eager bf16). It stays off by default: the compile time is a fixed
cost paid by every model actor. In the CPU pipeline (2026-12-02, after the recompile fix in
features_and_logits and _capture) compiled Lite0 fp32 runs at 0.94 of its compiled bare
forward and ResNet50 fp32 at 1.01, over shards that hold whole batches: a short batch is
padded to the batch size (README "Speed"). `auto` avoids CUDA graphs
because an actor runs several batches at once on several CUDA streams (--actor-threads),
which the graph trees of reduce-overhead do not support.
"""
from __future__ import annotations

import threading

COMPILE_MODES = ("off", "auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
COMPILE_HELP = ("torch.compile the classifier: off (eager, the default), auto (the mode measured best), or one "
                "of torch.compile's modes; compiling takes tens of seconds per model actor (pays back on long "
                "runs only); at fp32 scores stay within the precision budget, at bf16 they do not (sing "
                "bench-precision --compile)")


def torch_mode(mode: str | None) -> str | None:
    """torch.compile's mode for an option value; None: eager."""
    if mode in (None, "off"):
        return None
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    return "default" if mode == "auto" else mode


def _capture(module, head):
    """module(x) -> (f, logits) as one module torch.compile can trace whole: the head's input
    is captured by a hook registered once into one slot, which each call empties (eager calls
    of the same module elsewhere keep at most one tensor alive there). Built here so that importing this
    module (the CLI's option list) does not import torch."""
    import torch

    class Capture(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module
            self._got: dict = {}
            self.handle = head.register_forward_hook(lambda _m, inp, _out: self._got.__setitem__("f", inp[0]))

        def forward(self, x):
            logits = self.module(x)
            # popped, so the slot is empty between calls: Dynamo guards on it (a filled slot
            # recompiled the second call) and no batch's features outlive it
            return self._got.pop("f").flatten(1), logits

    return Capture()


class CompiledClassifier:
    """Stands in for a Classifier in `precision.features_and_logits`: the same (f, logits),
    computed by a compiled module at one static batch size."""

    def __init__(self, clf, mode: str, batch_size: int):
        self.clf, self.batch_size = clf, int(batch_size)
        self.mode = torch_mode(mode)
        import torch

        self._capture = _capture(clf.module, clf.head)
        self._fn = torch.compile(self._capture, mode=self.mode, dynamic=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Remove the capturing hook from the classifier's head (callers that go on using the
        classifier eagerly, e.g. `sing bench`)."""
        self._capture.handle.remove()

    def __getattr__(self, name):  # num_classes, preprocess, head_weight ...: the classifier's
        return getattr(self.clf, name)

    def features_and_logits(self, x):
        import torch

        n, b = x.shape[0], self.batch_size
        if n > b:  # never with Ray Data's batches; kept correct for other callers
            parts = [self.features_and_logits(x[i:i + b]) for i in range(0, n, b)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        # one kind of tensor reaches the graph: Dynamo guards on inference tensors, and a padded
        # copy made under the caller's inference_mode is one while the warm-up's input was not
        # (seen: the first padded batch recompiled, seconds inside the stream)
        with torch.inference_mode(False):
            if n < b:
                x = torch.cat([x, x[-1:].expand(b - n, *x.shape[1:])]).contiguous(memory_format=_layout(x))
            elif x.is_inference():
                x = x.clone()
        f, logits = self._fn(x)
        return f[:n].float(), logits[:n].float()

    def warm_up(self, precision: str, device) -> None:
        """Compile now (one batch of the static shape), under the lock: compilation is not
        thread-safe, and the actor's threads must find the graph ready."""
        import torch

        from pipelines.models.precision import features_and_logits, input_dtype

        x = torch.zeros(self.batch_size, 3, *self.clf.preprocess.crop_hw, device=device, dtype=input_dtype(precision))
        if torch.device(device).type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:
            features_and_logits(self, x, precision)


def _layout(x):
    import torch

    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format

"""Can pretrained weights be had? Decided once per process, so an offline machine fails fast.

Without network, huggingface_hub retries every file it looks for with growing back-off
(~45 s per model, ~30 warning lines) before giving up. Instead:

- `hub_online()` decides once per process whether the model hub can be reached: an explicit
  HF_HUB_OFFLINE=1/0 from the user is obeyed without a probe; otherwise one quick HEAD to
  the hub endpoint (HF_ENDPOINT, default https://huggingface.co), bounded by
  PROBE_TIMEOUT_S even when DNS hangs. Unreachable: the process goes offline for the rest of
  its run (`go_offline`: HF_HUB_OFFLINE=1 in os.environ and in huggingface_hub, which read
  it at import), so cached weights load without a request and missing ones fail at once.
  `ray_session.ensure_ray` passes HF_HUB_OFFLINE=1 on to the Ray workers.
- `check_sources(model_id, arch_ref, sources)`: the weights are in the local cache, or their
  source can be reached; else WeightsUnavailableError (a ValueError: `sing` exits 2 with one
  line naming the model and the ways to provide the weights).
- Sources: `HubWeights` (a hub repo + candidate file names: timm, open_clip, any other hub
  loader) and `UrlWeights` (a plain URL downloaded to a local file: torchvision through
  torch.hub; probed once per host). Which sources a MODEL string has is its source's answer
  (pipelines.models.weights.weight_sources).

Imports nothing heavy at module level (ray_session imports it).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("sing.hub")

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}
# huggingface_hub retries these statuses with back-off: a proxy answering them means "no hub"
_UNREACHABLE_STATUS = (408, 500, 502, 503, 504)


class WeightsUnavailableError(ValueError):
    """A pretrained model whose weights are neither cached nor downloadable (bad input: exit 2)."""


# origin (scheme, host, port) -> (reachable, reason); one probe per origin per process
_decided: dict[tuple, tuple[bool, str]] = {}
_lock = threading.Lock()
_offline_reason: str | None = None


def forget() -> None:
    """Drop this process's decisions (tests; a long-lived process whose network changed)."""
    global _offline_reason
    with _lock:
        _decided.clear()
        _offline_reason = None


def hub_endpoint() -> str:
    """The endpoint huggingface_hub will use (it reads HF_ENDPOINT once, at import)."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:
        return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def explicit_offline() -> bool | None:
    """The user's (or this process's earlier) HF_HUB_OFFLINE setting: True, False, or None when
    unset. TRANSFORMERS_OFFLINE=1 counts too, as in huggingface_hub."""
    v = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower()
    if v in _TRUE or (os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower() in _TRUE:
        return True
    return False if v in _FALSE else None


def go_offline(reason: str) -> None:
    """Offline for the rest of this process and its Ray workers. huggingface_hub reads
    HF_HUB_OFFLINE into constants at import, so set both: the environment (for imports to
    come and for child processes) and the constant (if it is already imported)."""
    global _offline_reason
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if _offline_reason is None:
        _offline_reason = reason
        log.info("%s: working offline for this run (HF_HUB_OFFLINE=1); weights already in the local "
                 "cache still load", reason)


def offline_reason() -> str:
    """Why this process is offline, for messages."""
    if _offline_reason:
        return _offline_reason
    v = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower()
    return "HF_HUB_OFFLINE=1 is set" if v in _TRUE else "TRANSFORMERS_OFFLINE=1 is set"


def hub_online() -> bool:
    """Whether this process may reach the model hub. Probes at most once per process."""
    explicit = explicit_offline()
    if explicit is True:
        if "huggingface_hub.constants" in sys.modules:  # e.g. set by the user after the import
            sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
        return False
    if explicit is False:
        return True
    endpoint = hub_endpoint()
    ok, why = _decide(endpoint, _probe_hub)
    if not ok:
        go_offline(f"the model hub {endpoint} cannot be reached ({why})")
    return ok


def url_reachable(url: str) -> bool:
    """Whether a plain download URL's server answers; probed once per host per process."""
    return _decide(url, _probe_url)[0]


def ray_env_vars() -> dict[str, str]:
    """Environment for Ray workers: offline when this process is (never probes)."""
    return {"HF_HUB_OFFLINE": "1"} if explicit_offline() else {}


# ----------------------------------------------------------------------------- probes


def _origin(url: str) -> tuple:
    u = urlsplit(url)
    return u.scheme, u.hostname, u.port


def _decide(url: str, probe) -> tuple[bool, str]:
    key = _origin(url)
    with _lock:  # threads of one process share one probe
        if key not in _decided:
            _decided[key] = _bounded(probe, url)
        return _decided[key]


def _bounded(probe, url: str) -> tuple[bool, str]:
    """Run the probe in a daemon thread and give up after PROBE_TIMEOUT_S + 1 s: socket
    timeouts do not cover name resolution, which can hang on a machine without DNS."""
    got: list = []
    t = threading.Thread(target=lambda: got.append(_guarded(probe, url)), daemon=True, name="sing-hub-probe")
    t.start()
    t.join(PROBE_TIMEOUT_S + 1.0)
    return got[0] if got else (False, f"no answer within {PROBE_TIMEOUT_S:g} s")


def _guarded(probe, url: str) -> tuple[bool, str]:
    try:
        status = probe(url)
    except Exception as e:  # noqa: BLE001 - any failure to get an answer means unreachable
        return False, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    if status in _UNREACHABLE_STATUS:
        return False, f"HTTP {status}"
    return True, f"HTTP {status}"


def _probe_hub(url: str) -> int:
    """One HEAD through huggingface_hub's own HTTP client, so proxies, certificates and a
    custom client factory are the ones its downloads will use. Never retried."""
    try:
        from huggingface_hub.utils import get_session
    except ImportError:
        return _probe_url(url)
    return get_session().head(url, timeout=PROBE_TIMEOUT_S, follow_redirects=False).status_code


def _probe_url(url: str) -> int:
    """One HEAD with urllib, as torch.hub downloads with urllib. An HTTP error status is an answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class HubWeights:
    """Weights in a hub repo; the loader takes the first of `filenames` it finds."""
    repo_id: str
    filenames: tuple[str, ...]
    revision: str | None = None

    def cached(self) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        for f in self.filenames:
            p = try_to_load_from_cache(self.repo_id, f, revision=self.revision)
            if isinstance(p, str) and os.path.isfile(p):
                return p
        return None

    def reachable(self) -> bool:
        return hub_online()

    def why_not(self) -> str:
        return offline_reason()

    def how(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return (f"put {self.repo_id} ({' or '.join(self.filenames)}) into the hub cache {hub_cache_dir()} "
                f"(HF_HUB_CACHE), e.g. `hf download {self.repo_id} {self.filenames[0]}{rev}` on a machine "
                "that reaches the hub, then copy the cache over")


@dataclass(frozen=True)
class UrlWeights:
    """Weights downloaded from a plain URL into one local file (torch.hub's checkpoints cache)."""
    url: str
    cache_path: str

    def cached(self) -> str | None:
        return self.cache_path if os.path.isfile(self.cache_path) else None

    def reachable(self) -> bool:
        return url_reachable(self.url)

    def why_not(self) -> str:
        u = urlsplit(self.url)
        return f"{u.scheme}://{u.netloc} cannot be reached ({_decide(self.url, _probe_url)[1]})"

    def how(self) -> str:
        return f"download {self.url} where it can be reached and put it at {self.cache_path}"


def check_sources(model_id: str, arch_ref: str, sources) -> str | None:
    """The cached weights file of the first cached source, or None when a source can be
    downloaded from; else WeightsUnavailableError. Hub sources decide online/offline first
    (hub_online), so an offline process loads cached hub files without a single request."""
    sources = list(sources)
    if not sources:
        return None
    if any(isinstance(s, HubWeights) for s in sources):
        hub_online()
    for s in sources:
        path = s.cached()
        if path:
            return path
    for s in sources:
        if s.reachable():
            return None
    why = "; ".join(dict.fromkeys(s.why_not() for s in sources))
    ways = "; ".join(f"({i}) {s.how()}" for i, s in enumerate(sources, 1))
    n = len(sources)
    raise WeightsUnavailableError(
        f"the pretrained weights for {model_id} are not in the local cache and cannot be downloaded: {why}. "
        f"Provide them in one of these ways: {ways}; ({n + 1}) a local checkpoint: "
        f"{arch_ref}@/path/to/weights.safetensors (or .pt/.pth/.bin); ({n + 2}) a checkpoint URL: "
        f"{arch_ref}@s3://bucket/weights.safetensors (any fsspec URL)")


def hf_alternatives(filename: str, default: str, safe_default: str) -> tuple[str, ...]:
    """The files timm/open_clip try for one hub file: a .safetensors twin first."""
    if filename.endswith(".safetensors"):
        return (filename,)
    if filename == default:
        return (safe_default, filename)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def torch_hub_file(url: str) -> str:
    """Where torch.hub caches a downloaded checkpoint."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlsplit(url).path))

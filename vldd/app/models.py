"""The models of the app's runs, loaded once per process, and where they go (decided in the main process)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..configs.distill import DistillConfig

Placement = tuple[str, str]  # (device, dtype) as strings, decided in the main process


def placement(config: DistillConfig) -> Placement:
    """Where a run's models go, decided once in the main process (a ZeroGPU worker reuses what it decided)."""
    from ..core.devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return str(device), str(resolve_dtype(config.dtype, device)).removeprefix("torch.")


class ModelCache:
    """Captioners and Stable Diffusion pipelines, each loaded once per process (key: model, revision, placement).

    On ZeroGPU, `preload` loads them at start-up, in the main process, as ZeroGPU requires; a forked GPU worker
    finds them here (`ModelCache.shared`). On a local GPU, a captioner is evicted before a pipeline loads unless
    both fit (`keep_both_bytes` of free GPU memory).
    """

    _shared: dict[str | None, ModelCache] = {}

    def __init__(self, cache_dir: str | Path | None = None, keep_both_bytes: int | None = None):
        self.cache_dir = cache_dir  # where tiny:// models are built
        self.keep_both_bytes = keep_both_bytes  # None: never evict (ZeroGPU, CPU)
        self._models: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, cache_dir: str | Path | None = None) -> ModelCache:
        """The process's cache for `cache_dir`: models live as long as the process (ZeroGPU requires it)."""
        key = str(cache_dir) if cache_dir is not None else None
        return cls._shared.setdefault(key, cls(cache_dir))

    def _get(self, key: tuple, load: Callable[[], Any]):
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]

    def captioner(self, config: DistillConfig, where: Placement | None = None):
        from ..stages.caption import load_captioner

        device, dtype = where or placement(config)
        c = config.caption
        kernels = config.hub_kernels
        return self._get(("captioner", c.model, c.revision, device, dtype, kernels), lambda: load_captioner(
            c.model, revision=c.revision, device=device, dtype=_dtype(dtype), cache_dir=self.cache_dir,
            hub_kernels=kernels))

    def pipeline(self, config: DistillConfig, where: Placement | None = None):
        from ..stages.generate import load_pipeline

        device, dtype = where or placement(config)
        g = config.generation
        key = ("pipeline", g.model, g.revision, g.scheduler, g.lora, device, dtype, config.hub_kernels)
        if key not in self._models and device.startswith("cuda"):
            self.evict_captioners_unless_free(self.keep_both_bytes)
        return self._get(key, lambda: load_pipeline(g.model, revision=g.revision, device=device, dtype=_dtype(dtype),
                                                    scheduler=g.scheduler, lora=g.lora, cache_dir=self.cache_dir,
                                                    hub_kernels=config.hub_kernels))

    def evict_captioners_unless_free(self, needed: int | None) -> list[str]:
        """Drops every loaded captioner unless `needed` bytes of GPU memory are free (the CLI frees the captioner
        before Stable Diffusion too); returns the evicted model ids."""
        import torch

        if needed is None or not torch.cuda.is_available() or torch.cuda.mem_get_info()[0] >= needed:
            return []
        with self._lock:
            evicted = [key for key in self._models if key[0] == "captioner"]
            for key in evicted:
                del self._models[key]
        torch.cuda.empty_cache()
        return [key[1] for key in evicted]

    def deferred(self, kind: str, config: DistillConfig, where: Placement | None = None):
        """A stand-in that loads the model on first use, so a run whose stages are all on disk loads nothing."""
        return _Deferred(lambda: getattr(self, kind)(config, where))

    def preload(self, config: DistillConfig) -> None:
        if not config.caption.from_hub:
            self.captioner(config)
        self.pipeline(config)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


class _Deferred:
    def __init__(self, load: Callable[[], Any]):
        self._load = load

    def __getattr__(self, name: str):
        return getattr(self._load(), name)

    def __call__(self, *args, **kwargs):
        return self._load()(*args, **kwargs)


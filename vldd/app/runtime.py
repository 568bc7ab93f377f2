"""Where and how this process serves the app: its settings from the settings files, the launch flags and the
environment (on a Space or not, ZeroGPU, a local GPU), and the models ZeroGPU loads at start-up."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .controls import run_config
from .models import ModelCache
from .publish import oauth_mode
from .sessions import Sessions, public_text
from .settings import SpaceConfig, load_space_config


def _flag(name: str) -> bool:
    return os.getenv(name, "").lower() in ("1", "t", "true")


@dataclass
class AppSettings:
    space: SpaceConfig
    root: Path  # per-session run directories live here
    cache_dir: str | None = None  # where tiny:// models are built
    on_space: bool = False
    oauth: str = "off"  # "space", "local" or "off" (see oauth_mode)
    has_gpu: bool = False
    zero_gpu: bool = False  # ZeroGPU: GPU calls are scheduled, counted against the visitor's quota
    local_paths: bool = False  # a visitor may name folders of this machine as sources (see `local_paths_allowed`)
    stop_wait_seconds: float = 60.0  # how long /stop waits for a run to reach the end of its class before answering
    sessions: Sessions = field(init=False)

    def __post_init__(self):
        self.sessions = Sessions(self.root, self.space.sessions["ttl_hours"])
        if not self.zero_gpu:  # a local GPU holds the captioner and SD together only when both fit
            self.models.keep_both_bytes = int(self.space.local_gpu["pipeline_gb"] * 2**30)

    @property
    def models(self) -> ModelCache:
        return ModelCache.shared(self.cache_dir)

    def public(self, text: str) -> str:
        """`text` without this server's paths (session folders, Gradio's upload cache), for a visitor."""
        return public_text(text, [self.root, GRADIO_CACHE])


GRADIO_CACHE = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
LOCALHOST = ("127.0.0.1", "localhost", "::1")


def local_paths_allowed(on_space: bool, host: str | None, share: bool, allow: bool = False) -> bool:
    """Local folders as sources only where nobody else can reach the app: never on a Space; elsewhere when it
    listens on localhost (the default) without a public share link, or when the owner passes --allow-local-paths."""
    if on_space:
        return False
    return allow or ((host or "127.0.0.1") in LOCALHOST and not share)


def default_settings(config: str | Path | None = None, *, host: str | None = None, share: bool = False,
                     allow_local_paths: bool = False, cache_dir: str | None = None) -> AppSettings:
    """Settings from the settings files (`load_space_config(config)`), the launch flags and the environment (SYSTEM,
    SPACES_ZERO_GPU, VLDD_APP_ROOT, and VLDD_CACHE when `cache_dir` is None)."""
    import torch

    on_space, zero_gpu = os.getenv("SYSTEM") == "spaces", _flag("SPACES_ZERO_GPU")
    return AppSettings(space=load_space_config(config),
                       root=Path(os.environ.get("VLDD_APP_ROOT", Path(tempfile.gettempdir()) / "vldd-app")),
                       cache_dir=cache_dir or os.environ.get("VLDD_CACHE"), on_space=on_space,
                       oauth=oauth_mode(on_space), has_gpu=zero_gpu or torch.cuda.is_available(), zero_gpu=zero_gpu,
                       local_paths=local_paths_allowed(on_space, host, share, allow_local_paths))


def preload(settings: AppSettings) -> None:
    """ZeroGPU: the models of every preset offered go to the GPU at start-up, in the main process, on its main
    thread (transformers' threaded weight loading would escape the thread-local CUDA emulation of `spaces`)."""
    os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")
    space = settings.space
    for name in space.offered(True):
        settings.models.preload(run_config(space, settings.root / "preload", dataset="sample", classes=["0"],
                                           preset=name, ipc=1))

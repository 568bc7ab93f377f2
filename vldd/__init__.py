"""vldd: vision-language dataset distillation (VLCP, Zou et al., ICCV 2025) on the Hugging Face stack.

Example:
    >>> from vldd import distill, load_config
    >>> result = distill(load_config(overrides={"preset": "tiny", "output": "runs/tiny", "ipc": 2}))
    >>> result.dataset  # a datasets.Dataset: image, label, prompt, ...

The public names below are imported on first use, so `import vldd` (and `vldd --help`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DistillConfig": "configs.distill", "DataConfig": "configs.distill", "CaptionConfig": "configs.distill", "PrototypeConfig": "configs.distill",
    "TextPrototypeConfig": "configs.distill", "GenerationConfig": "configs.distill", "load_config": "configs.distill",
    "distill": "jobs.distill", "DistillResult": "jobs.distill", "Processes": "core.devices",
    "plan_run": "jobs.plan", "StageEstimate": "jobs.plan",
    "evaluate": "jobs.evaluate", "EvalConfig": "configs.evaluate", "EvalResult": "jobs.evaluate", "robust_scores": "jobs.evaluate",
    "ablate": "jobs.ablate",
    "train_teacher": "jobs.teacher", "TeacherConfig": "configs.teacher", "TeacherResult": "jobs.teacher",
    "finetune": "jobs.finetune", "finetune_config": "configs.finetune", "FinetuneConfig": "configs.finetune",
    "FinetuneResult": "jobs.finetune",
    "push_distilled": "hub.push", "push_captions": "hub.push", "push_model": "hub.push", "load_published_captions": "hub.captions", "PushResult": "hub.push",
    "HubError": "hub.names", "HubAuthError": "hub.names",
    "load_captioner": "stages.caption", "caption_images": "stages.caption",
    "load_pipeline": "stages.generate",
    "build_tiny_models": "models.tiny",
}

__all__ = [  # the keys of _EXPORTS, spelled out for linters and IDEs (a test checks they agree)
    "__version__", "DistillConfig", "DataConfig", "CaptionConfig", "PrototypeConfig", "TextPrototypeConfig",
    "GenerationConfig", "load_config", "distill", "DistillResult", "Processes", "plan_run", "StageEstimate",
    "evaluate", "EvalConfig", "EvalResult", "train_teacher", "TeacherConfig", "TeacherResult", "finetune",
    "finetune_config", "FinetuneConfig", "FinetuneResult",
    "push_distilled", "push_captions", "push_model", "load_published_captions",
    "PushResult", "HubError", "HubAuthError", "load_captioner", "caption_images", "load_pipeline", "build_tiny_models",
    "robust_scores", "ablate",
]

if TYPE_CHECKING:
    from .configs.distill import (
        CaptionConfig,
        DataConfig,
        DistillConfig,
        GenerationConfig,
        PrototypeConfig,
        TextPrototypeConfig,
        load_config,
    )
    from .configs.evaluate import EvalConfig
    from .configs.finetune import FinetuneConfig, finetune_config
    from .configs.teacher import TeacherConfig
    from .core.devices import Processes
    from .hub.captions import load_published_captions
    from .hub.names import HubAuthError, HubError
    from .hub.push import PushResult, push_captions, push_distilled, push_model
    from .jobs.ablate import ablate
    from .jobs.distill import DistillResult, distill
    from .jobs.evaluate import EvalResult, evaluate, robust_scores
    from .jobs.finetune import FinetuneResult, finetune
    from .jobs.plan import StageEstimate, plan_run
    from .jobs.teacher import TeacherResult, train_teacher
    from .models.tiny import build_tiny_models
    from .stages.caption import caption_images, load_captioner
    from .stages.generate import load_pipeline


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vldd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

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
    "DistillConfig": "config", "DataConfig": "config", "CaptionConfig": "config", "PrototypeConfig": "config",
    "TextPrototypeConfig": "config", "GenerationConfig": "config", "load_config": "config",
    "distill": "distillation", "DistillResult": "distillation", "Processes": "devices",
    "plan_run": "plan", "StageEstimate": "plan",
    "evaluate": "evaluation", "EvalConfig": "evaluation", "EvalResult": "evaluation", "robust_scores": "evaluation",
    "ablate": "ablation",
    "train_teacher": "teacher", "TeacherConfig": "teacher", "TeacherResult": "teacher",
    "finetune": "finetuning", "finetune_config": "finetuning", "FinetuneConfig": "finetuning",
    "FinetuneResult": "finetuning",
    "push_distilled": "hub", "push_captions": "hub", "push_model": "hub", "load_published_captions": "hub", "PushResult": "hub",
    "HubError": "hub", "HubAuthError": "hub",
    "load_captioner": "captioning", "caption_images": "captioning",
    "load_pipeline": "generation",
    "build_tiny_models": "tiny",
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
    from .ablation import ablate
    from .captioning import caption_images, load_captioner
    from .config import (
        CaptionConfig,
        DataConfig,
        DistillConfig,
        GenerationConfig,
        PrototypeConfig,
        TextPrototypeConfig,
        load_config,
    )
    from .devices import Processes
    from .distillation import DistillResult, distill
    from .evaluation import EvalConfig, EvalResult, evaluate, robust_scores
    from .finetuning import FinetuneConfig, FinetuneResult, finetune, finetune_config
    from .generation import load_pipeline
    from .hub import (
        HubAuthError,
        HubError,
        PushResult,
        load_published_captions,
        push_captions,
        push_distilled,
        push_model,
    )
    from .plan import StageEstimate, plan_run
    from .teacher import TeacherConfig, TeacherResult, train_teacher
    from .tiny import build_tiny_models


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vldd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

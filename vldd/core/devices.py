"""Devices, dtypes and process groups: one home for every job (distill, evaluate, fine-tune, plan).

Example:
    >>> device = resolve_device("auto")            # cuda when available, else cpu
    >>> dtype = resolve_dtype("auto", device)      # fp16 on cuda, fp32 on cpu
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

DTYPE_NAMES = ("fp32", "fp16", "bf16")


@dataclass
class Processes:
    """This process's place among the processes sharing a job (one per GPU under `accelerate launch`).

    Work is dealt out round-robin (`items[index::count]`); every seed depends on the item, never on the process, so
    the result is the same whatever the process count.
    """

    index: int = 0  # this process's rank
    count: int = 1  # number of processes
    wait: Callable[[], None] = lambda: None  # barrier: returns once every process has reached it

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, items: list) -> list:
        """This process's share of `items`."""
        return items[self.index::self.count]

    @classmethod
    def from_accelerate(cls, state) -> Processes:
        """From an `accelerate.PartialState`."""
        return cls(state.process_index, state.num_processes, state.wait_for_everyone)


def resolve_device(device: str):
    """A `torch.device` for "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N"."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device):
    """A `torch.dtype` for "auto" (fp16 on cuda, fp32 elsewhere), "fp32", "fp16" or "bf16"."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be 'auto' or one of {list(table)}, got {dtype!r}")
    return table[dtype]


def hub_kernels_allowed(requested: bool) -> bool:
    """Whether a model loader lets transformers swap layers for compute kernels downloaded from the Hub.

    transformers (5.25 and later) does it by default on CUDA (`kernels-community/activation`, `.../liger_kernels`,
    ...): code nobody vetted, fetched at load, and a failed load offline. vldd's loaders pass
    `use_kernels=hub_kernels_allowed(config.hub_kernels)` to every `from_pretrained`, so this happens only when the
    user asked for it (`hub_kernels`, off by default), and never while huggingface_hub is offline (`HF_HUB_OFFLINE`).
    """
    if not requested:
        return False
    from huggingface_hub import is_offline_mode

    return not is_offline_mode()


def hub_kernels_for_process(requested: bool) -> None:
    """Unless Hub kernels were asked for and the Hub is online, sets USE_HUB_KERNELS=0 for this process.

    vldd's loaders choose per call (`use_kernels=`), but a few transformers layers (FP8 and NVFP4 quantized weights,
    some mixture-of-experts) fetch their kernel from the Hub on first use, reading only this process-wide variable;
    so the entry points (the CLI and the app) call this, and the library never touches the environment.
    """
    if not hub_kernels_allowed(requested):
        os.environ["USE_HUB_KERNELS"] = "0"

"""Seeding: every random draw in vldd comes from a generator seeded by the run seed, a named stream and keys.

One scheme everywhere: `derive_seed(seed, STREAM, *keys)` mixes the integers through numpy's `SeedSequence`, so
streams are independent and a result depends only on its own keys (class, cluster, source row, epoch, ...) — never on
batch size, process count or what ran before. That is what makes a single image, caption or epoch reproducible alone.

Example:
    >>> g = generator(0, IMAGE, 3, 7)  # run seed 0, the generated-image stream, class 3, cluster 7
"""

from __future__ import annotations

import numpy as np

# Stream ids: the second key of every derived seed. Never renumber one (results would change); add new ones.
CAPTION = 1  # sampling of a caption batch: keys (class, first image of the batch)
VAE_SAMPLE = 2  # the VAE latent sample of a source image: keys (source row,)
KMEANS = 3  # k-means++ draws: keys (class,)
IMAGE = 4  # the noise of a generated image: keys (class, cluster)
FINETUNE_ORDER = 5  # fine-tuning data order and flips: keys (epoch,)
FINETUNE_NOISE = 6  # fine-tuning noise and timesteps: keys (epoch, micro-batch, process)
FINETUNE_INIT = 7  # LoRA initialisation: no keys
EVAL_SUBSET = 8  # random real subsets in evaluation: keys (repeat,)


def derive_seed(*keys: int) -> int:
    """One 63-bit seed from non-negative integers; different tuples give independent streams."""
    if any(int(k) < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def generator(*keys: int, device=None):
    """A `torch.Generator` on `device` (default CPU) seeded with `derive_seed(*keys)`."""
    import torch

    return torch.Generator(device if device is not None else "cpu").manual_seed(derive_seed(*keys))


def generators(seed: int, stream: int, keys: list[int | tuple[int, ...]], device=None) -> list:
    """One generator per item, from (seed, stream, *key): results depend on neither batching nor process sharding."""
    return [generator(seed, stream, *(key if isinstance(key, tuple) else (key,)), device=device) for key in keys]

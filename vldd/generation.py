"""Stage 4: generation (DESIGN.md §3 step 5) with the stock `StableDiffusionImg2ImgPipeline`.

Each prototype latent (already scaled) is noised to `strength` of the schedule and denoised under its text prototype.
Prompts are never truncated: their tokens are split into windows of 75, each wrapped in BOS/EOS and padded to 77,
encoded by CLIP, and the embeddings concatenated along the sequence; a prompt that fits one window is encoded exactly
as the pipeline itself would. Every image has its own seeded generator, so it is reproducible alone.

Example:
    >>> pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cuda", dtype=torch.float16)
    >>> images = generate_images(pipe, prototypes, prompts, seeds=[0, 1])
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

logger = logging.getLogger(__name__)


def load_pipeline(model_id: str, *, revision: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, scheduler: str | None = None, lora: str | None = None,
                  cache_dir=None):
    """Loads a Stable Diffusion checkpoint (Hub id or directory) as a stock img2img pipeline.

    Args:
        model_id: SD checkpoint id or directory; `tiny://stable-diffusion` builds the tiny test model.
        revision: Hub revision.
        device, dtype: where and how the components run.
        scheduler: a diffusers scheduler class name compatible with the checkpoint; None keeps the checkpoint's.
        lora: LoRA adapter (id or directory) loaded into the UNet.
        cache_dir: where tiny models are built.
    """
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline

    from .tiny import resolve_model

    path = resolve_model(model_id, cache_dir)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            path, revision=revision, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load Stable Diffusion model {model_id!r}: {err}") from err
    if scheduler is not None:
        names = sorted({cls.__name__ for cls in pipe.scheduler.compatibles} | {type(pipe.scheduler).__name__})
        if scheduler not in names:
            raise ValueError(f"scheduler {scheduler!r} is not compatible with {model_id!r}; choose one of {names}")
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(resolve_model(lora, cache_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def window_token_ids(tokenizer, text: str, n_windows: int | None = None) -> torch.Tensor:
    """Token ids of `text` in windows of `model_max_length` (BOS + up to 75 tokens + EOS + padding).

    Args:
        tokenizer: a CLIP tokenizer.
        text: the prompt; no token is dropped.
        n_windows: pad with empty windows up to this many (to match another prompt's length).

    Returns:
        LongTensor of shape (n_windows, model_max_length).
    """
    size = tokenizer.model_max_length
    body = size - 2
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    windows = [ids[i:i + body] for i in range(0, len(ids), body)] or [[]]
    if n_windows is not None:
        if n_windows < len(windows):
            raise ValueError(f"prompt needs {len(windows)} windows, more than the {n_windows} asked for")
        windows += [[]] * (n_windows - len(windows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [[tokenizer.bos_token_id, *w, tokenizer.eos_token_id] + [pad] * (body - len(w)) for w in windows]
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompt: str = ""
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings of long prompts, window by window, and of the negative prompt padded to the same length.

    Returns:
        (prompt_embeds, negative_prompt_embeds), each (len(prompts), n_windows x 77, hidden size), where n_windows is
        the most any prompt of the batch needs.
    """
    counts = [window_token_ids(tokenizer, p).shape[0] for p in prompts]
    n = max(counts + [window_token_ids(tokenizer, negative_prompt).shape[0]])
    ids = torch.stack([window_token_ids(tokenizer, p, n) for p in prompts])  # (b, n, 77)
    neg = window_token_ids(tokenizer, negative_prompt, n)[None].expand_as(ids)
    both = torch.cat([ids, neg]).flatten(0, 1).to(text_encoder.device)
    hidden = text_encoder(both)[0].to(text_encoder.dtype)  # (2b*n, 77, d)
    hidden = hidden.reshape(2 * len(prompts), n * hidden.shape[1], hidden.shape[2])
    return hidden[: len(prompts)], hidden[len(prompts):]


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """How many denoising steps img2img runs: int(num_inference_steps x strength) (0.7 of 50 = 35)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


@torch.no_grad()
def generate_images(pipe, latents: torch.Tensor, prompts: list[str], *, seeds: list[int], seed: int = 0,
                    negative_prompt: str = "cartoon, anime, painting", strength: float = 0.7,
                    num_inference_steps: int = 50, guidance_scale: float = 10.0, eta: float = 0.0,
                    batch_size: int = 4, output_size: int | None = None, progress: bool = False) -> list[Image.Image]:
    """Noises each prototype latent and denoises it under its prompt; one image per prototype.

    Args:
        pipe: a `StableDiffusionImg2ImgPipeline` (device and dtype read from it).
        latents: (n, 4, h, w) prototypes, already multiplied by the VAE scaling factor.
        prompts: n text prototypes, paired with the latents in order.
        seeds: n keys (e.g. cluster ids); image i's generator is seeded from (seed, seeds[i]).
        seed: the run seed.
        negative_prompt, strength, num_inference_steps, guidance_scale, eta: the img2img settings.
        batch_size: prototypes per pipeline call.
        output_size: images are resized (bicubic) to output_size x output_size; None keeps the model's size.
        progress: show a tqdm bar over batches.
    """
    from tqdm.auto import tqdm

    from .prototypes import image_generators

    if not (len(latents) == len(prompts) == len(seeds)):
        raise ValueError(f"got {len(latents)} latents, {len(prompts)} prompts and {len(seeds)} seeds; expected equal")
    device, dtype = pipe.device, pipe.unet.dtype
    # Batch only prompts of the same window count: padding a short prompt with empty windows would change its image.
    windows = [window_token_ids(pipe.tokenizer, p).shape[0] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: windows[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [[i for i in b if windows[i] == w] for b in batches for w in sorted({windows[i] for i in b})]
    images: list[Image.Image | None] = [None] * len(prompts)
    for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
        embeds, negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompts[i] for i in batch],
                                          negative_prompt)
        out = pipe(image=latents[batch].to(device, dtype), prompt_embeds=embeds, negative_prompt_embeds=negative,
                   strength=strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   eta=eta, generator=image_generators(seed, [seeds[i] for i in batch], device), output_type="pil")
        for i, image in zip(batch, out.images):
            images[i] = image
    if output_size is not None:
        images = [im.resize((output_size, output_size), Image.BICUBIC) for im in images]
    return images

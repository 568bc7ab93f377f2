"""Stage 4: generation (docs/method.md, "5. Generation") with the stock `StableDiffusionImg2ImgPipeline`.

Each prototype latent (already scaled) is noised to `strength` of the schedule and denoised under its text prototype.
Prompts are never truncated: as the official code does, their token ids are sliced every 77, each chunk is encoded by
CLIP and the embeddings are concatenated along the sequence (`prompt_token_ids` gives the layout, and the option of
BOS/EOS windows). Every image has its own seeded generator, so it is reproducible alone.

Example:
    >>> pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cuda", dtype=torch.float16)
    >>> images = generate_images(pipe, prototypes, prompts, seeds=[0, 1])
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

# the settings' defaults and choices: declared once, in the config
from ..configs.distill import PROMPT_CHUNKING, GenerationConfig
from ..core import seeding

logger = logging.getLogger(__name__)


def load_pipeline(model_id: str, *, revision: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, scheduler: str | None = None, lora: str | None = None,
                  cache_dir=None, compile_unet: bool = False, hub_kernels: bool = False):
    """Loads a Stable Diffusion checkpoint (Hub id or directory) as a stock img2img pipeline.

    Args:
        model_id: SD checkpoint id or directory; `tiny://stable-diffusion` builds the tiny test model.
        revision: Hub revision.
        device, dtype: where and how the components run.
        scheduler: a diffusers scheduler class name compatible with the checkpoint; None keeps the checkpoint's.
        lora: LoRA adapter (id or directory) loaded into the UNet.
        cache_dir: where tiny models are built.
        compile_unet: wrap the UNet in `torch.compile` (opt-in: the first call compiles, for minutes at SD's size;
            fused kernels may change an image's last bits, so it is part of the generate stage's fingerprint).
        hub_kernels: let transformers swap layers of the text encoder for kernels downloaded from the Hub (on CUDA;
            never offline). diffusers loads a pipeline's transformers components with transformers' defaults, which
            turn them on, so the text encoder is loaded here, with the choice made explicit, and handed over.
    """
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline
    from transformers import CLIPTextModel

    from ..core.devices import hub_kernels_allowed
    from ..models.registry import resolve_model

    path = resolve_model(model_id, cache_dir)
    try:
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, dtype=dtype,
                                                     use_kernels=hub_kernels_allowed(hub_kernels))
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            path, revision=revision, dtype=dtype, text_encoder=text_encoder, safety_checker=None,
            requires_safety_checker=False)
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
    pipe = pipe.to(device)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


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


def prompt_token_ids(tokenizer, prompts: list[str], negative_prompt: str = "",
                     chunking: str = GenerationConfig.prompt_chunking) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids the text encoder sees, `model_max_length` (77) at a time, for prompts and the negative prompt.

    "official" is the paper's `get_pipeline_embeds` (docs/faithfulness.md, "Long prompts"): each text is tokenized with
    BOS and EOS, neither truncated nor padded, and the shorter padded with the pad id to the longer; the ids are then
    sliced every 77, so the first chunk is BOS + 76 ids, later chunks carry no BOS and the last is not padded to 77.
    The official code picks the text that sets the length by whitespace word count and pads the other to it; wherever
    that code runs, this is the longer one (105 tokens -> 107 ids; "A tench." -> 7, set by the 7-id negative
    prompt). Where it fails (more words but fewer ids than the negative prompt: "a red fish", 5 ids against 7, gives
    tensors of two shapes), vldd pads both to the longer length. Prompts of one call are all padded to the longest.

    "windows" splits the ids into windows of 75, each wrapped in BOS/EOS and padded to 77 (a prompt of up to 75
    tokens is then encoded exactly as the stock pipeline encodes it); the negative prompt gets as many windows.

    Args:
        tokenizer: the pipeline's CLIP tokenizer.
        prompts: the prompts; no token is dropped.
        negative_prompt: the negative prompt.
        chunking: "official" or "windows".

    Returns:
        (ids of shape (len(prompts), L), negative ids of shape (1, L)); L is the embedding length.
    """
    texts = [*prompts, negative_prompt]
    if chunking == "windows":
        n = max(window_token_ids(tokenizer, t).shape[0] for t in texts)
        ids = torch.stack([window_token_ids(tokenizer, t, n).flatten() for t in texts])
    elif chunking == "official":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows = [tokenizer(t, truncation=False, verbose=False).input_ids for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)
    else:
        raise ValueError(f"`chunking` must be one of {PROMPT_CHUNKING}, got {chunking!r}")
    return ids[:-1], ids[-1:]


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], negative_prompt: str = "",
                   chunking: str = GenerationConfig.prompt_chunking) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings of prompts of any length and of the negative prompt, chunk by chunk (`prompt_token_ids`).

    Each chunk of `model_max_length` ids goes through the text encoder on its own; the last hidden states are
    concatenated along the sequence, as the official code does.

    Args:
        pipe: a Stable Diffusion pipeline (its `tokenizer` and `text_encoder` are used).
        prompts: the prompts.
        negative_prompt: the negative prompt.
        chunking: "official" (the paper's layout) or "windows" (BOS/EOS windows of 75 tokens).

    Returns:
        (prompt_embeds, negative_prompt_embeds), each (len(prompts), L, hidden size) with the same L.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids, negative = prompt_token_ids(tokenizer, prompts, negative_prompt, chunking)
    both = torch.cat([ids, negative.expand(len(prompts), -1)]).to(encoder.device)
    size = tokenizer.model_max_length
    hidden = torch.cat([encoder(both[:, i:i + size])[0] for i in range(0, both.shape[1], size)], dim=1)
    hidden = hidden.to(encoder.dtype)
    return hidden[: len(prompts)], hidden[len(prompts):]


def prompt_lengths(tokenizer, prompts: list[str], negative_prompt: str,
                   prompt_chunking: str = GenerationConfig.prompt_chunking) -> list[int]:
    """Each prompt's embedding length (positions), as `encode_prompts` lays it out beside `negative_prompt`."""
    return [prompt_token_ids(tokenizer, [p], negative_prompt, prompt_chunking)[0].shape[1] for p in prompts]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The pipeline calls `generate_images` makes: indices sorted by length, cut every `batch_size`, and each cut split
    by length, because only prompts of one embedding length are batched (padding a prompt to a longer one's length
    would change its image).

    Example:
        >>> length_batches([17, 15, 17, 16], 2)
        [[1], [3], [0, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cuts = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [[i for i in cut if lengths[i] == n] for cut in cuts for n in sorted({lengths[i] for i in cut})]


@torch.no_grad()
def generate_images(pipe, latents: torch.Tensor, prompts: list[str], *, seeds: list[int | tuple[int, ...]], seed: int = 0,
                    negative_prompt: str = GenerationConfig.negative_prompt,
                    strength: float = GenerationConfig.strength,
                    num_inference_steps: int = GenerationConfig.num_inference_steps,
                    guidance_scale: float = GenerationConfig.guidance_scale, eta: float = GenerationConfig.eta,
                    batch_size: int = GenerationConfig.batch_size, output_size: int | None = None,
                    prompt_chunking: str = GenerationConfig.prompt_chunking,
                    progress: bool = False) -> list[Image.Image]:
    """Noises each prototype latent and denoises it under its prompt; one image per prototype.

    Args:
        pipe: a `StableDiffusionImg2ImgPipeline` (device and dtype read from it).
        latents: (n, 4, h, w) prototypes, already multiplied by the VAE scaling factor.
        prompts: n text prototypes, paired with the latents in order.
        seeds: n keys, each an int or a tuple of ints (the pipeline uses (class, cluster)); image i's generator is
            seeded from (seed, `seeding.IMAGE`, *seeds[i]).
        seed: the run seed.
        negative_prompt, strength, num_inference_steps, guidance_scale, eta: the img2img settings; the defaults
            are `GenerationConfig`'s (a run passes its config's values).
        batch_size: prototypes per pipeline call.
        output_size: images are resized (bicubic) to output_size x output_size; None keeps the model's size.
        prompt_chunking: how long prompts are encoded: "official" or "windows" (see `prompt_token_ids`).
        progress: show a tqdm bar over batches.
    """
    from tqdm.auto import tqdm


    if not (len(latents) == len(prompts) == len(seeds)):
        raise ValueError(f"got {len(latents)} latents, {len(prompts)} prompts and {len(seeds)} seeds; expected equal")
    device, dtype = pipe.device, pipe.unet.dtype
    lengths = prompt_lengths(pipe.tokenizer, prompts, negative_prompt, prompt_chunking)
    batches = length_batches(lengths, batch_size)
    images: list[Image.Image | None] = [None] * len(prompts)
    for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
        embeds, negative = encode_prompts(pipe, [prompts[i] for i in batch], negative_prompt, prompt_chunking)
        out = pipe(image=latents[batch].to(device, dtype), prompt_embeds=embeds, negative_prompt_embeds=negative,
                   strength=strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   eta=eta, generator=seeding.generators(seed, seeding.IMAGE, [seeds[i] for i in batch], device), output_type="pil")
        for i, image in zip(batch, out.images):
            images[i] = image
    if output_size is not None:
        images = [im.resize((output_size, output_size), Image.BICUBIC) for im in images]
    return images

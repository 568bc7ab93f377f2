"""Stage 1: a vision-language model describes every training image (docs/method.md, "1. Captions").

The paper captions with LLaVA-v1.5-7B (`llava-hf/llava-1.5-7b-hf`), sampling at temperature 0.2 with up to 1024 new
tokens, from a prompt that names the class. For LLaVA-1.5 models vldd reproduces LLaVA's own `model_vqa.py` set-up
(docs/faithfulness.md, "Captioning"): the `llava_v1` conversation with its system prompt, and images padded to a centred
square with the processor's mean colour (`expand2square`) before the processor; captions then get the official
post-processing (`"` and `'s` removed). Any other image-text-to-text model uses its processor's chat template.

Example:
    >>> captioner = load_captioner("llava-hf/llava-1.5-7b-hf", device="cuda", dtype=torch.float16)
    >>> captions = caption_images(captioner, images, "tench, Tinca tinca", prompt_template=PAPER_PROMPT)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..configs.distill import CaptionConfig  # the defaults of the settings below: declared once, there
from ..core import seeding
from ..core.provenance import resolve_revision
from ..models.registry import resolve_model

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
CONVERSATIONS = ("llava_v1", "chat_template")
# LLaVA's conv_llava_v1 system prompt (llava/conversation.py)
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the human's questions.")


@dataclass
class Captioner:
    """A loaded image-text-to-text model and its processor."""

    model: PreTrainedModel
    processor: ProcessorMixin
    model_id: str  # what the user asked for, e.g. "tiny://llava" or a Hub id
    revision: str | None  # the Hub commit the weights were loaded from, when known


def load_captioner(
    model_id: str,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    hub_kernels: bool = False,
) -> Captioner:
    """Loads an image-text-to-text model and its processor, ready for `caption_images`.

    Args:
        model_id: a Hub id (e.g. `llava-hf/llava-1.5-7b-hf`), a local directory, or `tiny://llava`.
        revision: Hub branch, tag or commit; resolved to a commit once so model and processor match.
        device: where to put the model.
        dtype: weights' dtype (e.g. `torch.float16` on GPU).
        cache_dir: where `tiny://` models are built and kept; defaults to `~/.cache/vldd`.
        hub_kernels: let transformers swap layers for kernels downloaded from the Hub (on CUDA; never offline);
            off, the model runs PyTorch's own layers and nothing is fetched (`vldd.core.devices.hub_kernels_allowed`).

    Raises:
        ValueError: when `model_id` names no loadable image-text-to-text model. Remote code is never trusted.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..core.devices import hub_kernels_allowed

    source = resolve_model(model_id, cache_dir=cache_dir)
    pinned = resolve_revision(source, revision, remote=True) or revision  # model and processor load one commit
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, revision=pinned, dtype=dtype, device_map=str(torch.device(device)), trust_remote_code=False,
            use_kernels=hub_kernels_allowed(hub_kernels))
        processor = AutoProcessor.from_pretrained(source, revision=pinned, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"could not load captioner {model_id!r}: it must be a local directory or a Hub id (cached, when offline) of "
            f"an image-text-to-text model that transformers supports natively ({type(err).__name__}: {err})"
        ) from err
    model.eval()
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:  # batched prompts need one; its id only fills (masked) padding slots
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("captioner %s has no pad token; padding with its eos token %r", model_id, tokenizer.eos_token)
    commit = getattr(pinned, "resolved", None) or (pinned if pinned and _COMMIT.match(pinned) else None)
    logger.info("loaded captioner %s (revision %s) on %s as %s", model_id, commit, model.device, model.dtype)
    return Captioner(model, processor, model_id, commit)


def build_prompt(template: str, class_name: str) -> str:
    """Fills the class name into the prompt template: `template.format(class_name=class_name)`.

    Args:
        template: e.g. `vldd.configs.distill.PAPER_PROMPT`, with a `{class_name}` field.
        class_name: the dataset's label name, e.g. "tench, Tinca tinca".
    """
    try:
        return template.format(class_name=class_name)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"prompt template must have only a {{class_name}} field (write other braces as {{{{ }}}}), got {template!r}"
        ) from err


def is_llava_v15(model: PreTrainedModel) -> bool:
    """Whether `model` is a LLaVA-1.5 (LLaVA with a Llama language model, as `llava-hf/llava-1.5-7b-hf`)."""
    config = model.config
    return config.model_type == "llava" and getattr(config.text_config, "model_type", None) == "llama"


def conversation_text(captioner: Captioner, prompt: str, conversation: str = CaptionConfig.conversation) -> str:
    """The text given to the processor with each image.

    Args:
        captioner: from `load_captioner`.
        prompt: the instruction, e.g. `build_prompt(PAPER_PROMPT, "tench, Tinca tinca")`.
        conversation: "llava_v1" gives LLaVA-1.5 models the paper's conversation, as LLaVA's `model_vqa.py` builds
            it: `"<system prompt> USER: <image>\n{prompt} ASSISTANT:"` (llava-hf's chat template has no system
            prompt); other models, and "chat_template", use the processor's chat template (one user turn: the
            image, then the text).
    """
    if conversation not in CONVERSATIONS:
        raise ValueError(f"`conversation` must be one of {CONVERSATIONS}, got {conversation!r}")
    processor = captioner.processor
    if conversation == "llava_v1" and is_llava_v15(captioner.model):
        return f"{LLAVA_V1_SYSTEM} USER: {getattr(processor, 'image_token', '<image>')}\n{prompt} ASSISTANT:"
    if getattr(processor, "chat_template", None) is None:
        logger.warning("the captioner's processor has no chat template; passing the prompt as is")
        return prompt
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(turn, add_generation_prompt=True)


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Pads `image` to a square, centred, with `color` (LLaVA's `expand2square`); a square image is returned as is."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def mean_color(processor: ProcessorMixin) -> tuple[int, int, int]:
    """The image processor's mean as an RGB colour, as LLaVA computes it: (122, 116, 104) for CLIP."""
    return tuple(int(x * 255) for x in processor.image_processor.image_mean)


def clean_caption(text: str) -> str:
    """The official post-processing of a caption (`llava_result_sum.py`): `"` characters, then `'s`, removed."""
    return text.replace('"', "").replace("'s", "")


def caption_images(
    captioner: Captioner,
    images: list[Image.Image],
    class_name: str,
    *,
    prompt_template: str,
    do_sample: bool = CaptionConfig.do_sample,
    temperature: float = CaptionConfig.temperature,
    max_new_tokens: int = CaptionConfig.max_new_tokens,
    batch_size: int = CaptionConfig.batch_size,
    seed: int = 0,
    conversation: str = CaptionConfig.conversation,
    pad_to_square: bool = CaptionConfig.pad_to_square,
    clean: bool = CaptionConfig.clean_captions,
    progress: bool = False,
) -> list[str]:
    """Describes each image with the captioner, prompted with the class name (paper: sampling at temperature 0.2).

    The prompt is wrapped in the conversation `conversation_text` builds; only the newly generated tokens are decoded,
    then stripped (and cleaned, with `clean`). Batch `i` samples from a seed derived from `(seed, i * batch_size)`, so the same
    `seed` and `batch_size` give the same captions; the global RNG state is left untouched.

    Args:
        captioner: from `load_captioner`; the model stays on its device and dtype.
        images: RGB images of one class.
        class_name: the label name filled into `prompt_template`.
        prompt_template: e.g. `vldd.configs.distill.PAPER_PROMPT`.
        do_sample: sample (paper) or decode greedily.
        temperature: sampling temperature (ignored when greedy).
        max_new_tokens: generation budget per caption, in tokens.
        batch_size: images per `generate` call.
        seed: seeds sampling.
        conversation: "llava_v1" (the paper's conversation for LLaVA-1.5 models) or "chat_template".
        pad_to_square: LLaVA-1.5 models: pad each image to a centred square with the processor's mean colour before
            the processor (LLaVA's `image_aspect_ratio: pad`), so resizing and centre-cropping lose no edge.
        clean: apply the official post-processing (`clean_caption`).
        progress: show a tqdm bar.

    Returns:
        One caption per image, in order.
    """
    # 1. Check inputs
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if do_sample and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 when sampling, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}")
    model, processor = captioner.model, captioner.processor

    # 2. Prompt, in the model's conversation format; LLaVA-1.5 images padded to squares
    text = conversation_text(captioner, build_prompt(prompt_template, class_name), conversation)
    color = mean_color(processor) if pad_to_square and is_llava_v15(model) else None
    generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                       "pad_token_id": processor.tokenizer.pad_token_id}
    if do_sample:
        generate_kwargs["temperature"] = temperature
    rng_devices = [model.device] if model.device.type != "cpu" else []

    # 3. Generate batch by batch; left padding keeps every prompt flush against its new tokens
    captions: list[str] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"captioning {class_name}", disable=not progress):
        batch = images[start : start + batch_size]
        if color is not None:  # padded batch by batch: one padded copy of a batch in memory, not of the class
            batch = [expand_to_square(image, color) for image in batch]
        inputs = processor(images=batch, text=[text] * len(batch), padding=True, padding_side="left",
                           return_tensors="pt").to(model.device, dtype=model.dtype)
        with torch.random.fork_rng(devices=rng_devices, device_type=model.device.type), torch.inference_mode():
            torch.manual_seed(seeding.derive_seed(seed, start))
            output = model.generate(**inputs, **generate_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = [caption.strip() for caption in processor.batch_decode(new_tokens, skip_special_tokens=True)]
        captions.extend(clean_caption(caption) if clean else caption for caption in decoded)
    return captions


def captions_dataset(
    source_indices: list[int],
    labels: list[int],
    captions: list[str],
    prompts: list[str],
    captioner_id: str,
    class_names: list[str],
) -> datasets.Dataset:
    """Builds the captions dataset, one row per captioned source image.

    Args:
        source_indices: row of each image in the source split.
        labels: label id of each image.
        captions: the captions, in the same order.
        prompts: the prompt each caption was generated from.
        captioner_id: the captioner's model id (and revision, if wanted), repeated on every row.
        class_names: the source's label names (the `label` column's `ClassLabel` names).

    Returns:
        A `datasets.Dataset` with columns source_index (int64), label (ClassLabel), caption, captioner, prompt.
    """
    import datasets

    lengths = {"source_indices": len(source_indices), "labels": len(labels), "captions": len(captions),
               "prompts": len(prompts)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"captions_dataset needs one entry per image in every list, got lengths {lengths}")
    features = datasets.Features({
        "source_index": datasets.Value("int64"),
        "label": datasets.ClassLabel(names=list(class_names)),
        "caption": datasets.Value("string"),
        "captioner": datasets.Value("string"),
        "prompt": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(
        {"source_index": list(source_indices), "label": list(labels), "caption": list(captions),
         "captioner": [captioner_id] * len(captions), "prompt": list(prompts)},
        features=features,
    )

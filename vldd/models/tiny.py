"""The `tiny` preset's models: a tiny Stable Diffusion and a tiny LLaVA with random weights, built offline.

Both are saved with `save_pretrained` and load through the very code paths the real checkpoints use
(`StableDiffusionImg2ImgPipeline.from_pretrained`, `AutoModelForImageTextToText` + `AutoProcessor`), so every stage
runs end to end on a CPU in seconds. Their outputs are meaningless (random weights); the plumbing is real.

Example:
    >>> from vldd.models.registry import resolve_model
    >>> path = resolve_model("tiny://stable-diffusion")  # built once, then cached in ~/.cache/vldd/tiny/
    >>> pipe = StableDiffusionImg2ImgPipeline.from_pretrained(path)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

from ..configs.distill import PRESETS, TINY_CAPTIONER, TINY_DIFFUSION

logger = logging.getLogger(__name__)

SEED = 0  # every build starts from this torch seed, so builds are identical
MARKER = "vldd_tiny.json"  # written last into a finished build; names the builder version
RESOLUTION = PRESETS["tiny"]["prototypes"]["resolution"]  # 64 px images -> 8x8 latents (SD's 8x VAE downsampling)

# SD v1.5's scheduler_config.json (PNDM).
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}

# llava-hf/llava-1.5-7b-hf's chat template: "USER: <image>\n{prompt} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# What the captioner's tokenizer is trained on: its vocabulary, hence its gibberish, is made of these words.
_CORPUS = [
    "Describe the physical appearance of the object in the image.",
    "Include details about its shape, posture, color, and any distinct features.",
    "The image shows a small brown dog with a long tail, sitting on green grass in the sun.",
    "A large white bird with black wings stands on one leg near the water.",
    "The fish has a slim silver body, a forked tail and dark spots along its side.",
    "A bright red circle with smooth round edges lies on a dark blue background.",
    "The square is yellow, tilted slightly, with sharp corners and straight sides.",
    "A green triangle points upward; its three edges are thin and its surface is flat.",
    "Two thick orange lines cross in the middle, forming a bold diagonal cross.",
    "Vertical stripes of pale and deep purple repeat across the whole picture.",
    "The cat is curled up, its fur soft and grey, its eyes closed and ears pointed.",
    "A wooden chair with four legs and a curved back stands in a bright room.",
]
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def default_cache_dir() -> Path:
    """vldd's cache directory (`~/.cache/vldd`); the tiny models live in its `tiny/` folder."""
    return Path.home() / ".cache" / "vldd"


def _builder_version() -> str:
    # The builder's own source and the libraries that write the files: changing either rebuilds.
    versions = " ".join(version(name) for name in ("diffusers", "transformers", "tokenizers", "torch"))
    return hashlib.sha256(Path(__file__).read_bytes() + versions.encode()).hexdigest()[:16]


def clip_tokenizer():
    """The exact CLIP tokenizer (SD v1.5's), rebuilt from the BPE merges that open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    # Same construction as open_clip's SimpleTokenizer: 48,894 merges; 256 bytes, 256 bytes + "</w>", one token per
    # merge, then the two special tokens -> 49,408 ids, identical to openai/clip-vit-large-patch14's vocab.json.
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merges]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _build_diffusion(path: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    # Four blocks -> 8x downsampling, as SD's VAE: 64 px images <-> 4x8x8 latents.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=RESOLUTION, scaling_factor=0.18215)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)


def caption_tokenizer():
    """A Llama-style (SentencePiece-like BPE, BOS added) tokenizer trained in milliseconds on `_CORPUS`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=_SPECIAL_TOKENS, initial_alphabet=alphabet,
                                  show_progress=False)
    backend.train_from_iterator(_CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=2048)


def _build_captioner(path: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size, patch_size = 32, 8  # 4x4 patches + CLS; the "default" strategy drops CLS -> 16 image tokens
    tokenizer = caption_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                                       projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **special),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(path)
    processor.save_pretrained(path)


_BUILDERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    TINY_DIFFUSION: ("stable-diffusion", _build_diffusion),
    TINY_CAPTIONER: ("llava", _build_captioner),
}


def _is_current(path: Path, version: str) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("version") == version
    except (OSError, ValueError):
        return False


def _ensure(model_id: str, cache_dir: str | Path | None) -> Path:
    name, build = _BUILDERS[model_id]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / "tiny" / name, build, model_id, _builder_version())


def build_once(target: Path, build: Callable[[Path], None], model_id: str, version: str) -> Path:
    """Runs `build(dir)` once into `target`: in a temporary directory moved into place, under a file lock.

    A finished build holds a marker naming `version`; a marker with another version triggers a rebuild.
    """
    from filelock import FileLock

    name = target.name
    if _is_current(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{name}.lock")):
        if _is_current(target, version):  # another process built it while we waited
            return target
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
        old = tmp.with_suffix(".old")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                build(tmp)
            (tmp / MARKER).write_text(json.dumps({"model_id": model_id, "version": version}) + "\n")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    logger.info("built %s in %s (%.1f s)", model_id, target, time.perf_counter() - start)
    return target


def build_tiny_models(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Builds the tiny models once (later calls reuse them) and returns their directories.

    A build is written to a temporary directory and moved into place when complete, under a file lock, so concurrent
    processes never see a half-written model. A version marker (a hash of this module's source and of the library
    versions) triggers a rebuild when the builder changes.

    Args:
        cache_dir: where to keep them (in its `tiny/` folder); defaults to `~/.cache/vldd`.

    Returns:
        `{"tiny://stable-diffusion": <dir>, "tiny://llava": <dir>}`.
    """
    return {model_id: _ensure(model_id, cache_dir) for model_id in _BUILDERS}


def build_model(model_id: str, cache_dir: str | Path | None = None) -> Path:
    """The directory of the tiny model `model_id` ("tiny://..."), built on first use."""
    if model_id not in _BUILDERS:
        raise ValueError(f"unknown tiny model {model_id!r}; valid tiny ids are {sorted(_BUILDERS)}")
    return _ensure(model_id, cache_dir)

"""The tiny preset's models: built once, cached, and loadable through the stock from_pretrained paths."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vldd.configs.distill import TINY_CAPTIONER, TINY_DIFFUSION
from vldd.models.registry import resolve_model
from vldd.models.tiny import MARKER, build_tiny_models


def test_build_once_then_reuse(tiny_cache):
    first = build_tiny_models(tiny_cache)
    assert set(first) == {TINY_DIFFUSION, TINY_CAPTIONER}
    stamps = {model_id: (path / MARKER).stat().st_mtime_ns for model_id, path in first.items()}
    again = build_tiny_models(tiny_cache)
    assert again == first
    assert {model_id: (path / MARKER).stat().st_mtime_ns for model_id, path in again.items()} == stamps
    assert resolve_model(TINY_DIFFUSION, cache_dir=tiny_cache) == str(first[TINY_DIFFUSION])


def test_resolve_model_passes_other_ids_and_rejects_unknown_tiny(tiny_cache):
    assert resolve_model("llava-hf/llava-1.5-7b-hf", cache_dir=tiny_cache) == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match=r"tiny://nope.*tiny://llava.*tiny://stable-diffusion"):
        resolve_model("tiny://nope", cache_dir=tiny_cache)


def test_stale_build_is_rebuilt(tmp_path):
    path = resolve_model(TINY_CAPTIONER, cache_dir=tmp_path)
    marker = tmp_path / "tiny" / "llava" / MARKER
    current = json.loads(marker.read_text())
    marker.write_text(json.dumps({**current, "version": "stale"}))
    assert resolve_model(TINY_CAPTIONER, cache_dir=tmp_path) == path
    assert json.loads(marker.read_text()) == current
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.endswith((".tmp", ".old"))]


def test_stable_diffusion_img2img_from_latents(tiny_cache):
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(resolve_model(TINY_DIFFUSION, cache_dir=tiny_cache))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1
    assert pipe.vae.config.scaling_factor == 0.18215 and pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size == 64 // pipe.vae_scale_factor
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def generate():
        return pipe(prompt=["a red circle", "a blue square"], image=latents, strength=0.7, num_inference_steps=6,
                    guidance_scale=10.0, negative_prompt=["cartoon, anime, painting"] * 2,
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).images

    images = generate()
    assert len(images) == 2
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for image in images)
    assert np.array_equal(np.asarray(images[0]), np.asarray(generate()[0]))


def test_clip_tokenizer_is_exact(tiny_cache):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(resolve_model(TINY_DIFFUSION, cache_dir=tiny_cache), subfolder="tokenizer")
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408
    sentence = "A photo of a Tench, Tinca tinca: a fish's olive-green body, 2 fins!"
    ids = tokenizer(sentence).input_ids
    expected = SimpleTokenizer()(sentence)[0].tolist()
    assert ids == expected[: len(ids)] and expected[len(ids)] == 0


def test_captioner_loads_through_auto_classes(tiny_cache):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    path = resolve_model(TINY_CAPTIONER, cache_dir=tiny_cache)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(model, LlavaForConditionalGeneration)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == "USER: <image>\nDescribe it. ASSISTANT:"
    image = Image.fromarray(np.zeros((48, 40, 3), dtype=np.uint8))
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == model.config.image_seq_length == 16
    with torch.no_grad():
        logits = model(**inputs).logits  # raises if the expanded <image> tokens don't match the vision features
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)

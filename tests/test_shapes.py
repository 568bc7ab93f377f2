"""Real-shape models: the paper's architectures from their published configs (docs/testing.md, "Real-shape models"), random weights."""

import pytest
import torch
from PIL import Image

from vldd.models.paper_shapes import component_parameters, llava_tokenizer, parse_shape_id
from vldd.models.registry import resolve_model
from vldd.stages.caption import load_captioner

REDUCED = "shapes://llava-1.5-7b?layers=1&vision_layers=1"


def test_parameter_counts_are_the_published_ones():
    # Counted on the meta device: nothing is allocated, so the full 7B model is counted in a second.
    assert component_parameters("shapes://sd15") == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    full = component_parameters("shapes://llava-1.5-7b")
    assert full["model"] == 7_063_427_072
    # A depth-reduced variant differs from the full model by exactly the layers it drops.
    two = component_parameters("shapes://llava-1.5-7b?layers=2&vision_layers=3")
    assert full["model"] - two["model"] == 30 * full["language_layer"] + 21 * full["vision_layer"]
    assert full["language_layer"] == 202_383_360  # 4 x 4096^2 attention + 3 x 4096 x 11008 MLP + 2 norms


@pytest.mark.parametrize("bad, message", [
    ("shapes://sd14", "unknown real-shape model"),
    ("tiny://llava", "unknown real-shape model"),
    ("shapes://sd15?layers=2", "takes no options"),
    ("shapes://llava-1.5-7b?depth=2", "unknown option 'depth'"),
    ("shapes://llava-1.5-7b?layers=0", r"\[1, 32\], got '0'"),
    ("shapes://llava-1.5-7b?vision_layers=25", r"\[1, 24\], got '25'"),
])
def test_bad_ids_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_shape_id(bad)


def test_ids_parse_to_depths():
    assert parse_shape_id("shapes://sd15") == ("sd15", {})
    assert parse_shape_id("shapes://llava-1.5-7b") == ("llava-1.5-7b", {"layers": 32, "vision_layers": 24})
    assert parse_shape_id("shapes://llava-1.5-7b?layers=2") == ("llava-1.5-7b", {"layers": 2, "vision_layers": 24})


def test_llava_tokenizer_has_the_real_vocabulary_size():
    tokenizer = llava_tokenizer()
    assert len(tokenizer) == 32_002
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"]) == [0, 1, 2, 32_000, 32_001]
    ids = tokenizer("a dog <image>").input_ids
    assert ids[0] == 1 and ids[-1] == 32_000 and all(i < 32_000 for i in ids[:-1])


def test_reduced_llava_loads_like_the_real_one_and_runs(tmp_path):
    # Built once through resolve_model (the tiny preset's entry point), loaded by the captioner's own loader.
    path = resolve_model(REDUCED, cache_dir=tmp_path)
    assert path.startswith(str(tmp_path / "shapes"))
    captioner = load_captioner(REDUCED, cache_dir=tmp_path)
    model, processor = captioner.model, captioner.processor
    assert sum(p.numel() for p in model.parameters()) == component_parameters(REDUCED)["model"]
    assert model.dtype == torch.float32  # stored in fp16, cast to what the loader asked for
    image = Image.new("RGB", (400, 300), (120, 30, 200))
    inputs = processor(images=[image], text=["USER: <image>\nDescribe it. ASSISTANT:"], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert (inputs["input_ids"] == 32_000).sum() == 576  # 24 x 24 patches, CLS dropped
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 32_064) and logits.isfinite().all()
    assert resolve_model(REDUCED, cache_dir=tmp_path) == path  # reused, not rebuilt


def test_loaders_keep_sdpa_attention_which_changes_no_output(tiny_cache):
    # The speed default measured by benchmarks/paper_scale.py: both libraries' loaders pick SDPA; the classic
    # attention gives the same UNet output (to float rounding) more slowly.
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from vldd.stages.generate import load_pipeline

    captioner = load_captioner("tiny://llava", cache_dir=tiny_cache)
    assert captioner.model.config.text_config._attn_implementation == "sdpa"
    assert captioner.model.config.vision_config._attn_implementation == "sdpa"
    pipe = load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.inference_mode():
        sdpa = pipe.unet(x, 500, text).sample
        pipe.unet.set_attn_processor(AttnProcessor())
        classic = pipe.unet(x, 500, text).sample
    torch.testing.assert_close(classic, sdpa, rtol=1e-5, atol=1e-5)

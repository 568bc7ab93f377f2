"""Generation: chunked prompt embeddings, the denoising-step count a strength implies, seeds that reproduce."""

import numpy as np
import pytest
import torch

from vldd.configs.distill import denoising_steps
from vldd.models.tiny import clip_tokenizer
from vldd.stages.generate import (
    encode_prompts,
    generate_images,
    load_pipeline,
    prompt_token_ids,
    window_token_ids,
)

NEGATIVE = "cartoon, anime, painting"  # the paper's: 3 words, 7 ids with BOS/EOS
BOS, EOS = 49406, 49407  # CLIP's; EOS is also SD v1.5's pad token
# 105 CLIP tokens (107 ids with BOS/EOS), 97 words
CAPTION_105 = ("A small brown dog with a long fluffy tail sits on green grass near a wooden fence, its ears raised, "
               "its nose black and wet, with white patches on its chest and paws, a red collar around its neck, "
               "looking towards the camera in bright afternoon sunlight while leaves fall around it and a ball lies "
               "beside its front paws on the lawn in a quiet garden behind a small white house with a red roof, "
               "and two birds sit on the fence above it, watching the dog as it waits for its owner to play outside.")

LONG = ("A small brown dog with a long fluffy tail sits on green grass near a wooden fence, its ears raised, "
        "its nose black and wet, with white patches on its chest and paws, a red collar around its neck, "
        "looking towards the camera in bright afternoon sunlight while leaves fall around it and a ball lies "
        "beside its front paws on the lawn in a quiet garden behind a small white house with a red roof")


@pytest.fixture(scope="module")
def pipe(tiny_cache):
    return load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache)


def test_windows_drop_no_token(pipe):
    tok = pipe.tokenizer
    ids = tok(LONG, add_special_tokens=False, verbose=False).input_ids
    assert len(ids) > 75  # really needs several windows
    windows = window_token_ids(tok, LONG)
    assert windows.shape == (2, 77)
    body = []
    for row in windows.tolist():
        assert row[0] == tok.bos_token_id
        end = row.index(tok.eos_token_id, 1)
        body += row[1:end]
    assert body == ids


def test_chunked_embeddings_equal_per_window_clip_encodings(pipe):
    tok, enc = pipe.tokenizer, pipe.text_encoder
    embeds, negative = encode_prompts(pipe, [LONG], "cartoon, anime, painting", chunking="windows")
    windows = window_token_ids(tok, LONG)
    with torch.no_grad():
        expected = torch.cat([enc(w[None])[0] for w in windows], dim=1)
        neg_windows = window_token_ids(tok, "cartoon, anime, painting", n_windows=2)
        expected_neg = torch.cat([enc(w[None])[0] for w in neg_windows], dim=1)
    assert embeds.shape == negative.shape == (1, 154, enc.config.hidden_size)
    torch.testing.assert_close(embeds, expected)
    torch.testing.assert_close(negative, expected_neg)


def test_short_prompt_is_encoded_exactly_as_the_pipeline_does(pipe):
    reference, reference_neg = pipe.encode_prompt("a photo of a dog", "cpu", 1, True, "cartoon, anime, painting")
    mine, mine_neg = encode_prompts(pipe, ["a photo of a dog"], "cartoon, anime, painting", chunking="windows")
    torch.testing.assert_close(mine, reference)
    torch.testing.assert_close(mine_neg, reference_neg)


def _official_ids(tokenizer, prompt, negative_prompt):
    """The paper's `get_pipeline_embeds` token ids (gen_syn_image.py), transcribed call for call."""
    if len(prompt.split(" ")) >= len(negative_prompt.split(" ")):
        ids = tokenizer(prompt, return_tensors="pt", truncation=False).input_ids
        negative = tokenizer(negative_prompt, truncation=False, padding="max_length", max_length=ids.shape[-1],
                             return_tensors="pt").input_ids
    else:
        negative = tokenizer(negative_prompt, return_tensors="pt", truncation=False).input_ids
        ids = tokenizer(prompt, return_tensors="pt", truncation=False, padding="max_length",
                        max_length=negative.shape[-1]).input_ids
    return ids, negative


def test_official_layout_with_the_real_clip_vocabulary():
    tok = clip_tokenizer()  # the full 49,408-token CLIP vocabulary, rebuilt from open_clip's BPE merges
    assert len(tok(CAPTION_105, add_special_tokens=False, verbose=False).input_ids) == 105
    ids, negative = prompt_token_ids(tok, [CAPTION_105], NEGATIVE)
    assert ids.shape == negative.shape == (1, 107)  # windows would give 154
    assert ids[0, 0] == BOS and ids[0, 76] != EOS and ids[0, 77] != BOS and ids[0, -1] == EOS  # chunk 2: 30, no BOS
    assert negative[0, :7].tolist() == tok(NEGATIVE).input_ids and set(negative[0, 7:].tolist()) == {EOS}

    ids, negative = prompt_token_ids(tok, ["A tench."], NEGATIVE)  # 2 words: the negative prompt sets the length
    assert ids.tolist() == [[BOS, 320, 1149, 634, 269, EOS, EOS]]  # 6 ids padded to 7, not 77
    assert negative.tolist() == [[BOS, 7651, 267, 6469, 267, 3086, EOS]]

    short = "a photo of a golden retriever lying on the grass"
    ids, negative = prompt_token_ids(tok, [short], NEGATIVE)  # <= 77 ids: one chunk, not padded to 77
    assert ids.tolist() == [tok(short).input_ids] and negative.shape == ids.shape == (1, 12)

    # "a red fish": 3 words >= 3 words, so the official code lets its 5 ids set the length and fails on the 7-id
    # negative prompt; vldd pads both to 7
    ids, negative = prompt_token_ids(tok, ["a red fish"], NEGATIVE)
    assert ids.tolist() == [[BOS, 320, 736, 2759, EOS, EOS, EOS]] and negative.shape == (1, 7)


@pytest.mark.parametrize("prompt", [CAPTION_105, "A tench.", "a photo of a golden retriever lying on the grass",
                                    LONG, "red", "cartoon, anime, painting, sketch, drawing"])
def test_official_layout_equals_the_paper_code_token_for_token(prompt):
    tok = clip_tokenizer()
    expected_ids, expected_negative = _official_ids(tok, prompt, NEGATIVE)
    ids, negative = prompt_token_ids(tok, [prompt], NEGATIVE)
    assert torch.equal(ids, expected_ids) and torch.equal(negative, expected_negative)


def test_official_embeddings_are_chunks_encoded_separately_and_concatenated(pipe):
    enc = pipe.text_encoder
    embeds, negative = encode_prompts(pipe, [CAPTION_105], NEGATIVE)
    ids, neg_ids = _official_ids(pipe.tokenizer, CAPTION_105, NEGATIVE)
    with torch.no_grad():
        expected = torch.cat([enc(ids[:, :77])[0], enc(ids[:, 77:])[0]], dim=1)
        expected_neg = torch.cat([enc(neg_ids[:, :77])[0], enc(neg_ids[:, 77:])[0]], dim=1)
    assert embeds.shape == negative.shape == (1, 107, enc.config.hidden_size)
    torch.testing.assert_close(embeds, expected)
    torch.testing.assert_close(negative, expected_neg)
    with pytest.raises(ValueError, match="'tokens'"):
        encode_prompts(pipe, ["a dog"], NEGATIVE, chunking="tokens")


@pytest.mark.parametrize("scheduler, calls, first", [("DDIMScheduler", 35, 681), ("PNDMScheduler", 36, 701)])
def test_strength_07_of_50_steps_runs_35_denoising_steps(tiny_cache, scheduler, calls, first):
    """0.7 of 50 steps = 35 UNet calls, from the 16th timestep of the 50-step schedule (DDIM: t=681).

    SD v1.5's PNDM lists 51 timesteps for 50 steps (its first PLMS step repeats), so stock img2img, which slices
    `timesteps[50 - 35:]`, runs 36 distinct steps from t=701 with it. vldd keeps the stock behaviour (no fork).
    """
    pipe = load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache, scheduler=scheduler)
    assert denoising_steps(50, 0.7) == 35
    seen = []
    handle = pipe.unet.register_forward_hook(lambda module, args, out: seen.append(int(args[1])))
    try:
        generate_images(pipe, torch.randn(1, 4, 8, 8), ["a dog"], seeds=[0], strength=0.7, num_inference_steps=50)
    finally:
        handle.remove()
    assert len(seen) == len(set(seen)) == calls
    assert max(seen) == first and min(seen) == 1  # starts part-way into the schedule, not from pure noise


def test_bad_scheduler_name_is_named(tiny_cache):
    with pytest.raises(ValueError, match="'NoSuchScheduler' is not compatible"):
        load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache, scheduler="NoSuchScheduler")


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_seeds_reproduce_per_image_whatever_the_batching(pipe):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a dog", LONG, "a cat on a mat"]
    kwargs = dict(num_inference_steps=10, strength=0.7, guidance_scale=10.0, output_size=32)
    a = _arrays(generate_images(pipe, latents, prompts, seeds=[0, 1, 2], seed=7, batch_size=3, **kwargs))
    b = _arrays(generate_images(pipe, latents, prompts, seeds=[0, 1, 2], seed=7, batch_size=1, **kwargs))
    c = _arrays(generate_images(pipe, latents, prompts, seeds=[0, 1, 2], seed=8, batch_size=3, **kwargs))
    assert a[0].shape == (32, 32, 3)
    for x, y in zip(a, b):  # batched vs one at a time: the same images, up to floating-point noise
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 4
    assert all(np.abs(x.astype(int) - z.astype(int)).max() > 10 for x, z in zip(a, c))
    again = _arrays(generate_images(pipe, latents, prompts, seeds=[0, 1, 2], seed=7, batch_size=3, **kwargs))
    assert all(np.array_equal(x, y) for x, y in zip(a, again))


def test_mismatched_inputs_are_named(pipe):
    with pytest.raises(ValueError, match="2 latents, 1 prompts and 2 seeds"):
        generate_images(pipe, torch.randn(2, 4, 8, 8), ["a"], seeds=[0, 1])


@pytest.mark.slow  # compiling the tiny UNet takes tens of seconds on a CPU
def test_compiled_unet_is_opt_in_and_gives_the_same_images(tiny_cache, pipe):
    compiled = load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache, compile_unet=True)
    assert isinstance(compiled.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)  # eager unless asked
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {"prompts": ["a red circle", "blue stripes"], "seeds": [(0, 0), (0, 1)], "num_inference_steps": 4}
    eager = [np.asarray(im, np.int16) for im in generate_images(pipe, latents, **kwargs)]
    fused = [np.asarray(im, np.int16) for im in generate_images(compiled, latents, **kwargs)]
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(eager, fused))  # same images, up to rounding of fused kernels


def test_length_batches_are_the_calls_generate_images_makes():
    from vldd.stages.generate import length_batches

    # one class of the quickstart's run: 10 prompts of 4 embedding lengths, batch 10 -> one call per length
    lengths = [17, 15, 17, 16, 16, 14, 16, 14, 14, 14]
    assert length_batches(lengths, 10) == [[5, 7, 8, 9], [1], [3, 4, 6], [0, 2]]
    # batch 4: cut the length-sorted order every 4, then split each cut by length
    assert length_batches(lengths, 4) == [[5, 7, 8, 9], [1], [3, 4, 6], [0, 2]]
    assert length_batches(lengths, 1) == [[i] for i in sorted(range(10), key=lambda i: lengths[i])]
    assert length_batches([7, 7, 7], 2) == [[0, 1], [2]]

"""Generation: chunked prompt embeddings, the denoising-step count a strength implies, seeds that reproduce."""

import numpy as np
import pytest
import torch

from vldd.generation import denoising_steps, encode_prompts, generate_images, load_pipeline, window_token_ids

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
    embeds, negative = encode_prompts(tok, enc, [LONG], "cartoon, anime, painting")
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
    mine, mine_neg = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a photo of a dog"], "cartoon, anime, painting")
    torch.testing.assert_close(mine, reference)
    torch.testing.assert_close(mine_neg, reference_neg)


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

"""Stage 1, captioning, on the tiny LLaVA: prompts, batching, seeding, decoding and the captions dataset."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vldd.configs.distill import PAPER_PROMPT, TINY_CAPTIONER
from vldd.stages.caption import (
    LLAVA_V1_SYSTEM,
    Captioner,
    build_prompt,
    caption_images,
    captions_dataset,
    clean_caption,
    conversation_text,
    expand_to_square,
    load_captioner,
)

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def captioner(tiny_cache):
    return load_captioner(TINY_CAPTIONER, cache_dir=tiny_cache)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 6 * i, 48, 3), dtype=np.uint8)) for i in range(4)]


def caption(captioner, images, **kwargs):
    kwargs = {"prompt_template": PAPER_PROMPT, "max_new_tokens": NEW_TOKENS, **kwargs}
    return caption_images(captioner, images, "tench, Tinca tinca", **kwargs)


def test_paper_prompt_verbatim():
    assert build_prompt(PAPER_PROMPT, "tench, Tinca tinca") == (
        "Describe the physical appearance of the tench, Tinca tinca in the image."
        "Include details about its shape, posture, color, and any distinct features."
    )
    with pytest.raises(ValueError, match="class_name"):
        build_prompt("Describe the {animal}.", "dog")


def test_one_caption_per_image(captioner, images):
    assert isinstance(captioner, Captioner)
    assert captioner.model_id == TINY_CAPTIONER and captioner.revision is None
    captions = caption(captioner, images, batch_size=3)
    assert len(captions) == len(images)
    assert all(isinstance(c, str) for c in captions)


def test_captions_are_stripped_of_surrounding_whitespace(captioner, images, monkeypatch):
    expected = caption(captioner, images[:2], do_sample=False)
    decode = captioner.processor.batch_decode
    monkeypatch.setattr(captioner.processor, "batch_decode",
                        lambda *args, **kwargs: [f" \n {text}\t " for text in decode(*args, **kwargs)])
    assert caption(captioner, images[:2], do_sample=False) == [c.strip() for c in expected]


def test_same_seed_same_captions_and_rng_untouched(captioner, images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = caption(captioner, images, seed=7, temperature=5.0)
    assert torch.equal(torch.rand(3), expected)  # sampling ran on a forked RNG
    assert caption(captioner, images, seed=7, temperature=5.0) == first
    assert caption(captioner, images, seed=8, temperature=5.0) != first


def test_greedy_is_batch_size_invariant(captioner, images):
    one = caption(captioner, images, do_sample=False, batch_size=1)
    three = caption(captioner, images, do_sample=False, batch_size=3)
    assert one == three


def test_only_new_tokens_are_decoded(captioner, images):
    prompt = build_prompt(PAPER_PROMPT, "tench, Tinca tinca")
    tokenizer = captioner.processor.tokenizer
    for text in caption(captioner, images[:2], do_sample=False):
        assert prompt not in text and "USER:" not in text and "ASSISTANT:" not in text
        assert len(tokenizer(text, add_special_tokens=False).input_ids) <= 2 * NEW_TOKENS


def test_progress_bar_only_when_asked(captioner, images, capsys):
    caption(captioner, images[:1], max_new_tokens=2)
    assert "captioning" not in capsys.readouterr().err
    caption(captioner, images[:1], max_new_tokens=2, progress=True)
    assert "captioning tench" in capsys.readouterr().err


def test_rejects_bad_arguments(captioner, images):
    with pytest.raises(ValueError, match="batch_size"):
        caption(captioner, images, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        caption(captioner, images, temperature=0.0)


def test_captions_dataset_features():
    names = ["tench", "goldfish", "shark"]
    ds = captions_dataset([4, 9], [0, 2], ["a fish", "a big fish"], ["p0", "p2"], "tiny://llava", names)
    assert isinstance(ds, datasets.Dataset)
    assert ds.features["source_index"] == datasets.Value("int64")
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == names
    for column in ("caption", "captioner", "prompt"):
        assert ds.features[column] == datasets.Value("string")
    assert ds[1] == {"source_index": 9, "label": 2, "caption": "a big fish", "captioner": "tiny://llava",
                     "prompt": "p2"}
    with pytest.raises(ValueError, match="lengths"):
        captions_dataset([1], [0, 1], ["a"], ["p"], "m", names)


@pytest.mark.parametrize("model_id", ["vldd-test/no-such-captioner", "tiny://no-such-model"])
def test_bad_model_id_is_a_clear_error(model_id, tiny_cache):
    with pytest.raises(ValueError, match=model_id):
        load_captioner(model_id, cache_dir=tiny_cache)


def test_directory_that_is_not_a_captioner(tmp_path, tiny_cache):
    with pytest.raises(ValueError, match="could not load captioner"):
        load_captioner(str(tmp_path), cache_dir=tiny_cache)


PAPER_TENCH = build_prompt(PAPER_PROMPT, "tench, Tinca tinca")


def test_llava_v1_conversation_text(captioner):
    assert LLAVA_V1_SYSTEM == ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                               "gives helpful, detailed, and polite answers to the human's questions.")
    assert conversation_text(captioner, PAPER_TENCH) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nDescribe the physical appearance of "
        "the tench, Tinca tinca in the image.Include details about its shape, posture, color, and any distinct "
        "features. ASSISTANT:")
    # llava-hf's own template has no system prompt
    assert conversation_text(captioner, "Hi.", "chat_template") == "USER: <image>\nHi. ASSISTANT:"
    with pytest.raises(ValueError, match="'vicuna'"):
        conversation_text(captioner, "Hi.", "vicuna")


def test_other_captioners_keep_their_chat_template(captioner, monkeypatch):
    monkeypatch.setattr(captioner.model.config.text_config, "model_type", "qwen2")  # a LLaVA that is not LLaVA-1.5
    assert conversation_text(captioner, "Hi.") == "USER: <image>\nHi. ASSISTANT:"


def test_expand_to_square_keeps_the_edges():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 40 wide, 24 high
    square = np.asarray(expand_to_square(Image.fromarray(pixels), (122, 116, 104)))
    assert square.shape == (40, 40, 3)
    assert np.array_equal(square[8:32], pixels)  # every pixel, the borders of the original included
    assert (square[:8] == (122, 116, 104)).all() and (square[32:] == (122, 116, 104)).all()
    tall = np.asarray(expand_to_square(Image.fromarray(pixels[:, :15]), (1, 2, 3)))  # odd padding: 4 left, 5 right
    assert tall.shape == (24, 24, 3) and np.array_equal(tall[:, 4:19], pixels[:, :15])
    assert (tall[:, :4] == (1, 2, 3)).all() and (tall[:, 19:] == (1, 2, 3)).all()


class _Recording:
    """Passes every call to the real processor and records the texts and images it was given."""

    def __init__(self, processor):
        self.processor, self.calls = processor, []

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def __call__(self, images, text, **kwargs):
        self.calls.append((images, text))
        return self.processor(images=images, text=text, **kwargs)


def test_llava_images_are_padded_and_prompted_as_the_paper(captioner, images):
    recording = _Recording(captioner.processor)
    spied = Captioner(captioner.model, recording, captioner.model_id, None)
    caption(spied, images[:2], do_sample=False)
    (given, texts), = recording.calls
    assert texts == [conversation_text(captioner, PAPER_TENCH)] * 2
    assert [im.size for im in given] == [(48, 48), (48, 48)]  # 48 x 40 and 48 x 46 images, padded
    assert given[0].getpixel((0, 0)) == (122, 116, 104)  # CLIP's mean colour, from the processor's image_mean
    assert np.array_equal(np.asarray(given[0])[4:44], np.asarray(images[0]))
    recording.calls.clear()
    caption(spied, images[:1], do_sample=False, pad_to_square=False, conversation="chat_template")
    (given, texts), = recording.calls
    assert given[0].size == (48, 40) and texts == ["USER: <image>\n" + PAPER_TENCH + " ASSISTANT:"]


def test_official_caption_post_processing(captioner, images, monkeypatch):
    assert clean_caption('The dog\'s "tail" is long; it\'s curled.') == "The dog tail is long; it curled."
    assert clean_caption("It's \"Tinca's\" fin") == "It Tinca fin"
    monkeypatch.setattr(captioner.processor, "batch_decode", lambda ids, **kw: [' The fish\'s "fin". '] * len(ids))
    assert caption(captioner, images[:1], do_sample=False, max_new_tokens=1) == ["The fish fin."]
    assert caption(captioner, images[:1], do_sample=False, max_new_tokens=1, clean=False) == ['The fish\'s "fin".']

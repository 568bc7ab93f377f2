"""Loading sources: columns, classes, caps, image modes, corrupt files, and the errors users see."""

import io

import datasets
import numpy as np
import pytest
from PIL import Image

from vldd.config import DataConfig, DistillConfig, load_config
from vldd.data import decode_image, load_source
from vldd.sample import SAMPLE_CLASSES, load_sample


def test_sample_dataset_is_deterministic_with_two_splits():
    train, val = load_sample("train"), load_sample("validation")
    assert train.num_rows == 30 * len(SAMPLE_CLASSES) and val.num_rows == 10 * len(SAMPLE_CLASSES)
    assert train.features["label"].names == SAMPLE_CLASSES
    load_sample.cache_clear()
    again = load_sample("train")
    assert np.array_equal(np.asarray(again[7]["image"]), np.asarray(train[7]["image"]))
    assert not np.array_equal(np.asarray(val[7]["image"]), np.asarray(train[7]["image"]))


def test_load_source_selects_classes_by_name_or_index_and_caps():
    source = load_source(DataConfig(classes=["stripes", 1], max_images_per_class=7))
    assert source.classes == [1, 4] and source.class_names == SAMPLE_CLASSES
    assert source.counts() == {1: 7, 4: 7}
    images, rows, skipped = source.load_class(4)
    assert len(images) == 7 and skipped == 0 and all(im.mode == "RGB" for im in images)
    assert all(load_sample("train")[r]["label"] == 4 for r in rows)


def _png(mode, color, size=(8, 8)):
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize("mode, color, expected", [
    ("L", 128, (128, 128, 128)),
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
    ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
    ("LA", (0, 255), (0, 0, 0)),
    ("I;16", 65535, (255, 255, 255)),
])
def test_decode_converts_modes_to_rgb(mode, color, expected):
    image = decode_image(_png(mode, color))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == expected


def test_decode_palette_and_cmyk():
    palette = Image.new("P", (4, 4), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert decode_image({"bytes": buffer.getvalue()}).getpixel((0, 0)) == (70, 80, 90)
    cmyk = decode_image(_png("CMYK", (0, 0, 0, 0)))
    assert cmyk.mode == "RGB" and min(cmyk.getpixel((0, 0))) > 240


@pytest.fixture
def image_folder(tmp_path):
    """An image folder with 2 classes x 12 images, one of them corrupt."""
    for c, name in enumerate(["apple", "pear"]):
        folder = tmp_path / "folder" / name
        folder.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((16, 16, 3), 40 * c + i, np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "folder" / "pear" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path / "folder"


def test_corrupt_image_is_skipped_and_counted(image_folder):
    source = load_source(DataConfig(dataset=str(image_folder)))
    assert source.class_names == ["apple", "pear"] and source.counts() == {0: 12, 1: 13}
    images, rows, skipped = source.load_class(1)
    assert (len(images), len(rows), skipped) == (12, 12, 1)
    assert source.skipped == {1: 1}


def test_saved_dataset_with_string_labels_and_explicit_columns(tmp_path):
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(6)]
    ds = datasets.Dataset.from_dict({"picture": images, "kind": ["a", "b"] * 3},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "kind": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="no label column found"):
        load_source(DataConfig(dataset=str(tmp_path / "saved")))
    source = load_source(DataConfig(dataset=str(tmp_path / "saved"), label_column="kind"))
    assert source.image_column == "picture" and source.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="label column 'species' not in dataset"):
        load_source(DataConfig(dataset=str(tmp_path / "saved"), label_column="species"))


def test_bad_dataset_id_is_a_clear_error():
    with pytest.raises(ValueError, match="could not load dataset 'no-such-user/no-such-dataset'"):
        load_source(DataConfig(dataset="no-such-user/no-such-dataset"))


def test_bad_class_and_split_are_named():
    with pytest.raises(ValueError, match="class 'dragon' is not a label name"):
        load_source(DataConfig(classes=["dragon"]))
    with pytest.raises(ValueError, match="class index 9 out of range"):
        load_source(DataConfig(classes=[9]))
    with pytest.raises(ValueError, match="split 'test'"):
        load_source(DataConfig(split="test"))


@pytest.mark.parametrize("values, message", [
    ({"ipc": 0}, "`ipc` must be an integer >= 1, got 0"),
    ({"ipc": -3}, "`ipc` must be an integer >= 1, got -3"),
    ({"generation": {"strength": 1.5}}, "`generation.strength` must be in \\(0.0, 1.0\\], got 1.5"),
    ({"prototypes": {"contamination": 0.7}}, "`prototypes.contamination` must be in \\[0.0, 0.5\\), got 0.7"),
    ({"preset": "huge"}, "`preset` must be one of"),
    ({"generation": {"guidance": 3}}, "unknown keys \\['guidance'\\] in `generation`"),
    ({"data": {"too_few_images": "maybe"}}, "'error' or 'reduce', got 'maybe'"),
])
def test_config_errors_name_the_value(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=values)


def test_presets_and_yaml_file(tmp_path):
    assert load_config().generation.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert load_config().caption.model == "llava-hf/llava-1.5-7b-hf"
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nipc: 4\ngeneration:\n  guidance_scale: 8\n")
    config = load_config(path, {"ipc": 5})
    assert (config.ipc, config.generation.guidance_scale, config.generation.model) == (5, 8, "tiny://stable-diffusion")
    assert DistillConfig().generation.num_inference_steps == 50


@pytest.mark.parametrize("kind", ["sample", "folder"])
def test_streaming_reads_the_same_rows_and_stops_early(kind, image_folder):
    dataset = "sample" if kind == "sample" else str(image_folder)
    classes = ["triangle", "stripes"] if kind == "sample" else ["pear"]
    plain = load_source(DataConfig(dataset=dataset, classes=classes, max_images_per_class=5))
    streamed = load_source(DataConfig(dataset=dataset, classes=classes, max_images_per_class=5, streaming=True))
    assert streamed.indices == plain.indices and streamed.class_names == plain.class_names
    assert streamed.dataset.num_rows == sum(len(r) for r in plain.indices.values())  # nothing else was kept
    for label in plain.classes:
        a, rows_a, _ = plain.load_class(label)
        b, rows_b, _ = streamed.load_class(label)
        assert rows_a == rows_b and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

"""Loading sources: columns, classes, caps, image modes, corrupt files, and the errors users see."""

import io

import datasets
import numpy as np
import pytest
from PIL import Image

from vldd.configs.distill import DataConfig, DistillConfig, load_config
from vldd.data.sample import SAMPLE_CLASSES, load_sample
from vldd.data.sources import decode_image, load_source


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


# ---------------------------------------------------------------------------------------------------------------
# Layouts and splits: EXIF orientation, `valid`, and one-line errors for the layouts that used to mislead


def _rotated_jpeg(path):
    """A photo stored sideways as a camera does: 20 wide x 10 high, red left half, EXIF orientation 6 (the viewer
    turns it 90 degrees clockwise: 10 wide x 20 high, red on top)."""
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)


def test_exif_rotated_photo_is_loaded_upright(tmp_path):
    for name in ("phone", "other"):
        (tmp_path / "photos" / name).mkdir(parents=True)
    _rotated_jpeg(tmp_path / "photos" / "phone" / "0.jpg")
    Image.new("RGB", (10, 20), (0, 255, 0)).save(tmp_path / "photos" / "other" / "0.png")
    source = load_source(DataConfig(dataset=str(tmp_path / "photos")))
    (image,), _, _ = source.load_class(source.class_names.index("phone"))
    assert image.size == (10, 20)  # upright: taller than wide
    top, bottom = image.getpixel((5, 2)), image.getpixel((5, 17))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below
    data = (tmp_path / "photos" / "phone" / "0.jpg").read_bytes()
    assert decode_image({"bytes": data}).size == (10, 20)  # the one decode function evaluation and fine-tuning use
    assert Image.open(io.BytesIO(data)).size == (20, 10)  # as stored


def test_validation_split_named_valid_is_found_and_reported(tmp_path, caplog):
    from vldd.jobs.evaluate.data import open_validation

    datasets.DatasetDict({"train": load_sample("train"), "valid": load_sample("validation")}).save_to_disk(
        str(tmp_path / "tiny"))  # the split names of zh-plus/tiny-imagenet
    with caplog.at_level("WARNING", logger="vldd.jobs.evaluate.data"):
        dataset, split = open_validation(str(tmp_path / "tiny"))
    assert split == "valid" and dataset.num_rows == 50
    assert f"real dataset {str(tmp_path / 'tiny')!r} has no 'validation' split; testing on its 'valid' split " \
           "instead" in caplog.text


def _write(folder, files):
    for name in files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            Image.new("RGB", (8, 8), (len(name) * 10, 0, 0)).save(path)
        else:
            path.write_text("not an image")
    return folder


def test_one_class_sources_are_refused(tmp_path):
    folder = _write(tmp_path / "cats", ["train/cat/0.png", "train/cat/1.png"])
    with pytest.raises(ValueError) as err:
        load_source(DataConfig(dataset=str(folder)))
    assert str(err.value) == (f"image folder {str(folder)!r} has a single class ('cat', 2 images); expected one "
                              "sub-folder per class and at least 2 classes")
    flat = _write(tmp_path / "flat", ["a.png", "b.png"])  # images without class folders
    with pytest.raises(ValueError, match="has 2 images but no class sub-folders; expected one sub-folder per class"):
        load_source(DataConfig(dataset=str(flat)))
    saved = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "label": [0]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat"])}))
    saved.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"has 1 class \('cat'\); distillation needs a source with at least 2 classes"):
        load_source(DataConfig(dataset=str(tmp_path / "saved")))


def test_class_folders_one_level_too_deep_are_named(tmp_path):
    folder = _write(tmp_path / "tiny", ["train/n01443537/images/0.png", "train/n01443537/n01443537_boxes.txt",
                                        "train/n01629819/images/0.png"])  # Tiny-ImageNet's zip, as unpacked
    with pytest.raises(ValueError) as err:
        load_source(DataConfig(dataset=str(folder)))
    assert str(err.value) == (
        f"every image of image folder {str(folder)!r} sits in a folder named 'images' (e.g. 'n01443537/images'), and "
        "an image's class is the name of its own folder; move each class's images up into its class folder")


def test_a_run_directory_is_not_a_source(tmp_path):
    run = tmp_path / "runs" / "x"
    (run / "dataset").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ValueError) as err:
        load_source(DataConfig(dataset=str(run)))
    assert str(err.value) == (
        f"{str(run)!r} is a vldd run directory, not a source dataset; its distilled images are the saved dataset "
        f"{str(run / 'dataset')!r} (give that path to use them as a source; `vldd evaluate {run}` evaluates them)")


def test_a_folder_without_images_is_named(tmp_path):
    folder = _write(tmp_path / "docs", ["train/a/readme.txt", "train/b/notes.md"])
    with pytest.raises(ValueError) as err:
        load_source(DataConfig(dataset=str(folder)))
    assert str(err.value) == (f"image folder {str(folder)!r} holds no images (found 2 other files, e.g. 'readme.txt'); "
                              "expected one sub-folder per class holding .png/.jpg/... images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images \\(found 0 other files\\)"):
        load_source(DataConfig(dataset=str(tmp_path / "empty")))


def test_empty_class_folders_and_skipped_files_are_listed_once_per_class(tmp_path, caplog):
    folder = _write(tmp_path / "mixed", ["cat/0.png", "cat/1.png", "cat/notes.txt", "dog/0.png", "dog/x.json",
                                         "dog/y.json", "dog/z.json", "dog/w.json", "metadata.csv"])
    (folder / "emu").mkdir()
    (folder / "yak").mkdir()
    (folder / "metadata.csv").unlink()  # datasets reads metadata files itself: never listed as skipped
    with caplog.at_level("WARNING", logger="vldd.data.sources"):
        source = load_source(DataConfig(dataset=str(folder)))
    assert source.class_names == ["cat", "dog"]
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image folder")]
    assert warnings == [
        f"image folder {str(folder)!r}: 2 empty class folder(s) left out (not classes of this source): emu, yak",
        f"image folder {str(folder)!r}: skipped 5 file(s) that are not images, per class: cat: 1 (notes.txt); dog: 4 "
        "(w.json, x.json, y.json, ...)"]


def test_an_output_that_cannot_be_created_is_named(tmp_path, capsys):
    from vldd.cli import commands as cli
    from vldd.core.runs import check_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as err:
        check_output_dir(tmp_path / "file" / "run")
    assert str(err.value) == (f"cannot create run directory {str(tmp_path / 'file' / 'run')!r}: "
                              f"{str(tmp_path / 'file')!r} is a file, not a directory")
    assert cli.main(["distill", "--preset", "tiny", "--output", str(tmp_path / "file" / "run")]) == 2
    assert capsys.readouterr().err == f"vldd: error: {err.value}\n"
    assert cli.main(["evaluate", "--distilled", "x", "--output", str(tmp_path / "file" / "sub" / "r.json")]) == 2
    assert capsys.readouterr().err == (f"vldd: error: cannot create directory of --output "
                                       f"{str(tmp_path / 'file' / 'sub')!r}: {str(tmp_path / 'file')!r} is a file, "
                                       "not a directory\n")

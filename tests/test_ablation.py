"""`vldd ablate`: variant names, stage sharing across run directories, and the tiny ablation end to end (captions
once, prototypes once per prototype setting, baselines once, killed and resumed to the same table, pushed with its
sibling configurations on the card)."""

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import wait_for

from vldd.cli.commands import main
from vldd.core.runs import StageDir, read_json, read_manifest, write_json
from vldd.jobs import ablate as ablation
from vldd.jobs.ablate import Variant, ablate, config_name, custom_variant, parse_variant
from vldd.jobs.evaluate import run as evaluation
from vldd.stages import caption as captioning
from vldd.stages import prototypes, text_prototypes

# The tiny preset on 2 sample classes x IPC 2; students at 1/8 width on 24 px for 2 epochs, one repeat.
VARIANTS = ["base", "no-text-prototypes", "no-lof", "tpk=5"]
CUSTOM = ["strength05", "generation.strength=0.5"]  # a generation-only variant: text prototypes shared too
DISTILL_FLAGS = ["--preset", "tiny", "--ipc", "2", "--data.classes", "circle,stripes",
                 "--data.max_images_per_class", "12", "--generation.num_inference_steps", "4"]
EVAL_FLAGS = ["--eval.epochs", "2", "--eval.image_size", "24", "--eval.student_width", "0.125",
              "--eval.repeats", "1", "--eval.batch_size", "8", "--eval.device", "cpu"]
NAMES = ["base", "no-text-prototypes", "no-lof", "tpk5", "strength05"]


def test_variant_names_and_settings():
    assert parse_variant("base") == Variant("base") and parse_variant("paper").overrides == {}
    assert parse_variant("no-text-prototypes").overrides == {"text": {"mode": "class_name"}}
    assert parse_variant("no-lof").overrides == {"prototypes": {"contamination": 0.0}}
    assert parse_variant("no-finetune").overrides == {"finetune": {"enabled": False}}
    assert parse_variant("tpk=20") == Variant("tpk20", {"text": {"top_k": 20}})
    assert parse_variant("threshold=0.5") == Variant("threshold0.5", {"text": {"common_threshold": 0.5}})
    assert parse_variant("no-lof").changes == "prototypes.contamination=0.0" and Variant("base").changes == "as given"
    custom = custom_variant("mix", ["generation.strength=0.5", "finetune.enabled=false", "text.fallback=class_name"])
    assert custom.overrides == {"generation": {"strength": 0.5}, "finetune": {"enabled": False},
                                "text": {"fallback": "class_name"}}
    with pytest.raises(ValueError, match="unknown variant 'no-clip'; expected one of"):
        parse_variant("no-clip")
    with pytest.raises(ValueError, match="variant 'tpk=x': tpk takes an integer, got 'x'"):
        parse_variant("tpk=x")
    with pytest.raises(ValueError, match="setting 'strength' must be KEY=VALUE"):
        custom_variant("s", ["strength"])
    with pytest.raises(ValueError, match="variant name 'Big Name' must be lowercase"):
        custom_variant("Big Name", ["ipc=3"])
    assert config_name(10, 0, "base") == "ipc10-seed0" and config_name(10, 1, "no-lof") == "ipc10-seed1-no-lof"


def test_bad_ablations_fail_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"`variants` must be distinct and at least one, got \['base', 'base'\]"):
        ablate(["base", "base"], tmp_path)
    with pytest.raises(ValueError, match="give the distillation as given once"):
        ablate(["base", "paper"], tmp_path)
    with pytest.raises(ValueError, match="`seed` is set by the ablation"):
        ablate(["base"], tmp_path, distill_overrides={"seed": 3})
    with pytest.raises(ValueError, match=r"\['baselines'\] are set by the ablation"):
        ablate(["base"], tmp_path, eval_overrides={"baselines": ["random"]})
    with pytest.raises(ValueError, match="every variant must keep the IPC"):
        ablate(["base", custom_variant("ipc3", ["ipc=3"])], tmp_path, distill_overrides={"preset": "tiny"})
    with pytest.raises(ValueError, match="`text.mode` must be 'prototypes' or 'class_name', got 'none'"):
        ablate([custom_variant("x", ["text.mode=none"])], tmp_path, distill_overrides={"preset": "tiny"})
    assert not any(tmp_path.iterdir())  # nothing was written
    assert main(["ablate", "--output", str(tmp_path / "o"), "--variants", "base", "no-clip"]) == 2
    assert "unknown variant 'no-clip'" in capsys.readouterr().err
    assert main(["ablate", "--output", str(tmp_path / "o")]) == 2
    assert "give the variants to compare" in capsys.readouterr().err


def test_share_stage_takes_only_what_matches_and_is_missing(tmp_path):
    from vldd.jobs.distill import share_stage

    donor = StageDir(tmp_path / "a", "text", "fp1")
    for label in (0, 1):
        write_json(donor.file(label, ".json"), {"label": label})
    (donor.path / "000002").mkdir()  # a per-class folder (as the generate stage writes)
    (donor.path / "000002" / "0000.png").write_bytes(b"png")
    mine = StageDir(tmp_path / "b", "text", "fp1")
    write_json(mine.file(0, ".json"), {"label": "mine"})
    assert share_stage(mine, donor.path) == 2  # class 1 and the folder; class 0 is kept
    assert read_json(mine.file(0, ".json")) == {"label": "mine"} and read_json(mine.file(1, ".json")) == {"label": 1}
    assert os.path.samefile(mine.file(1, ".json"), donor.file(1, ".json"))  # hard-linked, not copied
    assert (mine.path / "000002" / "0000.png").read_bytes() == b"png"
    other = StageDir(tmp_path / "c", "text", "fp2")  # another fingerprint: nothing taken
    assert share_stage(other, donor.path) == 0 and not other.has(1, ".json")
    # a file rewritten later in one run (atomically: a new file) leaves the other's copy as it was
    write_json(donor.file(1, ".json"), {"label": "changed"})
    assert read_json(mine.file(1, ".json")) == {"label": 1}


def test_share_stage_takes_a_finished_finetune_whole(tmp_path):
    from vldd.jobs.distill import share_stage
    from vldd.jobs.finetune import SUMMARY

    donor = StageDir(tmp_path / "a", "finetune", "fp", tmp_path / "a" / "finetune" / "seed0")
    (donor.path / "unet").mkdir()
    (donor.path / "unet" / "weights.bin").write_bytes(b"w")
    mine = StageDir(tmp_path / "b", "finetune", "fp", tmp_path / "b" / "finetune" / "seed0")
    (mine.path / "checkpoint-1").mkdir()  # an unfinished fine-tuning of its own
    assert share_stage(mine, donor.path) == 0  # the donor has not finished either
    write_json(donor.path / SUMMARY, {"global_step": 2})
    assert share_stage(mine, donor.path) == 1
    assert (mine.path / "unet" / "weights.bin").read_bytes() == b"w" and not (mine.path / "checkpoint-1").exists()
    # the model's record comes with it: its fingerprint and what computed it (the donor's `computed_with`)
    assert read_json(mine.path / "fingerprint.json") == read_json(donor.path / "fingerprint.json")
    assert read_json(mine.path / "fingerprint.json")["fingerprint"] == "fp"


def _library_args():
    overrides = {"preset": "tiny", "ipc": 2, "data": {"classes": ["circle", "stripes"], "max_images_per_class": 12},
                 "generation": {"num_inference_steps": 4}}
    evals = {"epochs": 2, "image_size": 24, "student_width": 0.125, "repeats": 1, "batch_size": 8, "device": "cpu"}
    return overrides, evals


class Counter:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def ablated(tiny_cache, tmp_path_factory):
    """The tiny ablation of five variants, in-process, counting the captioner, k-means, text and student calls."""
    out = tmp_path_factory.mktemp("ablate") / "sample"
    counters = {"captions": Counter(captioning.caption_images), "prototypes": Counter(prototypes.build_prototypes),
                "text": Counter(text_prototypes.select_text_prototypes),
                "trainings": Counter(evaluation.train_repeat)}
    overrides, evals = _library_args()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(captioning, "caption_images", counters["captions"])
        patch.setattr(prototypes, "build_prototypes", counters["prototypes"])
        patch.setattr(text_prototypes, "select_text_prototypes", counters["text"])
        patch.setattr(evaluation, "train_repeat", counters["trainings"])
        result = ablate([*VARIANTS, custom_variant(CUSTOM[0], CUSTOM[1:])], out, distill_overrides=overrides,
                        eval_overrides=evals, cache_dir=tiny_cache)
    return result, {name: c.calls for name, c in counters.items()}, out


@pytest.mark.slow  # five tiny distillations and seven tiny trainings
def test_ablation_shares_stages_and_trains_baselines_once(ablated):
    result, calls, out = ablated
    # Captions once: one captioner call per class (12 images fit one batch), not one per variant.
    assert calls["captions"] == 2
    # Image prototypes once per prototype setting: base (shared by 3 text/generation variants) and no-lof.
    assert calls["prototypes"] == 2 * 2
    # Text prototypes: base (shared by strength05), no-lof, tpk5; no-text-prototypes scores no description.
    assert calls["text"] == 3 * 2
    # Five variants + the random and full baselines, one repeat each: the baselines trained once, not per variant.
    assert calls["trainings"] == 5 + 2
    work = {name: out / name / "seed0" / "work" for name in NAMES}
    assert os.path.samefile(work["base"] / "caption" / "000000.json", work["no-lof"] / "caption" / "000000.json")
    assert os.path.samefile(work["base"] / "prototypes" / "000000.pt", work["tpk5"] / "prototypes" / "000000.pt")
    assert not os.path.samefile(work["base"] / "prototypes" / "000000.pt",
                                work["no-lof"] / "prototypes" / "000000.pt")
    assert os.path.samefile(work["base"] / "text" / "000000.json", work["strength05"] / "text" / "000000.json")
    # no-text-prototypes generated from the class names; no-lof kept every image in its clusters
    import datasets

    plain = datasets.load_from_disk(str(out / "no-text-prototypes" / "seed0" / "dataset"))
    assert plain["prompt"] == plain["prompt_class_name"] and plain.num_rows == 4
    base = datasets.load_from_disk(str(out / "base" / "seed0" / "dataset"))
    assert base["prompt"] != base["prompt_class_name"]
    counts = {name: read_manifest(out / name / "seed0")["counts"]["outliers_per_class"] for name in ("base", "no-lof")}
    assert all(n > 0 for n in counts["base"].values()) and all(n == 0 for n in counts["no-lof"].values())


@pytest.mark.slow
def test_one_table_with_every_variant_and_both_baselines(ablated):
    result, _, out = ablated
    report = json.loads((out / "ablation.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == [*NAMES, "random real", "full real"]
    assert [r.name for r in result.rows] == names and report["format"] == "vldd.ablation/1"
    random_real, full_real = result.rows[-2:]
    for row, name in zip(result.rows[:5], NAMES):
        scores = json.loads((out / "evaluation" / f"{name}.json").read_text())
        assert row.best_mean == scores["results"]["distilled"]["best_mean"]
        assert scores["baselines"] == ["random", "full"]
        # every variant is scored against the same baseline trainings
        assert scores["results"]["random"]["best_mean"] == random_real.best_mean
        assert row.hlr_mean == pytest.approx(full_real.best_mean - row.best_mean)
        assert row.ior_mean == pytest.approx(row.best_mean - random_real.best_mean)
        assert 0.0 <= row.lrs_mean <= 1.0
        assert row.config_names == [config_name(2, 0, name)]
    assert result.rows[1].changes == "text.mode=class_name" and result.rows[4].changes == "generation.strength=0.5"
    table = (out / "ablation.md").read_text()
    assert "| Variant | Changes | Best top-1 | Final top-1 | HLR ↓ | IOR ↑ | LRS ↑ |" in table
    assert table.count("\n| ") == 1 + 7 and "tiny preset" in table
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    manifest = read_manifest(out / "no-lof" / "seed0")
    assert manifest["ablation"]["config_name"] == "ipc2-seed0-no-lof"
    assert [v["name"] for v in manifest["ablation"]["variants"]] == names


@pytest.mark.slow  # a subprocess run of the CLI, killed, then resumed
def test_killed_and_rerun_resumes_to_the_same_table(ablated, tiny_cache, tmp_path, monkeypatch, capsys):
    reference = json.loads((ablated[2] / "ablation.json").read_text())
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "vldd.cli.commands", "ablate", "--output", str(out), "--variants", *VARIANTS,
               "--set", *CUSTOM, "--cache-dir", str(tiny_cache), "--quiet", *DISTILL_FLAGS, *EVAL_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the first variant is finished once the second one's run directory starts
    reached = wait_for(lambda: (out / "no-text-prototypes" / "seed0" / "config.yaml").is_file(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached, "the ablation ended before its second variant started"
    assert (out / "base" / "seed0" / "dataset").is_dir() and not (out / "ablation.json").exists()
    captions = Counter(captioning.caption_images)
    monkeypatch.setattr(captioning, "caption_images", captions)
    assert main(["ablate", "--output", str(out), "--variants", *VARIANTS, "--set", *CUSTOM,
                 "--cache-dir", str(tiny_cache), "--quiet", *DISTILL_FLAGS, *EVAL_FLAGS]) == 0
    assert captions.calls == 0  # the killed run's captions were reused
    resumed = json.loads((out / "ablation.json").read_text())
    assert resumed["rows"] == reference["rows"]
    printed = capsys.readouterr().out
    assert "| no-lof | prototypes.contamination=0.0 |" in printed and f"table: {out / 'ablation.md'}" in printed


@pytest.mark.slow  # two processes under accelerate launch
def test_two_processes_under_accelerate_give_the_same_rows(ablated, tiny_cache, tmp_path):
    reference = {row["name"]: row for row in json.loads((ablated[2] / "ablation.json").read_text())["rows"]}
    out = tmp_path / "sharded"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli.commands",
               "ablate", "--output", str(out), "--variants", "base", "no-lof", "--cache-dir", str(tiny_cache),
               "--quiet", "--device", "cpu", *DISTILL_FLAGS, *EVAL_FLAGS]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["base", "no-lof", "random real", "full real"]
    assert rows == [reference[r["name"]] for r in rows]
    assert read_manifest(out / "no-lof" / "seed0")["processes"] == 2


@pytest.mark.slow
def test_pushed_variants_link_their_siblings_on_the_card(ablated, hub_server):
    from huggingface_hub import DatasetCard

    from vldd.hub import push as hub

    _, _, out = ablated
    first = hub.push_distilled(out / "base" / "seed0", "ablation", token=hub_server.token)
    second = hub.push_distilled(out / "no-lof" / "seed0", "ablation", token=hub_server.token)
    assert (first.config_name, second.config_name) == ("ipc2-seed0", "ipc2-seed0-no-lof")
    card = DatasetCard(hub_server.server.files(second.repo_id)["README.md"].decode())
    text = card.text
    assert "## What each part is worth (ablation)" in text and text.count("## What each part is worth") == 1
    viewer = f"https://huggingface.co/datasets/{second.repo_id}/viewer"
    assert f"| no-lof | prototypes.contamination=0.0 | [`ipc2-seed0-no-lof`]({viewer}/ipc2-seed0-no-lof) |" in text
    assert f"| base | as given | [`ipc2-seed0`]({viewer}/ipc2-seed0) |" in text
    assert "| tpk5 | text.top_k=5 | `ipc2-seed0-tpk5` (not pushed) |" in text  # evaluated, not pushed
    assert "| random real |" in text and "| full real |" in text
    assert "- **Ablation variant:** `no-lof` (prototypes.contamination=0.0)" in text
    # each pushed run's own evaluation carries HLR / IOR / LRS
    assert text.count("| hard | resnetap10 | this dataset |") == 2 and "HLR " in text and "IOR " in text


def test_ablation_module_lists_the_named_variants():
    assert set(ablation.VARIANTS) == {"no-text-prototypes", "no-lof", "no-finetune"}

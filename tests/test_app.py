"""The Gradio app: launched in-process and driven through gradio_client's named endpoints on the tiny preset.

Also the pieces it is made of (the modules of vldd.app), the Space's files (README front matter, requirements.txt,
spaces_config.yaml) and the Space's limits.
"""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import gradio
import pytest
import yaml
from helpers import image_folder
from PIL import Image

from vldd.app import controls, evaluation, publish, runtime, sources, space_files, ui, uploads, views
from vldd.app import gpu as space_gpu
from vldd.app.sessions import SessionBusy, Sessions, public_text
from vldd.app.settings import load_space_config
from vldd.configs.base import merge

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]
# Small and fast: 2 classes x IPC 2 from 12 source images each, 10 x 0.7 = 7 denoising steps.
TEST_SETTINGS = {"defaults": {"ipc": 2, "images_per_class": 12, "steps": 10, "num_classes": 2},
                 "default_preset": {"cpu": "tiny", "gpu": "tiny"}, "limits": {"max_classes": 4}}
RUN = {"dataset": "sample", "preset": "tiny", "ipc": 2, "images_per_class": 12, "steps": 10}


def launch_app(tiny_cache, root: Path, overrides: dict | None = None, *, share: bool = False):
    """Builds the app with test settings and serves it in this process; returns (demo, settings).

    `share`: the settings `python app.py --share` gets (served on 127.0.0.1 all the same: no tunnel in tests).
    """
    space = load_space_config(ROOT / "spaces_config.yaml", merge(TEST_SETTINGS, overrides or {}))
    app_settings = runtime.AppSettings(space=space, root=root, cache_dir=str(tiny_cache), on_space=False,
                                       oauth="off", has_gpu=False,
                                       local_paths=runtime.local_paths_allowed(False, None, share))
    demo = ui.build_demo(app_settings)
    demo.launch(prevent_thread_lock=True, quiet=True, **ui.launch_kwargs(app_settings))
    return demo, app_settings


@pytest.fixture(scope="module")
def served(tiny_cache, tmp_path_factory):
    demo, app_settings = launch_app(tiny_cache, tmp_path_factory.mktemp("sessions"))
    yield SimpleNamespace(demo=demo, settings=app_settings, url=demo.local_url)
    demo.close()


@pytest.fixture
def space():
    return load_space_config(ROOT / "spaces_config.yaml", TEST_SETTINGS)


def _client(url: str, **kwargs):
    from gradio_client import Client

    return Client(url, verbose=False, **kwargs)


# --- the whole pipeline through gradio_client ------------------------------------------------------------------------

def test_tiny_pipeline_through_named_endpoints_then_push(served, hub_server, caplog):
    from gradio_client.exceptions import AppError

    client = _client(served.url)

    # Dataset: the embedded sample, the first two classes selected, a preview per class.
    update, counts, preview, message = client.predict(dataset="sample", classes=[], images_per_class=12,
                                                      api_name="/load_dataset")
    assert update["value"] == CLASSES
    assert [c[0] for c in update["choices"]] == ["circle", "square", "triangle", "cross", "stripes"]
    assert [row[:3] for row in counts["data"][:2]] == [["circle", 30, 12], ["square", 30, 12]]
    assert len(preview) == 2 * 6 and {item["caption"] for item in preview} == set(CLASSES)
    assert "5 classes, 150 images" in message

    # Captions: a table with thumbnails and a CSV with every caption.
    status, table, csv_path = client.predict(**RUN, classes=CLASSES, api_name="/caption")
    assert "24 captions" in status and table.count("<img src=\"data:image/jpeg;base64,") == 24
    rows = list(csv.DictReader(Path(csv_path).open(newline="")))  # a caption may hold a newline: parse, don't count lines
    assert len(rows) == 24 and set(rows[0]) == {"source_row", "label", "class_name", "caption"}

    # Prototypes: cluster table, decoded prototypes, chosen descriptions with their top words marked.
    status, summary, clusters, images, described = client.predict(**RUN, classes=CLASSES, api_name="/prototypes")
    assert [row[:2] for row in clusters["data"]] == [["circle", 0], ["circle", 1], ["square", 0], ["square", 1]]
    for name in CLASSES:
        rows = [row for row in clusters["data"] if row[0] == name]
        assert sum(row[2] for row in rows) + rows[0][3] == 12  # cluster sizes + outliers = source images
    assert len(images) == 4 and "outliers dropped" in summary
    assert {d["class_or_confidence"] for d in described} <= {"cluster", "top word", None}
    assert sum(d["class_or_confidence"] == "cluster" for d in described) == 4

    # Generate: IPC x classes images, grouped by class, each with its prompt.
    status, gallery, preview_path = client.predict(**RUN, classes=CLASSES, seed=0, strength=0.7, guidance_scale=10.0,
                                                   api_name="/generate")
    assert len(gallery) == 2 * 2 and "Distilled 4 images" in status
    assert [item["caption"].split(" #")[0] for item in gallery] == ["circle", "circle", "square", "square"]
    assert all(Image.open(item["image"]).size == (64, 64) for item in gallery)
    assert Image.open(preview_path).size == (2 * 96, 2 * 96)

    # Over a limit: the message, not a crash; the app keeps serving.
    with pytest.raises(AppError, match=r"IPC 50 asked for; this Space allows at most 10"):
        client.predict(**{**RUN, "ipc": 50}, classes=CLASSES, api_name="/generate")
    with pytest.raises(AppError, match=r"5 classes selected; this Space allows at most 4"):
        client.predict(**RUN, classes=["circle", "square", "triangle", "cross", "stripes"], api_name="/caption")

    # Evaluate: a quick student, an accuracy-vs-epoch plot.
    summary, plot = client.predict(epochs=2, random_baseline=True, api_name="/evaluate")
    assert "distilled" in summary and "random" in summary and Image.open(plot).size[0] > 100
    assert "IOR " in summary and "HLR" not in summary  # DD-Ranking's IOR needs the random baseline only

    # Publish without a token: a clear message, nothing pushed.
    message, snippet = client.predict(repo_id="", private=False, api_name="/push")
    assert "Sign in with Hugging Face first" in message and snippet == ""
    assert not hub_server.server.state.repos or all("vldd" not in r for _, r in hub_server.server.state.repos)

    # Publish with the visitor's token (what "Sign in with Hugging Face" gives the handler).
    client.oauth_token = hub_server.token
    suggested = client.predict(dataset="sample", upload=None, ipc=2, api_name="/suggest_repo")
    assert suggested == "sample-vldd-ipc2"
    message, snippet = client.predict(repo_id=suggested, private=False, api_name="/push")
    assert "Published 4 images to [tester/sample-vldd-ipc2]" in message
    assert 'load_dataset("tester/sample-vldd-ipc2", "ipc2-seed0", split="train")' in snippet
    import datasets

    pushed = datasets.load_dataset("tester/sample-vldd-ipc2", "ipc2-seed0", split="train")
    assert pushed.num_rows == 4 and pushed.features["label"].names[:2] == CLASSES

    # The handler itself, with a hand-built gr.OAuthToken, to a private repository.
    token = gradio.OAuthToken(token=hub_server.token, scope="openid profile contribute-repos",
                              expires_at=int(time.time()) + 3600)
    message, _ = served.demo.handlers.publish("tester/tiny-private", True,
                                              SimpleNamespace(session_hash=client.session_hash), token)
    assert "Published 4 images to [tester/tiny-private]" in message and "(private" in message
    assert hub_server.token not in caplog.text + message + snippet


def test_two_sessions_get_their_own_results(served):
    clients = {"circle": _client(served.url), "triangle": _client(served.url)}
    jobs = {name: client.submit(**RUN, classes=[name], api_name="/generate") for name, client in clients.items()}
    results = {name: job.result(timeout=300) for name, job in jobs.items()}
    for name, (_, gallery, _) in results.items():
        assert len(gallery) == 2 and all(item["caption"].startswith(f"{name} #") for item in gallery)
    paths = {name: {Path(item["image"]).read_bytes() for item in gallery} for name, (_, gallery, _) in results.items()}
    assert not paths["circle"] & paths["triangle"]
    sessions = served.settings.sessions
    runs = [sessions.path(client.session_hash) / "run" for client in clients.values()]
    assert runs[0] != runs[1] and all((run / "dataset").is_dir() for run in runs)


def test_every_event_is_named_and_gpu_events_share_one_limit(served):
    named = {fn.api_name for fn in served.demo.fns.values() if fn.api_visibility == "public"}
    assert named == {"load_dataset", "caption", "prototypes", "generate", "evaluate", "push", "random_seed", "stop",
                     "suggest_repo", "suggest_repo_on_load"}
    gpu = {fn.api_name: (fn.concurrency_limit, fn.concurrency_id) for fn in served.demo.fns.values()
           if fn.api_name in ("caption", "prototypes", "generate", "evaluate")}
    assert set(gpu.values()) == {(1, "gpu")}  # one local GPU (spaces_config.yaml queue.local)
    stop = [d for d in served.demo.config["dependencies"] if d["cancels"]]
    by_name = {fn.api_name: i for i, fn in served.demo.fns.items()}
    assert set(stop[0]["cancels"]) == {by_name[n] for n in gpu}
    assert served.demo._queue.max_size == served.settings.space.queue["max_size"]


def test_stopping_between_classes_keeps_what_finished_and_resumes(served, tmp_path):
    from vldd.jobs.distill import run_fingerprints

    config = controls.run_config(served.settings.space, tmp_path / "run", classes=CLASSES, **RUN)
    source = sources.open_source(config)
    fingerprints = run_fingerprints(config, source, served.settings.cache_dir)
    calls = []

    def gpu_call(job):
        calls.append((job.source.classes, job.config.data.classes, job.seconds))
        return space_gpu.run_class(job, served.settings.models)

    def run():
        return space_gpu.run_classes(config, source, ("caption",), fingerprints=fingerprints, seconds=7,
                                     placement=("cpu", "float32"), gpu_call=gpu_call)

    updates = run()
    assert next(updates).done == 0
    assert next(updates).message.endswith("1/2 classes done (circle)")
    updates.close()  # what Gradio does to a generator when the Stop button cancels the event
    done = sorted(p.name for p in (tmp_path / "run" / "work" / "caption").glob("*.json") if p.stem.isdigit())
    assert done == ["000000.json"] and calls == [([0], [0], 7)]  # one call per class, for that class only
    assert space_gpu.pending(config, source, ("caption",), fingerprints) == [1]
    assert [u.message.split(": ", 1)[1] for u in run()][1:] == ["1/2 classes (circle: already done)",
                                                                "2/2 classes done (square)"]
    assert calls[1:] == [([1], [1], 7)]  # the resumed run called the GPU for the missing class only
    assert "Done: caption." in space_gpu.finish_run(config, source, ("caption",), fingerprints)
    # Resumed through the fingerprint chain, as `vldd distill` resumes: no marker files of the app's own.
    assert not (tmp_path / "run" / "app-done").exists()
    assert space_gpu.pending(config, source, ("caption",), fingerprints) == []
    changed = controls.run_config(served.settings.space, tmp_path / "run", classes=CLASSES, **{**RUN, "seed": 1})
    # another seed: other caption fingerprints, so both classes are to do again
    assert space_gpu.pending(changed, source, ("caption",), run_fingerprints(changed, source,
                                                                            served.settings.cache_dir)) == [0, 1]


def test_a_run_reads_the_vae_weights_once_whatever_its_number_of_classes(served, monkeypatch):
    from vldd.jobs import distill as job

    read = []
    real = job.vae_fingerprint
    monkeypatch.setattr(job, "vae_fingerprint", lambda *args, **kwargs: read.append(args) or real(*args, **kwargs))
    status, *_ = _client(served.url).predict(**RUN, classes=CLASSES, api_name="/prototypes")
    assert "Done: caption → prototypes → text prototypes." in status
    assert len(read) == 1  # not once per class's call plus once for the outputs


# --- pieces ----------------------------------------------------------------------------------------------------------

def test_limits_are_enforced_with_a_message(space):
    ok = controls.run_config(space, "/unused", dataset="sample", classes=CLASSES, preset="tiny", ipc=10,
                             images_per_class=50)
    assert ok.ipc == 10 and ok.data.max_images_per_class == 50
    cases = {"ipc": (11, "IPC 11 asked for; this Space allows at most 10"),
             "images_per_class": (51, "51 source images per class asked for; this Space uses at most 50"),
             "steps": (101, "101 inference steps asked for; this Space allows at most 100")}
    for key, (value, message) in cases.items():
        values = {"dataset": "sample", "classes": CLASSES, "preset": "tiny", "ipc": 2, key: value}
        with pytest.raises(space_gpu.LimitError, match=message):
            controls.run_config(space, "/unused", **values)
    with pytest.raises(space_gpu.LimitError, match="5 classes selected; this Space allows at most 4"):
        controls.run_config(space, "/unused", dataset="sample", classes=["a", "b", "c", "d", "e"], preset="tiny",
                            ipc=1)
    with pytest.raises(ValueError, match="choose at least one class"):
        controls.run_config(space, "/unused", dataset="sample", classes=[], preset="tiny", ipc=1)
    with pytest.raises(ValueError, match="`preset` must be one of"):
        controls.run_config(space, "/unused", dataset="sample", classes=CLASSES, preset="nope", ipc=1)


def test_gpu_estimate_follows_classes_ipc_and_steps(space):
    s = space.presets["paper"].gpu_seconds

    def config(**changes):
        values = {"dataset": "sample", "classes": CLASSES, "preset": "paper", "ipc": 10, "images_per_class": 30,
                  "steps": 50, **changes}
        return controls.run_config(space, "/unused", **values)

    def seconds(**changes):
        return controls.estimate_run_seconds(config(**changes), controls.stages_of("generate"), s)

    base = seconds()
    assert seconds(classes=CLASSES * 2) > base and seconds(ipc=5) < base and seconds(steps=100) > base
    generate_only = controls.estimate_run_seconds(config(captions_from="user/captions"), ("generate",), s)
    assert generate_only == int(s["load"] + 2 * 10 * 35 * s["step"] + 0.999)
    one = controls.class_seconds(config(), controls.stages_of("generate"), s)
    assert one == int(s["load"] + 30 * s["caption"] + (30 + 10) * s["encode"] + 10 * 35 * s["step"] + 0.999)


def test_sessions_are_separate_and_cleaned_up(tmp_path):
    sessions = Sessions(tmp_path, ttl_hours=1)
    a, b = sessions.run_dir("session-a"), sessions.run_dir("session-b")
    assert a != b and a.is_dir() and b.is_dir() and "session-a" not in str(a)
    with pytest.raises(ValueError, match="no session id"):
        sessions.run_dir(None)
    old = sessions.path("session-b")
    stamp = time.time() - 2 * 3600
    os.utime(old, (stamp, stamp))
    sessions.run_dir("session-a")  # any use prunes sessions idle past the TTL
    assert not old.exists() and a.is_dir()
    sessions.close("session-a")
    assert not sessions.path("session-a").exists()


def test_local_paths_only_where_allowed(tmp_path):
    kwargs = {"upload": None, "upload_dir": tmp_path / "uploads", "limits": uploads.UploadLimits()}
    assert sources.resolve_dataset("frgfm/imagenette", allow_local_paths=False, **kwargs) == "frgfm/imagenette"
    assert sources.resolve_dataset(str(tmp_path), allow_local_paths=True, **kwargs) == str(tmp_path)
    with pytest.raises(ValueError, match="is a local path, and this app reads only"):
        sources.resolve_dataset(str(tmp_path), allow_local_paths=False, **kwargs)
    sources.check_captions_source("user/imagenette-vldd-captions", allow_local_paths=False)
    sources.check_captions_source(str(tmp_path), allow_local_paths=True)
    with pytest.raises(ValueError, match="name a local path; this app reads captions from Hub datasets only"):
        sources.check_captions_source(str(tmp_path), allow_local_paths=False)


def test_top_words_are_highlighted_as_the_score_counts_them():
    segments = views.highlight("A red ring with a thin red edge.", [["red", 3], ["edge", 1], ["blue", 2]])
    assert segments == [("A ", None), ("red", "top word"), (" ring with a thin ", None), ("red", "top word"),
                        (" ", None), ("edge", "top word"), (".", None)]
    assert views.highlight("nothing here", [["red", 1]]) == [("nothing here", None)]


def test_push_token_never_stands_in_for_the_space_owner(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_machine_token")
    assert publish.push_token(None, on_space=False) is None
    assert publish.push_token("hf_visitor", on_space=True) == "hf_visitor"
    assert publish.push_token(publish.GRADIO_MOCK_TOKEN, on_space=False) == "hf_machine_token"  # local mocked login
    assert publish.push_token(publish.GRADIO_MOCK_TOKEN, on_space=True) == publish.GRADIO_MOCK_TOKEN  # never the owner's
    assert publish.publish("/nonexistent", "x", False, None).message == publish.SIGN_IN_FIRST


def test_vldd_app_command_parses_the_apps_flags():
    from vldd.cli.commands import build_parser

    args = build_parser().parse_args(["app", "--port", "7999", "--allow-local-paths"])
    assert args.port == 7999 and args.allow_local_paths and args.func.__name__ == "_app"


# --- the Space's files -----------------------------------------------------------------------------------------------

def test_readme_front_matter_agrees_with_the_space_config_and_requirements(space):
    front = space_files.read_front_matter(ROOT / "README.md")
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__
    assert (ROOT / front["app_file"]).is_file()
    assert space_files.check_space_files(ROOT, space) == []
    assert str(front["python_version"]) == "3.12"  # diffusers>=0.42 needs Python >= 3.11; ZeroGPU offers 3.12
    assert front["hf_oauth_scopes"] == ["contribute-repos"]  # create and fill its own repos; never delete any


def test_a_preset_that_would_fine_tune_is_refused(tmp_path):
    space = load_space_config(ROOT / "spaces_config.yaml")
    assert all(spec.config().finetune.enabled is False for spec in space.presets.values())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"presets": {"paper": {"overrides": {
        "finetune": {"enabled": True}}}}}))
    with pytest.raises(ValueError, match="preset 'paper': the app does not fine-tune Stable Diffusion"):
        load_space_config(tmp_path / "space.yaml")


def test_each_setting_is_declared_once_and_a_space_file_changes_only_what_it_names(tmp_path):
    from vldd.app.settings import SETTINGS_FILE
    from vldd.configs.distill import GenerationConfig

    packaged = yaml.safe_load(SETTINGS_FILE.read_text())
    root = yaml.safe_load((ROOT / "spaces_config.yaml").read_text())
    assert "space" not in packaged and set(root) == {"space"}  # the Space's file: its deployment values only
    # The run controls' initial values are the config's defaults, declared there only: guidance scale is not in
    # the app's settings, and follows GenerationConfig.
    assert "guidance_scale" not in SETTINGS_FILE.read_text()
    assert controls.initial_controls(load_space_config(), "tiny")["guidance_scale"] == GenerationConfig.guidance_scale
    # A file on top (a Space's, or `vldd app --config`) changes the settings it names and nothing else.
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"limits": {"max_ipc": 3}, "defaults": {"ipc": 1,
                                                                                                 "seed": 7}}))
    base, changed = load_space_config(), load_space_config(tmp_path / "space.yaml")
    assert changed.limits.max_ipc == 3 and changed.limits.max_classes == base.limits.max_classes
    assert controls.initial_controls(changed, "tiny") == {**controls.initial_controls(base, "tiny"), "ipc": 1, "seed": 7}
    assert changed.presets.keys() == base.presets.keys() and changed.zerogpu == base.zerogpu


def test_a_settings_file_with_an_unknown_key_is_refused_with_the_key_named(tmp_path):
    cases = [({"limts": {}}, "unknown setting `limts`; expected some of ['default_preset', 'defaults', "),
             ({"limits": {"max_ipcc": 3}}, "`limits`: unknown setting `max_ipcc`; expected some of ['max_caption_rows'"),
             ({"presets": {"mine": {"base": "tiny", "lable": "x"}}}, "preset 'mine': unknown keys ['lable']; expected")]
    for values, message in cases:
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(values))
        with pytest.raises(ValueError) as err:
            load_space_config(tmp_path / "space.yaml")
        assert str(err.value).startswith(f"{tmp_path / 'space.yaml'}: {message}"), str(err.value)
    # a new preset with known keys, and the Space's own section, are accepted
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"space": {"title": "x"}, "presets": {
        "mine": {"base": "tiny", "label": "Mine", "overrides": {"ipc": 2}}}}))
    assert "mine" in load_space_config(tmp_path / "space.yaml").presets


def test_run_controls_set_the_config_fields_and_left_out_ones_keep_their_initial_value(space):
    config = controls.run_config(space, "/unused", dataset="sample", classes=CLASSES, preset="tiny",
                                 guidance_scale=7.5, steps="20", seed=None, strength="")
    assert (config.generation.guidance_scale, config.generation.num_inference_steps) == (7.5, 20)
    initial = controls.initial_controls(space, "tiny")
    assert (config.seed, config.generation.strength, config.ipc) == (initial["seed"], initial["strength"],
                                                                     initial["ipc"])
    assert config.data.max_images_per_class == TEST_SETTINGS["defaults"]["images_per_class"]
    with pytest.raises(ValueError, match=r"unknown run controls \['guidance'\]"):
        controls.run_config(space, "/unused", dataset="sample", classes=CLASSES, preset="tiny", guidance=3)


def test_space_file_check_catches_disagreements(tmp_path, space):
    s = space.space
    front = {"title": "vldd", "sdk": "gradio", "sdk_version": s["sdk_version"], "python_version": s["python_version"],
             "app_file": "app.py", "hf_oauth": True, "hf_oauth_scopes": s["hf_oauth_scopes"]}
    (tmp_path / "app.py").write_text("")
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump(front)}---\n# vldd\n")
    (tmp_path / "requirements.txt").write_text(f"gradio[oauth]=={s['sdk_version']}\nspaces>=0.40\n"
                                               "torch==2.9.1\ntorchvision==0.24.1\n")
    assert space_files.check_space_files(tmp_path, space) == []
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump({**front, 'sdk_version': '5.0.0'})}---\n")
    (tmp_path / "requirements.txt").write_text("gradio\ntorch>=2.8\n")
    problems = "\n".join(space_files.check_space_files(tmp_path, space))
    assert "`sdk_version` is '5.0.0'" in problems and f"must pin gradio=={s['sdk_version']} " in problems
    assert "must list `spaces`" in problems and "must pin torchvision" in problems
    assert "must pin torch to one version ZeroGPU offers (2.8.0, 2.9.1, 2.10.0, 2.11.0), got no torch== line" in problems
    (tmp_path / "requirements.txt").write_text("torch==2.14.1\n")
    assert "got ['2.14.1']" in "\n".join(space_files.check_space_files(tmp_path, space))


def test_space_config_is_valid_and_offers_the_presets():
    space = load_space_config(ROOT / "spaces_config.yaml")
    assert {"paper", "tiny"} <= set(space.presets) and space.space["sdk_version"] == gradio.__version__
    assert space.preset_for(False) == "tiny" and space.preset_for(True) == "fast-captioner"
    assert "paper" not in space.offered(zero_gpu=True) and "paper" in space.offered(zero_gpu=False)
    assert space.concurrency(True)["gpu_concurrency"] > space.concurrency(False)["gpu_concurrency"] == 1
    for spec in space.presets.values():
        assert set(spec.gpu_seconds) == {"load", "caption", "encode", "step"}
        controls.run_config(space, "/tmp/unused", dataset="sample", classes=["0"], preset=spec.name, ipc=1)


def test_gradio_is_imported_with_spaces_first():
    # the Space's entry point, and the module whose GPU functions ZeroGPU decorates
    for path in (ROOT / "app.py", ROOT / "vldd" / "app" / "handlers.py"):
        lines = path.read_text().splitlines()
        first_import = next(line for line in lines if line.lstrip().startswith(("import ", "from ")))
        assert first_import.split("#")[0].strip() == "import spaces", path



def test_source_opened_once_on_the_cpu_streamed_into_the_session_and_deleted_with_it(tmp_path, space):
    from vldd.core.runs import write_text

    data = tmp_path / "shapes"
    for split, count in (("train", 5), ("validation", 4)):
        for name in ("blue", "red"):
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), name).save(data / split / name / f"{i}.png")
    sessions = Sessions(tmp_path / "sessions")
    run_dir = sessions.run_dir("visitor")
    values = {"dataset": str(data), "classes": ["blue", "red"], "preset": "tiny", "images_per_class": 3}
    config = controls.run_config(space, run_dir, ipc=1, streaming=True, **values)
    source = sources.open_source(config, stream_dir=sessions.path("visitor") / "stream")
    assert source.positions is not None and source.counts() == {0: 3, 1: 3}  # streamed, capped per class
    assert len(list((sessions.path("visitor") / "stream").glob("vldd-stream-*/data.arrow"))) == 1
    # Checked before any GPU call: a class with fewer images than the IPC.
    too_many = controls.run_config(space, run_dir, ipc=4, **values)
    missing = controls.run_config(space, run_dir, ipc=1, captions_from=str(tmp_path / "none"), **values)
    with pytest.raises(ValueError, match="could not load captions .*none"):  # unusable captions: before the GPU too
        sources.open_source(missing)
    with pytest.raises(ValueError, match=r"IPC 4 needs at least 4 inlier images per class; too few in: 'blue' \(3 images"):
        sources.open_source(too_many)

    # The quick evaluation's real images: the first N of each class, copied before its GPU call.
    write_text(run_dir / "config.yaml", config.to_yaml())
    real = evaluation.prepare_eval_data(run_dir, sessions.path("visitor") / "eval-real", per_class=2, baseline=True)
    import datasets

    copy = datasets.load_from_disk(str(real))
    assert {split: copy[split].num_rows for split in copy} == {"validation": 4, "train": 4}
    assert copy["validation"].features["label"].names == ["blue", "red"]
    sessions.close("visitor")
    assert not sessions.path("visitor").exists()  # streamed copies and evaluation data went with the session


# --- Stop, a session's end, local paths, messages without server paths --------------------------------------------

FOUR = ["circle", "square", "triangle", "cross"]


def _wait_status(job, text: str, timeout: float = 300) -> None:
    """Waits until one of the job's streamed status messages contains `text`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(text in str(out[0]) for out in job.outputs()):
            return
        if job.done():
            raise AssertionError(f"the run ended before {text!r}: {job.outputs()[-1:]}")
        time.sleep(0.05)
    raise AssertionError(f"no status with {text!r} within {timeout} s")


def _finished_classes(sessions, session_hash) -> int:
    """Classes whose generated images the session's run holds (each class's folder is written whole, at once)."""
    folder = sessions.path(session_hash) / "run" / "work" / "generate"
    return sum(1 for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else 0


def test_stop_ends_a_multi_class_generate_after_the_current_class_and_says_what_it_stopped(served):
    client = _client(served.url)
    assert client.predict(api_name="/stop") == "Nothing was running."
    job = client.submit(**RUN, classes=FOUR, api_name="/generate")
    _wait_status(job, "1/4 classes done (circle)")
    stopped = client.predict(api_name="/stop")  # a second request of the same session, while class 2 runs
    status, _, _ = job.result(timeout=300)
    match = re.fullmatch(r"Stopped Generate after class (\d) of 4; finished classes are kept; run again to resume\.",
                         stopped)
    assert match, stopped
    kept = int(match.group(1))
    assert 1 <= kept < 4 and status.endswith(stopped)  # the run's own last status says the same
    assert _finished_classes(served.settings.sessions, client.session_hash) == kept
    assert "Distilled" not in status  # nothing after the stop: no combined dataset written
    # The next run resumes: the kept classes are not run again.
    job = client.submit(**RUN, classes=FOUR, api_name="/generate")
    _, gallery, _ = job.result(timeout=300)
    statuses = [out[0] for out in job.outputs()]
    assert any(f"{kept}/4 classes ({FOUR[kept - 1]}: already done)" in text for text in statuses), statuses
    assert len(gallery) == 8


def test_a_session_that_ends_mid_run_stops_after_the_class_and_leaves_no_files(served, caplog):
    import httpx

    client = _client(served.url)
    session = served.settings.sessions.path(client.session_hash)
    job = client.submit(**RUN, classes=FOUR[:3], api_name="/generate")
    _wait_status(job, "1/3 classes done (circle)")
    assert (session / "run" / "work").is_dir()
    # The session ends the way Gradio sees it: the page's heartbeat connection closes, and Gradio runs the unload event.
    with httpx.stream("GET", f"{served.url}gradio_api/heartbeat/{client.session_hash}", timeout=30) as heartbeat:
        next(heartbeat.iter_lines())
    status = job.result(timeout=300)[0]
    assert re.search(r"Stopped Generate after class [12] of 3", status), status
    deadline = time.time() + 30
    while session.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not session.exists()  # removed after the class returned, not recreated by it
    assert "FileNotFoundError" not in caplog.text + status


def test_sessions_delete_a_closed_session_only_after_its_event_ends(tmp_path):
    sessions = Sessions(tmp_path)
    run = sessions.run_dir("visitor")
    with sessions.working("visitor", "Generate", classes=True) as activity:
        activity.total, activity.done = 5, 2
        with pytest.raises(SessionBusy, match="busy with another run"):
            with sessions.working("visitor", "Caption"):
                pass
        sessions.close("visitor")  # the session ends mid-run
        assert sessions.stop_flag("visitor").is_set() and run.is_dir()  # stop asked; the files stay meanwhile
        (run / "work").mkdir()  # the running class can still write
        assert sessions.stop("visitor").startswith("Stopping Generate after the class it is on (class 3 of 5)")
    assert not sessions.path("visitor").exists()
    assert sessions.stop("visitor") == "Nothing was running."
    with sessions.working("visitor", "Evaluate"):
        assert sessions.stop("visitor") == "Evaluate runs as one step and ends by itself; nothing else was running."
    sessions.run_dir("other")
    sessions.close("other")  # no event: deleted at once
    assert not sessions.path("other").exists()


@pytest.mark.parametrize("done,answer", [(0, "Stopped Caption before its first class; run again to start it."),
                                         (1, "Stopped Caption after class 1 of 3; finished classes are kept; run "
                                             "again to resume."),
                                         (3, "Nothing was stopped: Caption had finished all 3 classes.")])
def test_stop_waits_for_the_run_and_says_what_it_stopped(tmp_path, done, answer):
    import threading

    sessions = Sessions(tmp_path)
    started = threading.Event()

    def run():  # a per-class run that reaches its end after `done` classes
        with sessions.working("visitor", "Caption", classes=True) as activity:
            activity.total = 3
            started.set()
            assert sessions.stop_flag("visitor").wait(10)  # what run_classes asks between classes
            time.sleep(0.2)
            activity.done = done

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    assert sessions.stop("visitor", wait=10) == answer
    thread.join()


def test_local_folders_only_when_nobody_else_can_reach_the_app(tiny_cache, tmp_path, served):
    from gradio_client.exceptions import AppError

    allowed = {(host, share, flag): runtime.local_paths_allowed(False, host, share, flag)
               for host in (None, "127.0.0.1", "localhost", "0.0.0.0") for share in (False, True)
               for flag in (False, True)}
    assert {k for k, v in allowed.items() if not v} == {(None, True, False), ("127.0.0.1", True, False),
                                                        ("localhost", True, False), ("0.0.0.0", False, False),
                                                        ("0.0.0.0", True, False)}
    assert not runtime.local_paths_allowed(True, None, False, True)  # never on a Space
    folder = image_folder(tmp_path / "shapes", ["blue", "red"], per_class=3)

    # The localhost app (no --share) reads a local folder; its message shows no server path.
    *_, message = _client(served.url).predict(dataset=str(folder), classes=[], images_per_class=3,
                                              api_name="/load_dataset")
    assert "2 classes, 6 images" in message and str(tmp_path) not in message and "…/shapes" in message

    demo, _ = launch_app(tiny_cache, tmp_path / "shared-sessions", share=True)
    try:
        client = _client(demo.local_url)
        for path in ("/etc", "~", str(folder)):
            with pytest.raises(AppError, match="is a local path, and this app reads only Hub datasets") as refused:
                client.predict(dataset=path, classes=[], images_per_class=3, api_name="/load_dataset")
            assert str(tmp_path) not in str(refused.value)
            with pytest.raises(AppError, match="is a local path"):
                client.predict(**{**RUN, "dataset": path}, classes=["circle"], api_name="/generate")
    finally:
        demo.close()


def test_messages_carry_no_server_paths(served, tmp_path):
    import shutil

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    zipped = shutil.make_archive(str(tmp_path / "shapes"), "zip", image_folder(tmp_path / "shapes", ["blue", "red"]))
    client = _client(served.url)
    with pytest.raises(AppError) as refused:
        client.predict(dataset="", upload=handle_file(zipped), classes=["green"], images_per_class=3,
                       api_name="/load_dataset")
    text = str(refused.value)
    assert "classes ['green'] are not in 'uploads/" in text, text
    assert str(served.settings.root) not in text and "/tmp" not in text


def test_public_text_cuts_server_paths():
    root = "/srv/app/sessions"
    text = (f"could not read '{root}/0123456789abcdef01234567/uploads/shapes/blue/1.png' "
            "nor /tmp/gradio/9f8e/shapes.zip; '/etc' is a local path; see https://hf.co/docs/x/y")
    assert public_text(text, [root]) == ("could not read 'uploads/shapes/blue/1.png' nor …/shapes.zip; '/etc' "
                                               "is a local path; see https://hf.co/docs/x/y")


# --- every value checked on the CPU ----------------------------------------------------------------------------------

BAD_VALUES = [  # (control, value, the message's start); each is refused before any GPU call
    ("seed", -1, "`seed` must be a whole number from 0 to 4294967295, got -1"),
    ("seed", 2**70, "`seed` must be a whole number from 0 to 4294967295, got 1180591620717411303424"),
    ("seed", 1.5, "`seed` must be a whole number, got 1.5"),
    ("ipc", 0, "`ipc` must be an integer >= 1, got 0"),  # the config's own checks, from here to guidance -1
    ("ipc", 11, "Over this Space's limits: IPC 11 asked for"),
    ("images_per_class", 0, "`data.max_images_per_class` must be >= 1 or None, got 0"),
    ("images_per_class", 51, "Over this Space's limits: 51 source images per class"),
    ("steps", 0, "`generation.num_inference_steps` must be >= 1, got 0"),
    ("steps", 101, "Over this Space's limits: 101 inference steps"),
    ("strength", 0, "`generation.strength` must be in (0.0, 1.0], got 0.0"),
    ("strength", 1.5, "`generation.strength` must be in (0.0, 1.0], got 1.5"),
    ("strength", float("nan"), "`generation.strength` must be in (0.0, 1.0], got nan"),
    ("strength", "strong", "`strength` must be a number, got 'strong'"),
    ("guidance_scale", -1, "`generation.guidance_scale` must be >= 0, got -1.0"),
    ("guidance_scale", float("nan"), "`generation.guidance_scale` must be >= 0, got nan"),
    ("guidance_scale", float("inf"), "`guidance_scale` must be at most 20 (this Space's range), got inf"),
    ("guidance_scale", 1000, "`guidance_scale` must be at most 20 (this Space's range), got 1000.0"),
    ("dataset", "x" * 201, "`dataset` must be at most 200 characters, got 201"),
    ("dataset", "user/set\nname", "`dataset` must not contain control characters"),
    ("dataset", "no such/id!", "`dataset` must be a Hub dataset id such as frgfm/imagenette"),
    ("config_name", "a b", "`configuration` may only contain letters, digits"),
    ("split", "train;rm", "`split` may only contain letters, digits"),
    ("captions_from", "bad id!", "`captions_from` must be a Hub dataset id"),
    ("classes", ["c" * 201], "`classes` must be at most 200 characters"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[f"{k}={str(v)[:12]!r}" for k, v, _ in BAD_VALUES])
def test_every_control_is_checked_with_a_message(space, key, value, message):
    values = {"dataset": "sample", "classes": CLASSES, "preset": "tiny", "ipc": 2, "steps": 10, key: value}
    with pytest.raises(ValueError) as refused:
        sources.check_captions_source(values.get("captions_from"), allow_local_paths=False)
        dataset = sources.resolve_dataset(values.pop("dataset"), None, upload_dir=Path("/unused"),
                                        allow_local_paths=False, limits=uploads.UploadLimits())
        controls.run_config(space, "/unused", dataset=dataset, **values)
    assert str(refused.value).startswith(message), str(refused.value)

"""The app under ZeroGPU: the real `spaces` decorator, scheduler protocol and forked worker, emulated on the CPU.

The end-to-end test runs app.py in a subprocess with SPACES_ZERO_GPU=true (so it never leaks into other tests) against
a fake scheduler (tests/helpers/zerogpu_runtime.py), and drives it with gradio_client. The planning tests check the quota
arithmetic the app applies before any GPU call.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from helpers.zerogpu_runtime import FakeScheduler

from vldd.app import controls, evaluation
from vldd.app.gpu import GpuQuota, LimitError, plan_gpu_calls, visitor_tier
from vldd.app.models import ModelCache
from vldd.app.settings import load_space_config
from vldd.configs.base import merge

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]
# tiny only (its models are built offline), 12 images a class; estimates sized so that 2 classes fit an anonymous
# quota (2 x 27 s x 1.5 = 81 s <= 120 s) and 3 do not, and 30 images a class overflow one call's 30 s.
SETTINGS = {
    "presets": {"paper": {"zerogpu": False}, "fast-captioner": {"zerogpu": False},
                "tiny": {"overrides": {"dtype": "fp32"}, "gpu_seconds": {"load": 20, "caption": 0.5}}},
    "default_preset": {"gpu": "tiny", "cpu": "tiny"},
    "defaults": {"ipc": 2, "images_per_class": 12, "steps": 10, "num_classes": 2},
    "zerogpu": {"max_call_seconds": 30},
}
RUN = {"dataset": "sample", "preset": "tiny", "ipc": 2, "images_per_class": 12, "steps": 10}


# --- planning ---------------------------------------------------------------------------------------------------------

def test_calls_over_the_cap_or_the_visitors_quota_are_refused_with_what_to_shrink():
    quota = GpuQuota(duration_factor=1.5, max_call_seconds=60, daily_seconds={"anonymous": 120, "free": 300,
                                                                              "pro": 2400})
    plan = plan_gpu_calls({"a": 20, "b": 20, "c": 20}, quota, "anonymous")
    assert plan.total_seconds == 90.0
    assert plan.describe("anonymous", quota) == (
        "Estimated GPU time: 3 call(s), one per class, 90 s in all (requests of 20 s at most, × 1.5 as ZeroGPU counts "
        "them); an anonymous visitor's daily ZeroGPU quota is about 120 s.")
    with pytest.raises(LimitError, match=r"estimated at 150 s of ZeroGPU time \(4 calls × ZeroGPU's factor 1.5\); an "
                                         r"anonymous visitor's daily quota is about 120 s\. Choose fewer classes.*; or "
                                         r"sign in \(free account: about 300 s a day\)") as refused:
        plan_gpu_calls({"a": 20, "b": 20, "c": 20, "d": 40}, quota, "anonymous")
    assert refused.type is LimitError
    plan_gpu_calls({"a": 20, "b": 20, "c": 20, "d": 40}, quota, "free")  # 150 s: fits a free account
    with pytest.raises(LimitError, match=r"One class \('d'\) is estimated at 61 s of GPU time in one call; this Space "
                                         r"requests at most 60 s per call\. Use fewer source images per class"):
        plan_gpu_calls({"a": 20, "d": 61}, quota, "pro")
    assert plan_gpu_calls({"a": 500}, quota, None).total_seconds == 500  # off ZeroGPU: no cap, no quota
    assert [visitor_tier(p) for p in (None, {"name": "x"}, {"isPro": False}, {"isPro": True})] == \
        ["anonymous", "free", "free", "pro"]


def test_the_default_demo_fits_an_anonymous_visitors_quota():
    space = load_space_config(ROOT / "spaces_config.yaml")
    preset = space.preset_for(has_gpu=True)
    assert preset in space.offered(zero_gpu=True)
    initial = controls.initial_controls(space, preset)
    config = controls.run_config(space, "/unused", dataset="sample",
                                 classes=["0", "1", "2"][:space.defaults["num_classes"]], preset=preset)
    g = config.generation
    assert (config.ipc, config.data.max_images_per_class, g.num_inference_steps) == (initial["ipc"], 10, 25)
    assert g.strength == 0.7 and g.guidance_scale == 10.0  # the config's defaults, written once
    seconds = controls.class_seconds(config, controls.stages_of("generate"), space.presets[preset].gpu_seconds)
    plan = plan_gpu_calls({c: seconds for c in config.data.classes}, space.zerogpu, "anonymous")
    assert seconds == 20 and plan.total_seconds == 90.0 <= space.zerogpu.daily_seconds["anonymous"] == 120


# --- end to end under the emulation -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zero_app(tiny_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zerogpu")
    config = tmp / "spaces_config.yaml"
    config.write_text(yaml.safe_dump(merge(yaml.safe_load((ROOT / "spaces_config.yaml").read_text()),
                                                  SETTINGS)))
    scheduler = FakeScheduler()
    from helpers import running_app

    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": scheduler.url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "VLDD_CACHE": str(tiny_cache),
           "VLDD_APP_ROOT": str(tmp / "sessions"), "ZEROGPU_OFFLOAD_DIR": str(tmp / "offload"),
           "VLDD_TEST_LOAD_LOG": str(tmp / "loads.jsonl"), "VLDD_TEST_FAIL_CLASS": "stripes",
           "OMP_NUM_THREADS": "1", "HOME": str(tmp)}
    try:
        with running_app([sys.executable, str(ROOT / "tests" / "helpers" / "zerogpu_runtime.py"), "--config", str(config)], env,
                         tmp) as (url, pid):
            yield type("ZeroApp", (), {"url": url, "scheduler": scheduler, "pid": pid, "tmp": tmp})
    finally:
        scheduler.close()


@pytest.mark.slow  # the app runs in a subprocess under the spaces emulation
def test_tiny_pipeline_runs_under_zerogpu_one_bounded_call_per_class(zero_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from spaces.zero.config import get_config

    client = Client(zero_app.url, verbose=False)
    # Preloaded at start-up in the main process, on the emulated GPU; the start-up report reached the scheduler.
    loads = [json.loads(line) for line in (zero_app.tmp / "loads.jsonl").read_text().splitlines()]
    assert {(x["kind"], x["pid"], x["device"]) for x in loads} == {("captioner", zero_app.pid, "cuda"),
                                                                    ("pipeline", zero_app.pid, "cuda")}
    assert zero_app.scheduler.requests[0][0] == "/startup-report"

    update, *_ = client.predict(dataset="sample", classes=[], images_per_class=12, api_name="/load_dataset")
    assert update["value"] == CLASSES
    status, gallery, preview = client.predict(**RUN, classes=CLASSES, seed=0, strength=0.7, guidance_scale=10.0,
                                              api_name="/generate")
    assert status.startswith("Estimated GPU time: 2 call(s), one per class, 81 s in all (requests of 27 s at most, "
                             "× 1.5 as ZeroGPU counts them); an anonymous visitor's daily ZeroGPU quota is about 120 s.")
    assert "Distilled 4 images (2 classes × IPC 2)" in status
    assert [item["caption"].split(" #")[0] for item in gallery] == ["circle", "circle", "square", "square"]

    # One scheduled call per class, each asking for its capped estimate times the slice factor of `spaces`.
    space = load_space_config(zero_app.tmp / "spaces_config.yaml")
    config = controls.run_config(space, "/unused", classes=CLASSES, **RUN)
    seconds = controls.class_seconds(config, controls.stages_of("generate"), space.presets["tiny"].gpu_seconds)
    assert seconds == 27  # 20 load + 12 x 0.5 caption + ... (the test's estimates)
    factor = get_config()["duration_factor"]
    assert zero_app.scheduler.durations() == [round(seconds * factor)] * 2
    assert all(d <= space.zerogpu.max_call_seconds * space.zerogpu.duration_factor
               for d in zero_app.scheduler.durations())
    # The forked worker used the preloaded models: nothing was loaded outside the main process.
    loads = [json.loads(line) for line in (zero_app.tmp / "loads.jsonl").read_text().splitlines()]
    assert {x["pid"] for x in loads} == {zero_app.pid} and len(loads) == 2

    # Resumed: both classes are done, so a second Generate schedules nothing.
    before = len(zero_app.scheduler.durations())
    status, gallery, _ = client.predict(**RUN, classes=CLASSES, seed=0, strength=0.7, guidance_scale=10.0,
                                        api_name="/generate")
    assert len(gallery) == 4 and len(zero_app.scheduler.durations()) == before

    # Prototypes: every class is called again (to decode its prototypes in the worker); the images come back.
    status, summary, clusters, images, _ = client.predict(**RUN, classes=CLASSES, api_name="/prototypes")
    assert len(images) == 4 and [row[:2] for row in clusters["data"]][:2] == [["circle", 0], ["circle", 1]]
    proto_seconds = controls.class_seconds(config, controls.stages_of("prototypes"), space.presets["tiny"].gpu_seconds)
    assert zero_app.scheduler.durations()[before:] == [round(proto_seconds * factor)] * 2
    before += 2

    # Evaluate: its real test images copied on the CPU first, then one GPU call (training in the worker).
    summary, plot = client.predict(epochs=1, random_baseline=False, api_name="/evaluate")
    assert "distilled" in summary and Path(plot).is_file()
    settings = evaluation.eval_settings(space, 1, False)
    run_dir = next((zero_app.tmp / "sessions").glob("*/run"))
    eval_seconds = evaluation.estimate_eval_seconds(run_dir, settings, space)
    assert eval_seconds == 11  # 10 s load + 1 epoch x (4 distilled + 2 x 50 test images) x 0.003 s
    assert zero_app.scheduler.durations()[before:] == [round(eval_seconds * factor)]
    before += 1
    # Over the per-call cap, the evaluation says to lower what it has: epochs (10 s + 100 x 104 x 0.003 s = 42 s).
    with pytest.raises(AppError, match=r"estimated at 42 s of GPU time in one call; this Space requests at most 30 s "
                                       r"per call\. Use fewer epochs, or leave out the random baseline\."):
        client.predict(epochs=100, random_baseline=False, api_name="/evaluate")
    assert len(zero_app.scheduler.durations()) == before

    # Refused before any GPU call: over an anonymous visitor's quota (3 classes still to do), over the per-call cap
    # (captioning 30 images: 20 + 30 x 0.5 s).
    with pytest.raises(AppError, match=r"estimated at 122 s of ZeroGPU time \(3 calls × ZeroGPU's factor 1.5\); an "
                                       "anonymous visitor's daily quota is about 120 s. Choose fewer classes"):
        client.predict(**RUN, classes=["triangle", "cross", "stripes"], api_name="/generate")
    with pytest.raises(AppError, match=r"estimated at 35 s of GPU time in one call; this Space requests at most 30 s"):
        client.predict(**{**RUN, "images_per_class": 30}, classes=["triangle"], api_name="/caption")
    assert len(zero_app.scheduler.durations()) == before

    # A ValueError raised inside the GPU worker reaches the visitor with its message, not only its class name.
    with pytest.raises(AppError, match=r"class 'stripes' failed inside the GPU call \(pid \d+\)") as failed:
        client.predict(**RUN, classes=["stripes"], api_name="/caption")
    worker = int(str(failed.value).split("(pid ")[1].split(")")[0])
    assert worker != zero_app.pid  # it ran in the forked worker
    assert len(zero_app.scheduler.durations()) == before + 1
    assert zero_app.scheduler.requests[-1][0] == "/release" and zero_app.scheduler.requests[-1][1]["fail"] == "true"


# --- a local GPU -------------------------------------------------------------------------------------------------------

def test_on_a_local_gpu_the_captioner_is_evicted_before_sd_loads_unless_both_fit(monkeypatch, tmp_path):
    import torch

    from vldd.stages import generate as generation

    free = {"bytes": 2 * 2**30}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: (free["bytes"], 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    loaded = []
    monkeypatch.setattr(generation, "load_pipeline", lambda model_id, **kwargs: loaded.append(kwargs["device"]) or
                        f"pipeline on {kwargs['device']}")
    space = load_space_config(ROOT / "spaces_config.yaml")
    config = controls.run_config(space, tmp_path, dataset="sample", classes=["0"], preset="tiny")
    models = ModelCache(keep_both_bytes=int(space.local_gpu["pipeline_gb"] * 2**30))
    models._models[("captioner", "llava", None, "cuda", "float16")] = "a 7B captioner"
    assert models.pipeline(config, ("cuda", "float16")) == "pipeline on cuda"
    assert not any(key[0] == "captioner" for key in models._models)  # 2 GB free < 6 GB: evicted first
    free["bytes"] = 20 * 2**30
    models._models[("captioner", "llava", None, "cuda", "float16")] = "a 7B captioner"
    models.pipeline(config, ("cuda", "float32"))
    assert ("captioner", "llava", None, "cuda", "float16") in models._models  # both fit: kept
    assert ModelCache().evict_captioners_unless_free(None) == []  # ZeroGPU / CPU: never evicts
    assert loaded == ["cuda", "cuda"]


def test_off_zerogpu_the_estimate_has_no_factor_and_no_quota():
    quota = load_space_config().zerogpu
    plan = plan_gpu_calls({"a": 20, "b": 30}, quota, None)
    assert plan.describe(None, quota) == "Estimated GPU time: 2 call(s), one per class, 50 s in all."


# --- refused before the GPU, and what a visitor reads when ZeroGPU refuses ---------------------------------------------

BAD = [  # (control, value, what the message says): each must be refused on the CPU, before any /schedule request
    ("seed", -1, "`seed` must be a whole number from 0 to 4294967295, got -1"),
    ("seed", 2**70, "`seed` must be a whole number from 0 to 4294967295"),
    ("seed", 1.5, None),  # gr.Number(precision=0) may round it first: then a valid seed, so not asserted below
    ("ipc", 0, "`ipc` must be an integer >= 1, got 0"),  # the config's own check
    ("ipc", 11, "IPC 11 asked for"),
    ("images_per_class", 0, "`data.max_images_per_class` must be >= 1"),
    ("images_per_class", 51, "51 source images per class"),
    ("steps", 0, "`generation.num_inference_steps` must be >= 1"),
    ("steps", 101, "101 inference steps"),
    ("strength", 0, None),  # the slider's own range check may answer first
    ("strength", 1.5, None),
    ("guidance_scale", -1, None),
    ("guidance_scale", 1000, None),
    ("dataset", "x" * 201, "`dataset` must be at most 200 characters"),
    ("dataset", "user/set\nname", "`dataset` must not contain control characters"),
    ("dataset", "no such/id!", "`dataset` must be a Hub dataset id"),
    ("config_name", "a b", "`configuration` may only contain"),
    ("split", "train;rm", "`split` may only contain"),
    ("captions_from", "bad id!", "`captions_from` must be a Hub dataset id"),
    ("classes", ["c" * 201], "`classes` must be at most 200 characters"),
    ("classes", ["no-such-class"], "no-such-class"),
]


@pytest.mark.slow  # the app runs in a subprocess under the spaces emulation
def test_bad_values_spend_no_gpu_call(zero_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(zero_app.url, verbose=False)
    before = len(zero_app.scheduler.durations())
    seen = {}
    for key, value, message in BAD:
        values = {**RUN, "classes": ["circle"], "seed": 0, "strength": 0.7, "guidance_scale": 10.0, key: value}
        if key == "seed" and value == 1.5:
            values["ipc"] = 0  # whatever the component makes of 1.5, this request is refused on the CPU
        with pytest.raises(AppError) as refused:
            client.predict(**values, api_name="/generate")
        seen[(key, str(value)[:20])] = str(refused.value)
        if message is not None:
            assert message in str(refused.value), (key, value, str(refused.value))
    assert len(zero_app.scheduler.durations()) == before, seen  # not one GPU call scheduled
    with pytest.raises(AppError, match="`seed` must be a whole number from 0 to 4294967295, got -1"):
        client.predict(**{**RUN, "seed": -1}, classes=["circle"], api_name="/prototypes")
    with pytest.raises(AppError, match="`split` may only contain"):
        client.predict(**{**RUN, "split": "../train"}, classes=["circle"], api_name="/caption")
    assert len(zero_app.scheduler.durations()) == before


@pytest.mark.slow
def test_quota_used_up_mid_run_says_what_is_kept_and_what_to_do(zero_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(zero_app.url, verbose=False)
    asked = len(zero_app.scheduler.durations())
    zero_app.scheduler.quota_calls = asked + 1  # the first class's call is granted, the second refused (429)
    try:
        with pytest.raises(AppError) as refused:
            client.predict(**RUN, classes=["triangle", "cross"], api_name="/generate")
    finally:
        zero_app.scheduler.quota_calls = None
    message = str(refused.value)
    assert "ZeroGPU refused the next GPU call: Space app has reached its GPU limit." in message, message
    assert ("1 of 2 classes are kept (triangle); run again later (the run resumes after the finished classes), or "
            "sign in with Hugging Face (a free account has a larger daily quota).") in message, message
    assert len(zero_app.scheduler.durations()) == asked + 2
    # Run again: the kept class is not called again.
    status, gallery, _ = client.predict(**RUN, classes=["triangle", "cross"], api_name="/generate")
    assert len(gallery) == 4 and len(zero_app.scheduler.durations()) == asked + 3

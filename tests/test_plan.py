"""`vldd plan`: measured per-item costs scaled by the run's counts."""

import os
import resource

import pytest
import torch
from helpers import tiny_overrides
from PIL import Image

from vldd.cli.commands import main
from vldd.configs.distill import load_config
from vldd.jobs import plan
from vldd.jobs.finetune import finetune_config
from vldd.jobs.plan import PeakMemory, caption_cost, generation_cost, plan_run, stand_in, unet_calls
from vldd.stages.caption import load_captioner
from vldd.stages.generate import generate_images, load_pipeline


class ForwardClock:
    """A clock that advances by one second per forward call of the modules: timings become call counts."""

    def __init__(self, *modules):
        self.now = 0.0
        for module in modules:
            module.register_forward_hook(lambda *_: setattr(self, "now", self.now + 1.0))

    def perf_counter(self) -> float:
        return self.now


def test_peak_memory_is_the_blocks_own_on_cpu():
    cpu = torch.device("cpu")
    with PeakMemory(cpu) as idle:
        pass
    with PeakMemory(cpu) as busy:
        x = torch.ones(2**28)  # 1 GiB
        x.add_(1)
        del x
    assert busy.gb - idle.gb == pytest.approx(1.0, abs=0.15)
    with PeakMemory(cpu) as after:  # the freed GiB is not counted again: not the process's lifetime peak
        pass
    assert after.gb == pytest.approx(idle.gb, abs=0.15)


def test_unet_calls_count_what_the_pipeline_calls(tiny_cache):
    pipe = load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache)
    clock = ForwardClock(pipe.unet)
    for steps, strength in [(50, 0.7), (3, 0.7), (10, 1.0)]:
        start = clock.now
        generate_images(pipe, torch.zeros(1, 4, 8, 8), ["a"], seeds=[0], num_inference_steps=steps, strength=strength)
        assert clock.now - start == unet_calls(pipe, steps, strength)
    assert unet_calls(pipe, 50, 0.7) == 36  # 35 denoising steps + PNDM's repeated first PLMS step


def test_generation_cost_is_extrapolated_per_unet_call(tiny_cache, monkeypatch):
    pipe = load_pipeline("tiny://stable-diffusion", cache_dir=tiny_cache)
    monkeypatch.setattr(plan, "time", ForwardClock(pipe.unet))  # one second per UNet call, nothing else costs
    g = load_config(overrides={"preset": "tiny"}).generation
    assert generation_cost(pipe, torch.zeros(2, 4, 8, 8), g) == unet_calls(pipe, g.num_inference_steps, g.strength)


def test_caption_cost_forces_the_token_budget(tiny_cache, monkeypatch):
    captioner = load_captioner("tiny://llava", cache_dir=tiny_cache)
    monkeypatch.setattr(plan, "time", ForwardClock(captioner.model))  # one second per forward = per new token
    c = load_config(overrides={"preset": "tiny"}).caption
    images = [Image.new("RGB", (32, 32))] * 2
    assert caption_cost(captioner, images, "dog", c, decode_tokens=5) == (1.0, 1.0)
    assert captioner.model.generation_config.min_new_tokens is None  # restored


def test_caption_cost_scales_the_decoder_layers_to_full_depth(tiny_cache, monkeypatch):
    captioner = load_captioner("tiny://llava", cache_dir=tiny_cache)
    layers = captioner.model.model.language_model.layers
    assert len(layers) == 2
    monkeypatch.setattr(plan, "time", ForwardClock(*layers))  # one second per decoder layer, nothing else costs
    c = load_config(overrides={"preset": "tiny"}).caption
    # Each call spends 2 s in its 2 layers; at 32 layers that is 32 s, for the prefill and every decoding step.
    assert caption_cost(captioner, [Image.new("RGB", (32, 32))], "dog", c, decode_tokens=3, full_layers=32) == (
        32.0, 32.0)


def test_stand_ins_replace_uncached_paper_models_only():
    assert stand_in("llava-hf/llava-1.5-7b-hf") == "shapes://llava-1.5-7b"  # offline, nothing cached
    assert stand_in("stable-diffusion-v1-5/stable-diffusion-v1-5") == "shapes://sd15"
    assert stand_in("someone/other-model") == "someone/other-model"
    assert stand_in("tiny://llava") == "tiny://llava"


def test_plan_counts_the_work_and_measures_each_stage(tiny_cache, tmp_path):
    config = load_config(overrides=tiny_overrides(tmp_path, ipc=3))
    tune = finetune_config("tiny", captions=str(tmp_path))
    x = torch.ones(2**29)  # 2 GiB held and freed before planning: a stage's peak must not include it
    x.add_(1)
    del x
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    one = {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2, finetune=tune)}
    assert [*one] == ["caption", "encode", "finetune", "cluster", "generate"]
    assert one["caption"].items == one["encode"].items == 2 * 12  # 2 classes x 12 images
    assert one["finetune"].items == 2 * 12 * tune.num_train_epochs
    assert one["cluster"].items == 2 and one["generate"].items == 2 * 3
    for e in one.values():
        assert 0.3 < e.peak_memory_gb < lifetime - 1.5, e
        assert e.seconds == pytest.approx(e.load_seconds + e.items * e.seconds_per_item)
        assert e.samples >= 3 and e.spread[0] <= e.spread[1] <= e.spread[2], e
        assert e.spread[0] <= e.seconds_per_item <= e.spread[2], e  # the mean of the repeats
    four = {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2, processes=4)}
    assert "finetune" not in four
    assert four["generate"].seconds == pytest.approx(four["generate"].load_seconds + four["generate"].items
                                                     * four["generate"].seconds_per_item / 4)
    assert one["encode"].load_seconds > 0 and one["caption"].load_seconds > 0
    assert one["generate"].extrapolation == "2 UNet calls timed one by one, projected to the run's 8 (x4)"
    # the tiny budget (12 tokens) is small: a class's worth of images (IPC 3) is captioned as the run will caption it
    # and timed so, nothing projected
    assert one["caption"].extrapolation == ""
    assert one["caption"].note == "a class's 3 images captioned in full, in batches of at most 16"
    assert not (tmp_path / "dataset").exists()  # planning runs nothing


def test_a_small_caption_budget_is_timed_as_the_run_captions(tiny_cache, tmp_path, monkeypatch):
    import vldd.stages.caption

    calls, real = [], vldd.stages.caption.caption_images

    def spy(captioner, images, class_name, **kwargs):
        calls.append((len(images), kwargs["max_new_tokens"], kwargs["batch_size"]))
        return real(captioner, images, class_name, **kwargs)

    monkeypatch.setattr(vldd.stages.caption, "caption_images", spy)
    config = load_config(overrides=tiny_overrides(tmp_path, ipc=3, caption={"batch_size": 2}))
    plan_run(config, cache_dir=tiny_cache, sample_items=2)
    # every caption call of the plan is the run's: a class's 3 images, the whole 12-token budget, batches of 2
    assert calls and set(calls) == {(3, 12, 2)}, calls


def test_plan_cli_prints_a_table(tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))  # a busy machine, and torch on 2 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(["plan", "--preset", "tiny", "--output", str(tmp_path), "--cache-dir", str(tiny_cache),
                     "--classes", "circle", "--ipc", "2", "--max-images-per-class", "6"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    assert "NOTE: this machine was busy while measuring (load average 99.0 on" in out
    assert "caption" in out and "generate" in out and "total" in out and "tiny preset" in out
    assert "EXTRAPOLATED: 2 UNet calls timed one by one, projected to the run's 36 (x18)" in out
    assert "min-max (n)" in out


class StepClock:
    """perf_counter advances by `step` seconds per measurement taken."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def perf_counter(self):
        return self.now


def test_sample_warms_up_once_and_repeats_until_stable(monkeypatch):
    def run(step, **limits):
        clock = StepClock(step)
        monkeypatch.setattr(plan, "time", clock)
        warmups = []

        def measure(warmup):
            warmups.append(warmup)
            clock.now += step
            return step

        return plan.sample(measure, **limits), warmups

    values, warmups = run(0.01)  # fast: 3 repeats are only 0.03 s, so it goes on for 2 s
    assert len(values) == 200 and warmups == [True] + [False] * 199
    assert len(run(0.001)[0]) == 1000  # at most 1000 repeats
    assert len(run(1.0)[0]) == 3  # 3 s after 3
    assert len(run(0.5)[0]) == 4  # 3 repeats and 2 s
    assert len(run(40.0)[0]) == 1  # past 30 s: one measurement is all there is time for
    assert len(run(20.0)[0]) == 2
    assert plan.spread([3.0, 1.0, 2.0, 10.0], per=2) == (0.5, 1.25, 5.0)


def test_the_estimate_is_the_mean_of_the_repeats():
    # a run's time is the sum of its calls, stalls included: 4 calls of 1 s and one stalled 6 s take 10 s, 2 s per
    # call; the median (1 s) would predict 5 s
    values = [1.0, 1.0, 6.0, 1.0, 1.0]
    assert plan.mean(values) == 2.0 and plan.spread(values)[1] == 1.0
    assert plan.mean(values, per=4) == 0.5


def test_plan_batches_generation_as_the_sample_captions_lengths_would(tiny_cache, tmp_path, monkeypatch):
    import vldd.stages.generate

    # the tiny captioner's 12-token budget is decoded in full for a class's worth of images (3 at IPC 3, although
    # only 2 are sampled for the timings); pretend their captions have embedding lengths 7, 9 and 7: a class of 3
    # images then gets 2 calls ([0, 2] and [1]); lengths 7, 9 and 8 give 3 calls
    real = vldd.stages.generate.prompt_lengths  # kept for the plan's own timing calls ("a photo" prompts)

    def planned(lengths):
        monkeypatch.setattr(vldd.stages.generate, "prompt_lengths", lambda tokenizer, prompts, *args: real(
            tokenizer, prompts, *args) if prompts[0] == "a photo" else lengths[: len(prompts)])
        config = load_config(overrides=tiny_overrides(tmp_path, ipc=3))
        return {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2)}["generate"].note

    assert planned([7, 9, 7]) == ("2 pipeline calls per class of 3 images, batched by the embedding lengths of 3 "
                                  "sample captions")
    assert planned([7, 9, 8]).startswith("3 pipeline calls per class of 3 images")
    # a budget too long to decode for the sample: one image per call, said to be an upper bound
    config = load_config(overrides=tiny_overrides(tmp_path, ipc=3, caption={"max_new_tokens": 65}))
    estimates = {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2)}
    single = estimates["generate"]
    # and captioning is timed over a few decoding steps of the 2 sampled images, projected to the budget
    assert estimates["caption"].extrapolation == ("decoding timed over 3 steps, projected to the budget of 65 new "
                                                  "tokens (x21.3)")
    assert estimates["caption"].note == "batch of 2 images"
    assert single.note.startswith("one image per call")

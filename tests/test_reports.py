"""What the CLI prints about results: the numbers and paths it must show, from hand-made results."""

from pathlib import Path
from types import SimpleNamespace

from vldd.configs.distill import TINY_NOTE
from vldd.jobs import reports
from vldd.jobs.plan import StageEstimate


def test_distill_lines_name_counts_paths_and_the_tiny_note():
    dataset = SimpleNamespace(num_rows=6)
    manifest = {"tiny": True, "source": {"classes": [0, 1]}, "config": {"ipc": 3},
                "finetune": {"note": "not fine-tuned (D4M-style)"}}
    lines = reports.distill_lines(SimpleNamespace(run_dir=Path("runs/x"), dataset=dataset, manifest=manifest))
    assert lines == [f"NOTE: {TINY_NOTE}", "distilled 6 images (2 classes x IPC 3) -> runs/x/dataset",
                     "preview: runs/x/preview.png; manifest: runs/x/manifest.json",
                     "diffusion model: not fine-tuned (D4M-style)"]
    partial = SimpleNamespace(run_dir=Path("runs/x"), dataset=None, manifest={"stages_done": ["caption"]})
    assert reports.distill_lines(partial) == ["stages done: caption in runs/x"]


def test_finetune_lines_give_the_loss_trend_and_the_generate_command():
    result = SimpleNamespace(global_step=20, total_steps=20, epochs=2, resumed_from=10, lora=True, output=Path("m"),
                             weights_bytes=3 * 2**20, losses=[4.0] * 2 + [1.0] * 16 + [0.5] * 2, hub_repo=None,
                             base_model="sd")
    lines = reports.finetune_lines(result)
    assert lines[0] == "fine-tuned 20/20 steps (2 epochs), resumed from step 10 -> LoRA adapter in m (3.0 MiB of weights)"
    assert lines[1].startswith("loss: 4.0000 (first steps) -> 0.5000 (last steps)")
    assert lines[2] == "generate with it: vldd generate --output RUN_DIR --diffusion-model sd --lora m"


def test_plan_lines_total_the_stages_and_name_stand_ins():
    estimates = [StageEstimate("caption", 100, "image", 2.0, 210.0, 1.5, "shapes://llava-1.5-7b?layers=2", "batch 4",
                               (1.5, 2.0, 3.25), 5, 10.0, "decoder layers timed at 2 of 32, their time scaled x16"),
                 StageEstimate("generate", 10, "image", 30.0, 300.0, 2.25, spread=(29.0, 30.0, 31.0), samples=3)]
    lines = reports.plan_lines(estimates, processes=2)
    assert "(with 2 process(es))" in lines[0] and "min-max (n)" in lines[0]
    assert lines[1].split() == ["caption", "100", "im", "2.000", "1.5-3.25", "(5)", "10.0s", "3.5min", "1.50GB"]
    assert lines[3].split() == ["total", "8.5min"]  # 510 s
    assert lines[4] == ("  caption: shapes://llava-1.5-7b?layers=2 (real shapes, random weights); batch 4; "
                        "EXTRAPOLATED: decoder layers timed at 2 of 32, their time scaled x16")
    assert len(lines) == 5  # nothing to say about generate

def test_plan_warns_about_a_busy_machine_only_with_several_threads():
    note = reports.busy_machine_note(2.4, 2, 2)
    assert note.startswith("NOTE: this machine was busy while measuring (load average 2.4 on 2 CPUs)")
    assert "OMP_NUM_THREADS=1" in note
    assert reports.busy_machine_note(1.9, 2, 2) is None  # below the CPU count
    assert reports.busy_machine_note(8.0, 2, 1) is None  # one thread slows down in proportion to the load

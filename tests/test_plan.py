"""`vldd plan`: measured per-item costs scaled by the run's counts."""

import pytest
from conftest import tiny_overrides

from vldd.cli import main
from vldd.config import load_config
from vldd.plan import plan_run


def test_plan_counts_the_work_and_measures_each_stage(tiny_cache, tmp_path):
    config = load_config(overrides=tiny_overrides(tmp_path, ipc=3))
    one = {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2)}
    assert [*one] == ["caption", "encode", "cluster", "generate"]
    assert one["caption"].items == one["encode"].items == 2 * 12  # 2 classes x 12 images
    assert one["cluster"].items == 2 and one["generate"].items == 2 * 3
    for e in one.values():
        assert e.seconds_per_item > 0 and e.peak_memory_gb > 0
        assert e.seconds == pytest.approx(e.items * e.seconds_per_item)
    four = {e.stage: e for e in plan_run(config, cache_dir=tiny_cache, sample_items=2, processes=4)}
    assert four["generate"].seconds == pytest.approx(four["generate"].items * four["generate"].seconds_per_item / 4)
    assert not (tmp_path / "dataset").exists()  # planning runs nothing


def test_plan_cli_prints_a_table(tiny_cache, tmp_path, capsys):
    assert main(["plan", "--preset", "tiny", "--output", str(tmp_path), "--cache-dir", str(tiny_cache),
                 "--classes", "circle", "--ipc", "2", "--max-images-per-class", "6"]) == 0
    out = capsys.readouterr().out
    assert "caption" in out and "generate" in out and "total" in out and "tiny preset" in out

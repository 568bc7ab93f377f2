"""DD-Ranking's HLR / IOR / LRS on hand-made accuracies, and where they are shown (printout, card)."""

import math

import pytest

from vldd.hub.cards import evaluation_rows, robust_text
from vldd.jobs.evaluate.results import RepeatResult, RunResult, robust_scores, run_robust_scores


def lrs(ior_points: float, hlr_points: float) -> float:
    """LRS by hand, on fractions, lambda 0.5."""
    alpha = 0.5 * ior_points / 100 - 0.5 * hlr_points / 100
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def test_hlr_and_ior_per_repeat_with_signs():
    # repeat 0: distilled 60, random 50, full 90; repeat 1: distilled 40 below random 45, full 80
    scores = robust_scores([60.0, 40.0], random=[50.0, 45.0], full=[90.0, 80.0])
    assert scores["hlr"]["values"] == [30.0, 40.0]
    assert scores["ior"]["values"] == [10.0, -5.0]  # worse than random: negative
    assert scores["hlr"]["mean"] == 35.0 and scores["hlr"]["std"] == 5.0  # ddof=0
    assert scores["ior"]["mean"] == 2.5 and scores["ior"]["std"] == 7.5
    assert scores["lrs"]["values"] == pytest.approx([lrs(10, 30), lrs(-5, 40)])
    # a distilled set better than the full data: HLR negative
    assert robust_scores([95.0], full=[90.0])["hlr"]["values"] == [-5.0]


def test_lrs_spans_zero_to_one_on_fractions():
    # the extremes: distilled = full = 100 and random 0 -> alpha 0.5; distilled 0, full 100, random 100 -> alpha -1
    assert robust_scores([100.0], random=[0.0], full=[100.0])["lrs"]["values"][0] == pytest.approx(
        (math.exp(0.5) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert robust_scores([0.0], random=[100.0], full=[100.0])["lrs"]["values"][0] == pytest.approx(0.0)
    # equal accuracies everywhere: alpha 0
    assert robust_scores([50.0], random=[50.0], full=[50.0])["lrs"]["mean"] == pytest.approx(
        (1 - math.exp(-1)) / (math.e - math.exp(-1)))


def test_missing_baselines_leave_their_figures_out_and_sets_pair_by_repeat():
    assert set(robust_scores([60.0], random=[50.0])) == {"ior"}
    assert set(robust_scores([60.0], full=[70.0])) == {"hlr"}
    assert robust_scores([60.0]) == {}
    # two distilled sets x two repeats: set i's repeat r is paired with the baselines' repeat r
    scores = robust_scores([60.0, 62.0, 70.0, 72.0], random=[50.0, 51.0])
    assert scores["ior"]["values"] == [10.0, 11.0, 20.0, 21.0]
    with pytest.raises(ValueError, match="one accuracy per baseline repeat: got 3 distilled accuracies for 2"):
        robust_scores([1.0, 2.0, 3.0], random=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"`lam` must be in \[0, 1\], got 2"):
        robust_scores([1.0], lam=2)


def test_run_robust_scores_use_the_best_epoch():
    def run(name, bests):
        return RunResult(name, [RepeatResult(seed, [1, 2], [best - 5, best], 10, 1.0)
                                for seed, best in enumerate(bests)])

    scores = run_robust_scores({"distilled": run("distilled", [60, 70]), "random": run("random", [50, 50])})
    assert scores["ior"]["values"] == [10.0, 20.0] and "hlr" not in scores


def test_printed_and_carded():
    scores = robust_scores([60.0, 40.0], random=[50.0, 45.0], full=[90.0, 80.0])
    text = robust_text(scores)
    assert text.startswith("HLR 35.0 ± 5.0   IOR +2.5 ± 7.5   LRS 0.")
    assert robust_text({"ior": {"mean": -1.25, "std": 0.5}}) == "IOR -1.2 ± 0.5" and robust_text(None) == ""
    entry = {"protocol": "hard", "student": "resnetap10", "best_mean": 60.0, "best_std": 1.0, "final_mean": 59.0,
             "final_std": 1.0, "robust": {k: {"mean": v["mean"], "std": v["std"]} for k, v in scores.items()},
             "baselines": {"random": {"best_mean": 47.5, "best_std": 2.5}}}
    this, baseline = evaluation_rows([entry])
    assert this["robust"] == text and "robust" not in this["details"]
    assert baseline["robust"] == "—"

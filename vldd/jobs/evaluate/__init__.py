"""Scoring a distilled set the way the field does (docs/evaluation.md): train a student on it, test it on real val images.

Two protocols, each as the harness VLCP's numbers come from (docs/faithfulness.md, "Evaluation harnesses"):

- "hard" (Minimax; ImageNette, ImageWoof, ImageIDC, ImageNet-100): ResNetAP-10 (or ConvNet-6, or ResNet-18 with
  instance norm), SGD + MultiStepLR, CutMix every batch, Resize + CenterCrop then RandomResizedCrop/flip/IDC colour
  jitter/PCA lighting, 3000/2000/1500/1000 epochs by IPC (x2/3 for 100 classes), tested every E/100 epochs on
  Resize(224) + CenterCrop(224), fp32.
- "soft" (RDED; ImageNet-1K, CIFAR, Tiny-ImageNet): ResNet-18 learns a teacher's soft labels online (KL at T=20),
  AdamW with a half-cosine schedule, ShufflePatches, 500 epochs (VLCP's scripts), tested every 10 epochs in the
  last 20%.

Image size, ShufflePatches factor and batch size follow the real dataset and the IPC (`vldd.configs.profiles`). Several
distilled sets (the paper's seeds 0/1/2) can be evaluated together: the report gives mean ± std over sets x repeats
and each set's own. Both the best tested accuracy (what papers report) and the final-epoch accuracy are reported,
optionally beside a random real subset of the same IPC or the full real train set trained identically (or those
baselines alone, without a distilled set, at a given IPC). Finished trainings are kept beside the results file, so an
interrupted evaluation resumes; the report's time sums every training it holds, reused ones included.

Example:
    >>> result = evaluate(EvalConfig(distilled=["runs/nette/seed0", "runs/nette/seed1", "runs/nette/seed2"],
    ...                              real="frgfm/imagenette", protocol="hard", baselines=["random"]))
    >>> print(result.runs["distilled"].stats())

The package, along its seams: `recipes` (the protocols' rules and the resolved `Recipe`), `data` (real splits and
distilled sets as labelled rows, loaders), `results` (accuracies, robust scores, plot, report), `train` (one student's
training and test), `run` (`evaluate`, the entry point). `EvalConfig`, the settings, is in `vldd.configs.evaluate`.
"""

from ...configs.evaluate import EvalConfig
from .results import EvalResult, robust_scores
from .run import evaluate

__all__ = ["EvalConfig", "EvalResult", "evaluate", "robust_scores"]

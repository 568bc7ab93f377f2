"""`vldd` command line: a thin layer that turns flags into configs and calls the library.

Every field of a job's config dataclass is a flag (`--ipc`, `--generation.guidance_scale 8`, `--learning-rate`, ...),
made by one generator (`vldd.cli.flags.add_config_flags`) whose help texts are the fields' comments; a YAML file
given with `--config` holds a whole run and flags override it. Each subcommand is a `_add_<name>` builder listed in `COMMANDS`.
Bad input ends in one line, `vldd: error: ...`, and exit code 2 (`-v` adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ..configs import distill as cfg
from ..configs import evaluate as eval_cfg
from ..configs import finetune as ft_cfg
from ..configs.base import merge, read_yaml
from ..configs.teacher import TeacherConfig
from ..core.devices import hub_kernels_for_process
from ..core.runs import RunDirBusyError, check_output_dir, run_dir_lock
from ..jobs import reports
from .flags import Parser, add_config_flags, config_fields, given, nested

# Nothing here imports torch, diffusers, transformers or datasets at module level: the config modules are plain
# Python, so `vldd --help` and `vldd <command> --help` start in a fraction of a second; each command imports what it
# needs when it runs.

logger = logging.getLogger("vldd")

# Short spellings for the flags people type most.
ALIASES = {"dataset": "data.dataset", "classes": "data.classes", "split": "data.split",
           "max_images_per_class": "data.max_images_per_class", "captioner": "caption.model",
           "diffusion_model": "generation.model", "lora": "generation.lora"}


def _command(sub, name: str, summary: str, details: str = "", *, func: Callable[[argparse.Namespace], int],
             **defaults) -> argparse.ArgumentParser:
    """Adds the subcommand `name`: its one-line help `summary`, its description (the summary, then `details`) and
    the handler `func` that runs it (with `defaults`, more values set on `args`)."""
    p = sub.add_parser(name, help=summary, description=f"{summary}. {details}" if details else summary)
    p.set_defaults(func=func, **defaults)
    return p


def _dashed_flags(parser: argparse.ArgumentParser, cls: type, dest: str, spellings: dict[str, list[str]] | None = None,
                  **options) -> None:
    """One `--field-name` flag per field of the config `cls` (booleans as --x/--no-x switches), or the `spellings`
    given for a field; `options` as `add_config_flags` takes them."""
    spellings = spellings or {}
    add_config_flags(parser, config_fields(cls), dest=dest, switches=True,
                     flags=lambda name: spellings.get(name, [f"--{name.replace('_', '-')}"]), **options)


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """`--config` and one flag per `DistillConfig` field (`--ipc`, `--generation.guidance_scale`, aliases)."""
    parser.add_argument("--config", metavar="YAML", help="YAML file holding a whole run; flags override it")
    group = parser.add_argument_group("run settings (defaults: the paper preset's; --preset tiny changes some)")
    reverse = {v: k for k, v in ALIASES.items()}
    add_config_flags(group, config_fields(cfg.DistillConfig), dest="cfg",
                     flags=lambda name: [f"--{name}"] + ([f"--{reverse[name].replace('_', '-')}"]
                                                         if name in reverse else []),
                     choices={"preset": list(cfg.PRESETS)},
                     metavars={"output": "DIR", "data.dataset": "ID|DIR", "caption.model": "ID|DIR",
                               "generation.model": "ID|DIR", "generation.lora": "ID|DIR"})
    group.add_argument("--no-finetune", dest="cfg:finetune.enabled", action="store_const", const=False,
                       default=None, help="generate with the base model, not fine-tuned (D4M-style); same as "
                       "--finetune.enabled false")


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


def config_from_args(args: argparse.Namespace) -> cfg.DistillConfig:
    overrides = nested(args, "cfg")
    run_config = Path(overrides.get("output", "")) / "config.yaml"
    path = args.config
    if path is None and overrides.get("output") and run_config.is_file() and getattr(args, "reuse_config", False):
        path = run_config  # single-stage commands reuse the run's own config
    return cfg.load_config(path, overrides)


def _processes(device: str):
    """Under `accelerate launch` (WORLD_SIZE > 1): this process's `Processes` and its device; else (None, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    import torch
    from accelerate import PartialState

    from ..core.devices import Processes

    # On a machine without CUDA, torchrun's processes (`accelerate launch --multi_gpu`) talk through gloo.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if device == "auto":
        device = str(state.device) if state.device.type == "cuda" else "cpu"
    return Processes.from_accelerate(state), device


def _launch_key() -> str | None:
    """Names this process's `accelerate launch` (its rendezvous), so that its ranks share the run's lock."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return ":".join(os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))


def _cache_dir_flag(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--cache-dir", default=os.environ.get("VLDD_CACHE", default),
                        help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")


def _run_stages(stages):
    def run(args):
        config = config_from_args(args)
        hub_kernels_for_process(config.hub_kernels)
        with run_dir_lock(config.output, launch=_launch_key()):
            from ..jobs.distill import distill

            processes, device = _processes(config.device)
            config.device = device
            result = distill(config, stages=stages, cache_dir=args.cache_dir, progress=not args.quiet,
                             processes=processes)
        if processes is None or processes.is_main:
            _print(reports.distill_lines(result))
        return 0

    return run


def _add_stage_commands(sub):
    stages_of = cfg.STAGE_COMMANDS
    entries = {
        "distill": (None, "run every stage: caption, fine-tune, prototypes, text prototypes, generate, write the "
                          "dataset"),
        "caption": (stages_of["caption"], "caption the source images (stage 1)"),
        "prototypes": (stages_of["prototypes"], "build image and text prototypes (stages 3-4; captions first)"),
        "generate": (None, "generate the distilled images from the run's prototypes (stage 5 and output; resumes "
                           "every earlier stage)"),
    }
    for name, (stages, help_text) in entries.items():
        p = _command(sub, name, help_text, func=_run_stages(stages), reuse_config=name != "distill")
        _run_flags(p)
        _cache_dir_flag(p, str(Path.home() / ".cache" / "vldd"))


def _push(args) -> int:
    from ..hub.push import push_captions, push_distilled

    shared = {"private": args.private, "max_shard_size": args.max_shard_size, "progress": not args.quiet}
    if args.captions and (args.config_name or args.default):
        raise ValueError("--config-name and --default apply to distilled sets, not to --captions")
    # Only an existing directory is locked: a missing one is reported as "not a run directory" by the push.
    with run_dir_lock(args.run_dir) if Path(args.run_dir).is_dir() else contextlib.nullcontext():
        if args.captions:
            result = push_captions(args.run_dir, args.repo, **shared)
        else:
            result = push_distilled(args.run_dir, args.repo, config_name=args.config_name, default=args.default,
                                    **shared)
    name = "" if args.captions else f', "{result.config_name}"'
    print(f"published {result.num_rows} rows to {result.url} (configuration {result.config_name})")
    print(f'load it with: datasets.load_dataset("{result.repo_id}"{name}, split="train")')
    return 0


def _add_push(sub):
    p = _command(sub, "push", "publish a run's distilled set (or, with --captions, its captions) to the Hugging Face "
                 "Hub", "The token comes from HF_TOKEN, else from `hf auth login`; it needs write access.", func=_push)
    p.add_argument("run_dir", help="run directory (holds manifest.json, dataset/ and captions/)")
    p.add_argument("--repo", metavar="NAMESPACE/NAME", help="target dataset repository (a bare NAME goes to your "
                   "namespace); default <you>/<source>-vldd-ipc<N>, or <you>/<source>-vldd-captions with --captions")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--captions", action="store_true", help="publish the run's captions as their own dataset")
    p.add_argument("--config-name", help="dataset configuration to publish the run as (default ipc<N>-seed<S>)")
    p.add_argument("--default", action="store_true",
                   help="make this configuration the one load_dataset(repo) loads (the first one pushed always is)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="largest parquet shard, e.g. 500MB (the default)")


def _evaluate(args) -> int:
    from ..jobs.evaluate import EvalConfig, evaluate

    values = given(args, "eval")
    config = EvalConfig(**values)
    if config.output is not None and Path(config.output).is_dir():
        raise ValueError(f"--output {config.output!r} is a directory; expected the results JSON file to write")
    if config.output is not None:
        check_output_dir(Path(config.output).parent, "directory of --output")
    processes, device = _processes(config.device)
    result = evaluate(config, device=device if processes else None, progress=not args.quiet, processes=processes)
    if processes is None or processes.is_main:
        _print(reports.evaluation_lines(result))
    return 0


def _add_evaluate(sub):
    p = _command(sub, "evaluate", "score a distilled set: train students on it and test them on real images (hard or "
                 "soft labels)", "Defaults are the protocols' published settings; see vldd/configs/evaluate.py "
                 "(EvalConfig).", func=_evaluate)
    _dashed_flags(p, eval_cfg.EvalConfig, "eval", spellings={"baselines": ["--baseline"]},
                  choices={"protocol": eval_cfg.PROTOCOLS, "baselines": eval_cfg.BASELINES},
                  metavars={"distilled": "RUN_DIR|ID|DIR", "real": "ID|DIR", "output": "JSON", "class_names": "FILE",
                            "teacher_class_names": "FILE", "teacher": "FILE|ID"}, several=["distilled", "baselines"])


def _teacher(args) -> int:
    from ..jobs.teacher import train_teacher

    result = train_teacher(TeacherConfig(**given(args, "teacher")), progress=not args.quiet)
    _print(reports.teacher_lines(result) if result.is_main else [])
    return 0


def _add_teacher(sub):
    p = _command(sub, "teacher", "train the teacher the soft-label protocol needs on a real dataset (ResNet-18, SGD + "
                 "cosine)", "Resumes a stopped run; runs under `accelerate launch`. Recipe: see "
                 "vldd/configs/teacher.py (TeacherConfig).", func=_teacher)
    _dashed_flags(p, TeacherConfig, "teacher", choices={"mixed_precision": ft_cfg.MIXED_PRECISIONS},
                  metavars={"real": "ID|DIR", "output": "FILE"}, required=["real"])


def _plan(args) -> int:
    from ..jobs.plan import plan_run

    config = config_from_args(args)
    hub_kernels_for_process(config.hub_kernels)
    load = os.getloadavg()[0]
    estimates = plan_run(config, cache_dir=args.cache_dir, processes=args.processes)
    _print(reports.plan_lines(estimates, args.processes))
    import torch

    if config.device == "cpu" or not torch.cuda.is_available():  # CPU timings under load: said, not hidden
        note = reports.busy_machine_note(max(load, os.getloadavg()[0]), os.cpu_count() or 1, torch.get_num_threads())
        if note:
            print(note)
    if config.is_tiny:
        print("NOTE: tiny preset: the figures are for the random-weight test models, not real ones")
    return 0


def _add_plan(sub):
    p = _command(sub, "plan", "estimate each stage's time and memory on this device before running (measures a few "
                 "items)", func=_plan, reuse_config=False)
    _run_flags(p)
    p.add_argument("--processes", type=int, default=1, help="processes (GPUs) that will share the run")
    _cache_dir_flag(p, str(Path.home() / ".cache" / "vldd"))


def _finetune(args) -> int:
    from ..jobs.finetune import finetune, finetune_config

    values = given(args, "ft")
    if args.run_dir and values.get("captions") not in (None, args.run_dir):
        raise ValueError(f"give the captions once: a run directory ({args.run_dir!r}) or --captions "
                         f"({values['captions']!r}), not both")
    values.setdefault("captions", args.run_dir)
    if not values["captions"]:
        raise ValueError("give the captions: a run directory (vldd finetune RUN_DIR ...) or --captions HUB_ID")
    config = finetune_config(args.preset, **values)
    hub_kernels_for_process(config.hub_kernels)
    check_output_dir(config.output, "output directory")
    result = finetune(config, cache_dir=args.cache_dir, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, only the main process reports
        _print(reports.finetune_lines(result))
    return 0


def _add_finetune(sub):
    p = _command(sub, "finetune", "fine-tune Stable Diffusion on a run's (image, caption) pairs, fully or with LoRA "
                 "(VLCP step 2); multi-GPU with `accelerate launch -m vldd.cli.commands finetune ...`", "Defaults are "
                 "the paper's recipe; see vldd/configs/finetune.py (FinetuneConfig). A rerun with the same --output "
                 "resumes from its newest checkpoint.", func=_finetune)
    p.add_argument("run_dir", nargs="?", help="run directory whose captions/ (and manifest.json) to train on")
    p.add_argument("--preset", choices=sorted(ft_cfg.PRESETS), default="paper",
                   help="starting values: paper (default) or tiny (the CPU test model)")
    _dashed_flags(p, ft_cfg.FinetuneConfig, "ft", spellings={"base_model": ["--base-model", "--base"]},
                  metavars={"captions": "RUN_DIR|DIR|HUB_ID", "base_model": "SD_ID|DIR", "push_to_hub": "REPO",
                            "output": "DIR"})
    _cache_dir_flag(p, str(Path.home() / ".cache" / "vldd"))


def _app(args) -> int:
    from ..app import serve

    serve(args)  # until Ctrl+C
    return 0


def _add_app(sub):
    from ..app.flags import add_flags  # argparse only: the app itself is imported when the command runs

    add_flags(_command(sub, "app", "serve the Gradio app locally (the same app that runs as a Hugging Face Space)",
                       "Settings: vldd/app/settings.yaml, and --config FILE on top of them.", func=_app))


def _run_study(args, what: str, job: Callable, lines: Callable, lock: bool = False, missing: str | None = None) -> int:
    """`reproduce` and `ablate`: runs `job(output, seeds=..., distill_overrides=..., eval_overrides=..., ...)` with
    the settings the flags give (a --config YAML file of distillation settings under the flags), prints `lines`.
    `missing`: what the command still lacks (an error once the output is known)."""
    distill_overrides = nested(args, "cfg")
    if args.config:  # a YAML file of distillation settings; flags win
        distill_overrides = merge(read_yaml(args.config), distill_overrides)
    output = distill_overrides.pop("output", None)
    if not output:
        raise ValueError(f"`--output` must name the {what}'s directory")
    if missing:
        raise ValueError(missing)
    hub_kernels_for_process(distill_overrides.get("hub_kernels", False))
    eval_overrides = nested(args, "eval")
    processes, device = _processes(eval_overrides.get("device", "auto"))
    if processes is not None:
        distill_overrides.setdefault("device", device)
        eval_overrides["device"] = device
    with run_dir_lock(output, launch=_launch_key()) if lock else contextlib.nullcontext():
        result = job(output, seeds=tuple(args.seeds), distill_overrides=distill_overrides,
                     eval_overrides=eval_overrides, cache_dir=args.cache_dir, progress=not args.quiet,
                     processes=processes)
    if processes is None or processes.is_main:
        _print(lines(result))
    return 0


def _study_flags(p: argparse.ArgumentParser, *, seeds: list[int], seeds_help: str, evaluation: str,
                 leave_out: tuple[str, ...]) -> None:
    """`reproduce` and `ablate`: --seeds, the run's flags (--output DIR holds every run and the evaluation) and the
    evaluation's overrides (`--eval.<field>`, but for the fields in `leave_out`, which the command decides)."""
    p.add_argument("--seeds", type=lambda text: [int(t) for t in text.split(",")], default=seeds, help=seeds_help)
    _run_flags(p)
    group = p.add_argument_group(f"evaluation overrides{evaluation} (see vldd/configs/evaluate.py EvalConfig)")
    add_config_flags(group, [f for f in config_fields(eval_cfg.EvalConfig) if f.name not in leave_out], dest="eval",
                     flags=lambda name: [f"--eval.{name}"])
    _cache_dir_flag(p, str(Path.home() / ".cache" / "vldd"))


def _reproduce(args) -> int:
    from ..jobs.reproduce import reproduce

    return _run_study(args, "reproduction", functools.partial(reproduce, args.cell), reports.reproduce_lines)


def _add_reproduce(sub):
    p = _command(sub, "reproduce", "reproduce a published VLCP number: distill seeds 0/1/2 with the paper preset, "
                 "evaluate them beside a random real subset, print the table next to the paper's", func=_reproduce)
    from ..jobs.reproduce import CELLS  # a light module: no model library

    p.add_argument("cell", choices=sorted(CELLS), help="the published number (dataset, IPC, protocol)")
    # --output DIR: seed<S>/ run dirs, evaluation/, reproduce.json
    _study_flags(p, seeds=[0, 1, 2], seeds_help="comma-separated distillation seeds (default: 0,1,2 as the paper)",
                 evaluation="", leave_out=("distilled", "protocol", "baselines", "output", "ipc", "class_names"))


def _ablate(args) -> int:
    from ..jobs.ablate import ablate, custom_variant, parse_variant

    variants = [parse_variant(name) for name in args.variants or []]
    variants += [custom_variant(name, settings) for name, *settings in args.set or []]
    missing = None if variants else ("give the variants to compare: --variants base no-lof ... and/or --set NAME "
                                     "KEY=VALUE ...")
    return _run_study(args, "ablation", functools.partial(ablate, variants), reports.ablation_lines, lock=True,
                      missing=missing)


def _add_ablate(sub):
    p = _command(sub, "ablate", "ablate VLCP: distill named variants of one run (stages they do not change are "
                 "computed once), evaluate them all beside the random and full real baselines, write one table",
                 "Variants: base (or paper: the run as given), no-text-prototypes (class-name prompts, D4M-style), "
                 "no-lof (contamination 0), no-finetune, tpk=N, threshold=X, or --set NAME KEY=VALUE ... groups.",
                 func=_ablate)
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help="named variants, e.g. base no-text-prototypes no-lof no-finetune tpk=20 threshold=0.5")
    p.add_argument("--set", nargs="+", action="append", metavar="NAME KEY=VALUE",
                   help="a variant of your own: its name, then the settings it changes (e.g. --set strength05 "
                   "generation.strength=0.5); may be repeated")
    # --output DIR: <variant>/seed<S>/ run dirs, evaluation/, ablation.*; the distillation as given
    _study_flags(p, seeds=[0], seeds_help="comma-separated distillation seeds, each variant's sets evaluated together "
                 "(default: 0)", evaluation=", one recipe for every variant",
                 leave_out=("distilled", "baselines", "output", "record", "ipc", "class_names"))


COMMANDS = [_add_stage_commands, _add_plan, _add_push, _add_evaluate, _add_teacher, _add_finetune, _add_app,
            _add_reproduce, _add_ablate]


VERBOSE_HELP = "debug logging, and tracebacks with errors"
QUIET_HELP = "no progress bars (vldd's, and those of datasets, transformers, diffusers and huggingface_hub)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vldd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # -v also after the command (`vldd distill -v`), where errors suggest it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        command.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return parser


# The environment variables that silence the Hugging Face libraries' bars in libraries imported later and in child
# processes (`accelerate launch` ranks); libraries already imported are silenced through their functions.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
# Commands that load diffusers anyway: silencing its bars (a module flag, no environment variable) imports it.
_DIFFUSERS_COMMANDS = {"distill", "caption", "prototypes", "generate", "plan", "finetune", "reproduce", "app"}


@contextlib.contextmanager
def library_progress_bars(enabled: bool, diffusers: bool = True):
    """Within the block, turns the progress bars of huggingface_hub, datasets, transformers and (with `diffusers`)
    diffusers off unless `enabled`; restores them and the environment afterwards."""
    if enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    restore: list[Callable[[], None]] = []
    switches = [  # module, "are the bars on?", disable, enable
        ("huggingface_hub.utils", lambda m: not m.are_progress_bars_disabled(), "disable_progress_bars",
         "enable_progress_bars"),
        ("datasets", lambda m: m.is_progress_bar_enabled(), "disable_progress_bars", "enable_progress_bars"),
        ("transformers.utils.logging", lambda m: m.is_progress_bar_enabled(), "disable_progress_bar",
         "enable_progress_bar"),
        ("diffusers.utils.logging", lambda m: m.is_progress_bar_enabled(), "disable_progress_bar",
         "enable_progress_bar")]
    for module, is_on, disable, enable in switches:
        lib = sys.modules.get(module)
        if lib is None and module.startswith("diffusers") and diffusers:
            lib = importlib.import_module(module)
        if lib is not None and is_on(lib):
            getattr(lib, disable)()
            restore.append(getattr(lib, enable))
    try:
        yield
    finally:
        for enable in restore:
            enable()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_user_error(err: Exception) -> bool:
    """Errors that mean "this input is wrong" (exit code 2, one line); anything else is a bug and keeps its trace."""
    errors: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, NotADirectoryError, RunDirBusyError)
    if "vldd.hub.names" in sys.modules:  # only a command that imported it can raise it
        errors += (sys.modules["vldd.hub.names"].HubError,)
    return isinstance(err, errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with library_progress_bars(not args.quiet, diffusers=args.command in _DIFFUSERS_COMMANDS):
            return args.func(args) or 0
    except Exception as err:
        if not _is_user_error(err):
            raise
        if args.verbose:
            traceback.print_exception(err, file=sys.stderr)
        print(f"vldd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`vldd` command line: a thin layer that turns flags into configs and calls the library.

Every `DistillConfig` field is a flag (`--ipc`, `--generation.guidance_scale 8`, ...), generated from the dataclasses;
a YAML file given with `--config` holds a whole run and flags override it. Each subcommand is a `_add_<name>` builder
listed in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from pathlib import Path

from . import config as cfg

logger = logging.getLogger("vldd")

# Short spellings for the flags people type most.
ALIASES = {"dataset": "data.dataset", "classes": "data.classes", "split": "data.split",
           "max_images_per_class": "data.max_images_per_class", "captioner": "caption.model",
           "diffusion_model": "generation.model", "lora": "generation.lora"}


def _parse_value(kind, text: str):
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(kind):
        return None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _parse_value(args[0], text)
    if origin is list or (args and typing.get_origin(args[0]) is list):
        return [int(t) if t.strip().isdigit() else t.strip() for t in text.split(",") if t.strip()]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def _config_fields():
    """Yields (dotted name, type, help) for every config field."""
    hints = typing.get_type_hints(cfg.DistillConfig)
    for f in dataclasses.fields(cfg.DistillConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            section_hints = typing.get_type_hints(hints[f.name])
            for sf in dataclasses.fields(hints[f.name]):
                yield f"{f.name}.{sf.name}", section_hints[sf.name]
        else:
            yield f.name, hints[f.name]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file holding a whole run; flags override it")
    group = parser.add_argument_group("run settings (see vldd/config.py for meanings and units)")
    reverse = {v: k for k, v in ALIASES.items()}
    for name, kind in _config_fields():
        flags = [f"--{name}"] + ([f"--{reverse[name].replace('_', '-')}"] if name in reverse else [])
        group.add_argument(*flags, dest=f"cfg:{name}", default=None, metavar="VALUE",
                           type=lambda text, kind=kind: _parse_value(kind, text))


def config_from_args(args: argparse.Namespace) -> cfg.DistillConfig:
    overrides: dict = {}
    for key, value in vars(args).items():
        if key.startswith("cfg:") and value is not None:
            node = overrides
            *parents, leaf = key[4:].split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
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

    from .pipeline import Processes

    # On a machine without CUDA, torchrun's processes (`accelerate launch --multi_gpu`) talk through gloo.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if device == "auto":
        device = str(state.device) if state.device.type == "cuda" else "cpu"
    return Processes.from_accelerate(state), device


def _run_stages(stages):
    def run(args):
        from .pipeline import distill

        config = config_from_args(args)
        processes, device = _processes(config.device)
        config.device = device
        result = distill(config, stages=stages, cache_dir=args.cache_dir, progress=not args.quiet,
                         processes=processes)
        if processes is None or processes.is_main:
            for line in result.summary_lines():
                print(line)
        return 0

    return run


def _add_stage_commands(sub):
    entries = {
        "distill": (None, "run every stage: caption, prototypes, text prototypes, generate, write the dataset"),
        "caption": (("caption",), "caption the source images (stage 1)"),
        "prototypes": (("caption", "prototypes", "text"), "build image and text prototypes (stages 2-3)"),
        "generate": (None, "generate the distilled images from the run's prototypes (stage 4 and output)"),
    }
    for name, (stages, help_text) in entries.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_flags(p)
        p.add_argument("--cache-dir", default=os.environ.get("VLDD_CACHE", str(Path.home() / ".cache" / "vldd")),
                       help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=_run_stages(stages), reuse_config=name != "distill")


def _push(args) -> int:
    from .hub import HubError, push_captions, push_distilled

    shared = {"private": args.private, "max_shard_size": args.max_shard_size, "progress": not args.quiet}
    try:
        if args.captions:
            if args.config_name or args.default:
                raise ValueError("--config-name and --default apply to distilled sets, not to --captions")
            result = push_captions(args.run_dir, args.repo, **shared)
        else:
            result = push_distilled(args.run_dir, args.repo, config_name=args.config_name, default=args.default,
                                    **shared)
    except HubError as err:
        print(f"vldd: error: {err}", file=sys.stderr)
        return 2
    name = "" if args.captions else f', "{result.config_name}"'
    print(f"published {result.num_rows} rows to {result.url} (configuration {result.config_name})")
    print(f'load it with: datasets.load_dataset("{result.repo_id}"{name}, split="train")')
    return 0


def _add_push(sub):
    help_text = "publish a run's distilled set (or, with --captions, its captions) to the Hugging Face Hub"
    p = sub.add_parser("push", help=help_text, description=f"{help_text}. The token comes from HF_TOKEN, else "
                       "from `hf auth login`; it needs write access.")
    p.add_argument("run_dir", help="run directory (holds manifest.json, dataset/ and captions/)")
    p.add_argument("--repo", metavar="NAMESPACE/NAME", help="target dataset repository (a bare NAME goes to your "
                   "namespace); default <you>/<source>-vldd-ipc<N>, or <you>/<source>-vldd-captions with --captions")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--captions", action="store_true", help="publish the run's captions as their own dataset")
    p.add_argument("--config-name", help="dataset configuration to publish the run as (default ipc<N>-seed<S>)")
    p.add_argument("--default", action="store_true",
                   help="make this configuration the one load_dataset(repo) loads (the first one pushed always is)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="largest parquet shard, e.g. 500MB (the default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_push)


def _evaluate(args) -> int:
    from .evaluation import EvalConfig, evaluate

    values = {k[5:]: v for k, v in vars(args).items() if k.startswith("eval:") and v is not None}
    config = EvalConfig(**values)
    processes, device = _processes(config.device)
    result = evaluate(config, device=device if processes else None, progress=not args.quiet, processes=processes)
    if processes is None or processes.is_main:
        for line in result.summary_lines():
            print(line)
    return 0


def _add_evaluate(sub):
    from .evaluation import BASELINES, PROTOCOLS, EvalConfig

    help_text = "score a distilled set: train students on it and test them on real images (hard or soft labels)"
    p = sub.add_parser("evaluate", help=help_text, description=f"{help_text}. See vldd/evaluation.py (EvalConfig) "
                       "for every setting's meaning and units.")
    hints = typing.get_type_hints(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        kind, flag = hints[f.name], f"--{f.name.replace('_', '-')}"
        if f.name == "baselines":
            p.add_argument("--baseline", dest="eval:baselines", action="extend", default=None,
                           metavar="{" + ",".join(BASELINES) + "}", type=lambda text: [t for t in text.split(",") if t],
                           help="also train on a same-IPC random real subset and/or the full real train set")
        elif kind is bool:
            p.add_argument(flag, dest=f"eval:{f.name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            choices = PROTOCOLS if f.name == "protocol" else None
            p.add_argument(flag, dest=f"eval:{f.name}", default=None, required=f.name == "distilled",
                           choices=choices, metavar=None if choices else "VALUE",
                           type=lambda text, kind=kind: _parse_value(kind, text))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)


def _plan(args) -> int:
    from .plan import finetune_recipe, format_plan, plan_run

    config = config_from_args(args)
    estimates = plan_run(config, cache_dir=args.cache_dir, processes=args.processes, finetune=finetune_recipe(config))
    for line in format_plan(estimates, args.processes):
        print(line)
    if config.is_tiny:
        print("NOTE: tiny preset: the figures are for the random-weight test models, not real ones")
    return 0


def _add_plan(sub):
    help_text = "estimate each stage's time and memory on this device before running (measures a few items)"
    p = sub.add_parser("plan", help=help_text, description=help_text)
    add_config_flags(p)
    p.add_argument("--processes", type=int, default=1, help="processes (GPUs) that will share the run")
    p.add_argument("--cache-dir", default=os.environ.get("VLDD_CACHE", str(Path.home() / ".cache" / "vldd")),
                   help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
    p.set_defaults(func=_plan, reuse_config=False)


def _finetune(args) -> int:
    from .finetuning import finetune, finetune_config

    values = {k[3:]: v for k, v in vars(args).items() if k.startswith("ft:") and v is not None}
    if args.run_dir and values.get("captions") not in (None, args.run_dir):
        raise ValueError(f"give the captions once: a run directory ({args.run_dir!r}) or --captions "
                         f"({values['captions']!r}), not both")
    values.setdefault("captions", args.run_dir)
    if not values["captions"]:
        raise ValueError("give the captions: a run directory (vldd finetune RUN_DIR ...) or --captions HUB_ID")
    result = finetune(finetune_config(args.preset, **values), cache_dir=args.cache_dir, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, only the main process reports
        for line in result.summary_lines():
            print(line)
    return 0


def _field_comments(cls) -> dict[str, str]:
    """A dataclass's end-of-line field comments, as flag help."""
    import inspect
    import re

    found = (re.match(r"\s+(\w+): [^=]+=.*?  # (.*)$", line) for line in inspect.getsource(cls).splitlines())
    return {m.group(1): m.group(2).replace("%", "%%") for m in found if m}


def _add_finetune(sub):
    from .finetuning import PRESETS, FinetuneConfig

    help_text = ("fine-tune Stable Diffusion on a run's (image, caption) pairs, fully or with LoRA (VLCP step 2); "
                 "multi-GPU with `accelerate launch -m vldd.cli finetune ...`")
    p = sub.add_parser("finetune", help=help_text, description=f"{help_text}. Defaults are the paper's recipe; see "
                       "vldd/finetuning.py (FinetuneConfig). A rerun with the same --output resumes from its newest "
                       "checkpoint.")
    p.add_argument("run_dir", nargs="?", help="run directory whose captions/ (and manifest.json) to train on")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="starting values: paper (default) or tiny (the CPU test model)")
    hints, comments = typing.get_type_hints(FinetuneConfig), _field_comments(FinetuneConfig)
    aliases = {"base_model": ["--base"], "push_to_hub": [], "captions": []}
    for f in dataclasses.fields(FinetuneConfig):
        kind, flags = hints[f.name], [f"--{f.name.replace('_', '-')}", *aliases.get(f.name, [])]
        if kind is bool:
            p.add_argument(*flags, dest=f"ft:{f.name}", action=argparse.BooleanOptionalAction, default=None,
                           help=comments.get(f.name))
        else:
            metavar = {"captions": "RUN_DIR|DIR|HUB_ID", "base_model": "SD_ID|DIR", "push_to_hub": "REPO",
                       "output": "DIR"}.get(f.name, "VALUE")
            p.add_argument(*flags, dest=f"ft:{f.name}", default=None, metavar=metavar, help=comments.get(f.name),
                           type=lambda text, kind=kind: _parse_value(kind, text))
    p.add_argument("--cache-dir", default=os.environ.get("VLDD_CACHE", str(Path.home() / ".cache" / "vldd")),
                   help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_finetune)


def find_app_file() -> Path:
    """The Gradio app's app.py: beside the vldd package (a checkout), else in the current directory."""
    for path in (Path(__file__).resolve().parents[1] / "app.py", Path.cwd() / "app.py"):
        if path.is_file():
            return path
    raise FileNotFoundError("app.py was not found beside the vldd package or in the current directory; run "
                            "`vldd app` from a vldd checkout (the app is the repository's app.py)")


def _app(args) -> int:
    import runpy

    path = find_app_file()
    if args.cache_dir:
        os.environ["VLDD_CACHE"] = args.cache_dir
    forwarded = [*(["--host", args.host] if args.host else []), *(["--port", str(args.port)] if args.port else []),
                 *(["--share"] if args.share else [])]
    sys.argv = [str(path), *forwarded]
    runpy.run_path(str(path), run_name="__main__")  # app.py's main(): builds the demo and serves it until Ctrl+C
    return 0


def _add_app(sub):
    help_text = "serve the Gradio app locally (the same app.py that runs as a Hugging Face Space)"
    p = sub.add_parser("app", help=help_text, description=f"{help_text}. Settings: spaces_config.yaml.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, help="port (default 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    p.add_argument("--cache-dir", default=os.environ.get("VLDD_CACHE"),
                   help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
    p.set_defaults(func=_app)


COMMANDS = [_add_stage_commands, _add_plan, _add_push, _add_evaluate, _add_finetune, _add_app]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vldd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"vldd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

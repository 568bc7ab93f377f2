"""The CLI explains itself (help on every flag, fast --help) and turns bad input into one-line errors (exit 2)."""

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from vldd.cli import commands as cli
from vldd.cli.commands import build_parser, main
from vldd.cli.flags import config_fields, module_comments
from vldd.configs.distill import DistillConfig
from vldd.configs.teacher import TeacherConfig
from vldd.core import runs
from vldd.core.runs import LOCK, RunDirBusyError, run_dir_lock
from vldd.jobs.evaluate import EvalConfig
from vldd.jobs.finetune import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]


def subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_of_every_command_has_help():
    commands = subcommands(build_parser())
    assert {"distill", "caption", "prototypes", "generate", "plan", "push", "evaluate", "finetune", "app"} <= set(
        commands)
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"vldd {name} {action.option_strings or action.dest}"


def flattened(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from flattened(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            yield f"{prefix}{f.name}", hints[f.name], default


@pytest.mark.parametrize("cls", [DistillConfig, EvalConfig, FinetuneConfig, TeacherConfig])
def test_flags_are_the_dataclasses_fields_each_with_its_comment(cls):
    read = {f.name: f for f in config_fields(cls)}
    real = list(flattened(cls))
    assert list(read) == [name for name, _, _ in real]
    for name, kind, default in real:
        assert read[name].kind == kind, name
        assert read[name].help, f"{cls.__name__}.{name} has no comment to serve as its help"
        if read[name].default is not dataclasses.MISSING:
            assert read[name].default == default, name


def test_comments_are_read_from_the_source_end_of_line_or_above():
    comments = module_comments("vldd.configs.distill")
    assert comments["GenerationConfig"]["guidance_scale"] == "classifier-free guidance (D4M: 8)"
    # a comment block right above a field, joined; the field's own line has none
    assert comments["DataConfig"]["numeric_names"].startswith("class names that are only digits (\"00000\", as the")
    assert comments["DataConfig"]["numeric_names"].endswith("give the real names with `data.class_names` instead")
    assert "profile" not in comments["DistillConfig"]  # statements in methods are not fields
    assert set(comments["TextPrototypeConfig"]) == {"top_k", "common_threshold", "fallback", "mode"}


def test_fine_tuning_stage_flags_take_their_help_from_the_recipe():
    read = {f.name: f for f in config_fields(DistillConfig)}
    recipe = {f.name: f for f in config_fields(FinetuneConfig)}
    assert read["finetune.learning_rate"].help == f"{recipe['learning_rate'].help}; None = the recipe's (paper: 1e-05)"
    assert read["finetune.resolution"].help.startswith(recipe["resolution"].help + "; None = derived")
    assert read["finetune.learning_rate"].kind == float | None and read["finetune.learning_rate"].default is None
    assert read["finetune.enabled"].kind is bool and read["finetune.enabled"].default is True


def test_help_shows_meaning_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--generation.guidance_scale VALUE classifier-free guidance (D4M: 8) (default: 10.0)" in text
    assert "--preset {paper,tiny}" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--protocol {hard,soft}" in text and "--baseline {random,full}" in text
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--learning-rate VALUE AdamW learning rate (paper, full fine-tuning; LoRA usually wants ~1e-4) " \
           "(default: 1e-05)" in text


def test_generated_flags_parse_into_the_configs():
    args = build_parser().parse_args(["distill", "--classes", "circle,3", "--classes", "stripes",
                                      "--data.streaming", "true", "--generation.guidance_scale", "8"])
    assert vars(args)["cfg:data.classes"] == ["circle", 3, "stripes"]
    config = cli.config_from_args(args)
    assert config.data.streaming is True and config.generation.guidance_scale == 8.0
    args = build_parser().parse_args(["evaluate", "--distilled", "d", "--baseline", "random,full", "--no-record",
                                      "--epochs", "none"])
    assert vars(args)["eval:baselines"] == ["random", "full"] and vars(args)["eval:record"] is False
    assert vars(args)["eval:epochs"] is None
    args = build_parser().parse_args(["finetune", "--base", "x", "--lora", "--max-train-steps", "3"])
    assert (vars(args)["ft:base_model"], vars(args)["ft:lora"], vars(args)["ft:max_train_steps"]) == ("x", True, 3)


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["distill"], ["evaluate"], ["finetune"], ["plan"], ["push"], ["app"]])
def test_help_imports_no_model_library(command):
    code = ("import sys\nfrom vldd.cli.commands import main\ntry:\n    main([*sys.argv[1:], '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'diffusers', 'transformers', 'datasets', 'gradio') "
            "if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, cwd=ROOT)
    assert done.stderr.strip() == "[]" and "usage: vldd" in done.stdout


@pytest.mark.slow
def test_python_dash_m_vldd():
    done = subprocess.run([sys.executable, "-m", "vldd", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("usage: vldd")
    done = subprocess.run([sys.executable, "-m", "vldd", "distill", "--ipc", "x"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr == ("vldd distill: error: argument --ipc: expected an integer, got 'x' "
                           "(see `vldd distill --help`)\n")


# --- errors -------------------------------------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with something in it that no failed command may touch."""
    run = tmp_path / "run"
    (run / "work" / "caption").mkdir(parents=True)
    (run / "config.yaml").write_text("preset: tiny\nipc: 2\n")
    (run / "work" / "caption" / "000000.json").write_text('["a caption"]')
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_not_a_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--generation.guidance_scale", "abc"])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert "argument --generation.guidance_scale: expected a number, got 'abc'" in line and "lambda" not in line


def test_malformed_yaml(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: 2\ndata: {dataset: [unclosed\n")
    before = snapshot(run_dir)
    assert main(["generate", "--config", str(bad), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"vldd: error: config file {str(bad)!r} is not valid YAML (") and "line 3" in line
    assert snapshot(run_dir) == before


def test_output_that_is_a_file(tmp_path, capsys):
    output = tmp_path / "results.txt"
    output.write_text("keep me")
    assert main(["distill", "--preset", "tiny", "--output", str(output)]) == 2
    assert one_error_line(capsys) == (f"vldd: error: run directory {str(output)!r} is a file; expected a directory "
                                      "(new, or one vldd wrote)")
    assert main(["finetune", str(tmp_path), "--preset", "tiny", "--output", str(output)]) == 2
    assert one_error_line(capsys) == (f"vldd: error: output directory {str(output)!r} is a file; expected a "
                                      "directory (new, or one vldd wrote)")
    assert main(["evaluate", "--distilled", "sample", "--output", str(tmp_path)]) == 2
    assert one_error_line(capsys) == (f"vldd: error: --output {str(tmp_path)!r} is a directory; expected the "
                                      "results JSON file to write")
    assert output.read_text() == "keep me"


def test_unreadable_run_directory(run_dir, capsys, monkeypatch):
    (run_dir / "manifest.json").write_text("{not json")
    before = snapshot(run_dir)
    assert main(["push", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"vldd: error: {str(run_dir / 'manifest.json')!r} could not be read (")
    assert line.endswith("expected the JSON manifest vldd writes")
    # A directory this user cannot write (root ignores permissions, so the check itself is made to say no).
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)
    assert main(["distill", "--preset", "tiny", "--output", str(run_dir)]) == 2
    assert "cannot be read and written by this user; expected a directory you can write to" in one_error_line(capsys)
    assert snapshot(run_dir) == before


def test_verbose_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    assert main(["-v", "distill", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "yaml.parser.ParserError" in err and "not valid YAML" in err.splitlines()[-1]


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def write_lock(run: Path, pid: int, launch=None) -> None:
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "launch": launch}))


def test_run_directory_in_use(run_dir, live_process, capsys):
    write_lock(run_dir, live_process)
    before = snapshot(run_dir)
    assert main(["distill", "--preset", "tiny", "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"vldd: error: run directory {str(run_dir)!r} is in use by vldd process {live_process} ")
    assert "wait for it to finish, or use another run directory" in line
    assert snapshot(run_dir) == before  # the holder's lock included


def test_stale_lock_is_taken_over_and_released(run_dir, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(run_dir, dead.pid)
    # The command gets past the lock (to the next error: a dataset that does not exist), then releases it.
    assert main(["caption", "--preset", "tiny", "--dataset", str(run_dir / "nothing"), "--output", str(run_dir)]) == 2
    assert "could not load dataset" in one_error_line(capsys)
    assert not (run_dir / LOCK).exists()
    assert (run_dir / "work" / "caption" / "000000.json").read_text() == '["a caption"]'


def test_lock_holds_pid_and_is_shared_by_one_launch(tmp_path, live_process):
    run = tmp_path / "run"
    with run_dir_lock(run, launch="node0:29500:abc") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with run_dir_lock(run, launch="node0:29500:abc"):  # another rank of the same launch
            pass
        assert lock.exists()  # only its creator removes it
        with pytest.raises(RunDirBusyError, match=f"in use by vldd process {os.getpid()}"), \
                run_dir_lock(run, launch="node0:29501:xyz"):
            pass
        with pytest.raises(RunDirBusyError), run_dir_lock(run):
            pass
    assert not lock.exists()
    write_lock(run, live_process, launch="node0:29500:abc")  # a rank that is not the creator joins a live launch
    with run_dir_lock(run, launch="node0:29500:abc"):
        pass
    assert json.loads((run / LOCK).read_text())["pid"] == live_process


def test_launch_key(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli._launch_key() is None
    for key, value in {"WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
                       "TORCHELASTIC_RUN_ID": "run7"}.items():
        monkeypatch.setenv(key, value)
    assert cli._launch_key() == "10.0.0.1:29500:run7"


def test_verbose_is_accepted_after_any_command(tmp_path, capsys):
    parser = build_parser()
    for name, command in subcommands(parser).items():
        flags = {option for action in command._actions for option in action.option_strings}
        assert {"-v", "--verbose", "--quiet"} <= flags, name
    assert parser.parse_args(["distill", "-v"]).verbose is True
    assert parser.parse_args(["-v", "distill"]).verbose is True  # before the command, as before
    assert parser.parse_args(["distill"]).verbose is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    assert main(["distill", "--config", str(bad), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "not valid YAML" in err.splitlines()[-1]


def test_quiet_silences_the_libraries_progress_bars_too(tiny_cache, tmp_path, capsys):
    import datasets
    from diffusers.utils import logging as diffusers_logging
    from helpers import tiny_overrides
    from huggingface_hub.utils import are_progress_bars_disabled

    config = tmp_path / "run.yaml"
    for name, quiet in (("loud", []), ("quiet", ["--quiet"])):
        config.write_text(json.dumps(tiny_overrides(tmp_path / name)))
        assert main(["distill", "--config", str(config), "--cache-dir", str(tiny_cache), *quiet]) == 0
        err = capsys.readouterr().err
        if not quiet:  # vldd's bars, transformers' and diffusers' (loading models) and datasets' (saving the set)
            for bar in ("generate:", "Loading weights", "Loading pipeline components", "Saving the dataset"):
                assert bar in err, (bar, err[-3000:])
        else:
            assert "it/s" not in err and "%|" not in err, err[-2000:]
    # the libraries' switches are back as they were, and so is the environment
    assert not are_progress_bars_disabled() and datasets.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled()
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ

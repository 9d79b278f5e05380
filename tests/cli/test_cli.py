"""The `scalelab` command line: fast help, versions, help text everywhere, one spelling per option."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scalelab
from scalelab.cli import main as cli

HEAVY = ("jax", "flax", "orbax", "optax", "matplotlib", "pandas", "scipy", "grain", "tokenizers", "torch")
# generous: the command takes about 0.2 s on a loaded two-core machine; the bound catches a heavy import
HELP_SECONDS = 3.0


def _console(name: str) -> list[str]:
    """The installed console script beside this interpreter, else its entry point through -c."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    function = "train" if name == "scalelab-train" else "cli"
    return [sys.executable, "-c", f"from scalelab.cli.entry import {function}; {function}()"]


def test_help_is_fast_and_imports_nothing_heavy():
    t0 = time.perf_counter()
    proc = subprocess.run([*_console("scalelab"), "--help"], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    print(f"scalelab --help: {seconds:.2f} s", file=sys.stderr)
    assert proc.returncode == 0 and "analyze" in proc.stdout, proc.stderr
    assert seconds < HELP_SECONDS, f"scalelab --help took {seconds:.2f} s"
    probe = ("import sys; from scalelab.cli.main import build_parser; build_parser(); "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]", f"building the parser imported {loaded.stdout.strip()}"


@pytest.mark.parametrize("command", ["scalelab", "scalelab-train"])
def test_version_names_the_package_version(command):
    proc = subprocess.run([*_console(command), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{command} {scalelab.__version__} ("), proc.stdout


def _parsers(parser: argparse.ArgumentParser, path: str = "scalelab"):
    """(command path, parser, its subparsers action or None) for the parser and every subcommand."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    yield path, parser, sub
    if sub is not None:
        for name, child in sub.choices.items():
            yield from _parsers(child, f"{path} {name}")


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        yield action


def test_every_option_and_subcommand_has_help():
    missing = []
    for path, parser, sub in _parsers(cli.build_parser()):
        for action in _options(parser):
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        if sub is not None:
            described = {choice.dest for choice in sub._choices_actions if choice.help}
            missing += [f"{path} {name} (the subcommand)" for name in sub.choices if name not in described]
    assert not missing, "no help text: " + ", ".join(missing)


def test_output_paths_are_o_out_and_json_is_a_path():
    for path, parser, _ in _parsers(cli.build_parser()):
        for action in _options(parser):
            if action.dest == "out":
                assert action.option_strings == ["-o", "--out"], (path, action.option_strings)
            if "--json" in action.option_strings:
                assert action.metavar == "PATH" and action.nargs in (None, "?"), path
            assert not {"--output", "--sweep-dir"} & set(action.option_strings), (path, action.option_strings)


@pytest.mark.parametrize("argv", [
    ["analyze", "collect", "sweeps/a", "--output", "runs.csv"],
    ["analyze", "report", "sweeps/a", "--output", "runs.csv"],
    ["wsd", "--model", "p15k", "--tokens", "1e6", "--sweep-dir", "runs.csv"],
    ["data", "prepare", "texts/", "--out", "runs.csv"],
    ["export", "hf", "runs/x", "-o", "runs.csv"],
])
def test_old_output_spellings_still_parse(argv):
    assert cli.build_parser().parse_args(argv).out == "runs.csv"


def test_a_missing_output_is_reported_as_o_out(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["analyze", "collect", "sweeps/a"])
    assert "-o/--out" in capsys.readouterr().err


def test_status_json_takes_a_path_and_dash_or_bare_prints():
    parser = cli.build_parser()
    assert parser.parse_args(["status", "s", "--json", "st.json"]).json == "st.json"
    assert parser.parse_args(["status", "s", "--json", "-"]).json == "-"
    assert parser.parse_args(["status", "s", "--json"]).json == "-"


def test_wsd_dry_run_commands_paste_into_a_shell(tmp_path, capsys):
    out = tmp_path / "a sweep; with spaces"
    assert cli.main(["wsd", "--model", "p50k", "--tokens", "2e5", "-o", str(out), "--dry-run",
                     "data.seq_len=64", "train.batch_size=8"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if "hydra.run.dir=" in line]
    assert len(commands) == 5  # the stable run and four branches
    for line in commands:
        words = shlex.split(line)
        assert shlex.join(words) == line
        assert any(w.startswith(f"hydra.run.dir={out}/") for w in words), words
    assert not out.exists()

"""What every `scalelab` subcommand spells the same way: `--version`, `-o/--out`, `--json PATH`.

This module imports only the standard library (and `scalelab.__version__`): it runs for every
`scalelab --help`, which must not wait for JAX or pandas.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

STDOUT = "-"


def version_text(prog: str) -> str:
    """'scalelab 0.1.0 (Python 3.11.7, jax 0.10.2, hydra-core 1.3.8)': the versions a bug report needs."""
    from importlib import metadata

    from scalelab import __version__

    found = []
    for name in ("jax", "jaxlib", "hydra-core"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return f"{prog} {__version__} (Python {platform.python_version()}, {', '.join(found)})"


class _Version(argparse.Action):
    """argparse's own version action needs the text when the parser is built; this one looks the
    versions up only when `--version` is given."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text(parser.prog.split()[0]))
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_Version, help="print scalelab's version (and JAX's, Hydra's) and exit")


def add_out(parser: argparse.ArgumentParser, help: str, metavar: str = "DIR", required: bool = True,
            old: tuple[str, ...] = ()) -> None:
    """`-o/--out`, the one spelling of an output path; ``old`` spellings keep working, unlisted.

    The old spellings are option strings of the same action (so `required` counts either), removed
    from the action's own list so that help and error messages show only `-o/--out`.
    """
    action = parser.add_argument("-o", "--out", *old, dest="out", required=required, metavar=metavar, help=help)
    action.option_strings = ["-o", "--out"]


def add_json(parser: argparse.ArgumentParser, what: str, bare_prints: bool = False) -> None:
    """`--json PATH`: write ``what`` as JSON to PATH; `--json -` prints it instead of the text.

    ``bare_prints``: a bare `--json` (no PATH) also prints, for a command whose `--json` was a flag.
    """
    extra = {"nargs": "?", "const": STDOUT} if bare_prints else {}
    parser.add_argument("--json", metavar="PATH", default=None, **extra,
                        help=f"write {what} as JSON to PATH (-: print the JSON to stdout instead of the text)")


def to_stdout(target: str | None) -> bool:
    return target == STDOUT


def write_json(payload, target: str | None, stream=None) -> None:
    """Write ``payload`` to the `--json` target: nothing for None, stdout (or ``stream``) for '-',
    else the file (its folder is made)."""
    if target is None:
        return
    text = json.dumps(payload, indent=2, default=str)
    if to_stdout(target):
        print(text, file=stream or sys.stdout)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def run_with_json_on_stdout(func, args) -> int:
    """Run a command whose progress goes to stdout: with `--json -` that progress goes to stderr, so
    that stdout holds exactly the JSON document."""
    import contextlib

    if not to_stdout(getattr(args, "json", None)):
        return func(args)
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        args.json_stream = real_stdout
        return func(args)

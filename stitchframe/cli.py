"""The ``stitchframe`` command.

Thin by design: parse arguments, load the spec, call the library, print.
Exit codes: 0 success; 2 every user mistake: a bad spec or usage (including
stitches between incompatible activations), an existing output without
``--overwrite``, a missing, unreadable, corrupt or pickled build or weights
file, an impossible budget, a missing optional extra; 1 a failure that is not
the user's to fix (a plugin that breaks, a non-finite loss, a bug); 130/143 a
build stopped by SIGINT/SIGTERM (``--resume`` continues it); 141 the reader
of the output went away (``stitchframe plugins | head``).  Errors print
one line on stderr; messages about a spec name the spec file and the dotted
field; ``--traceback`` shows the full trace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from .errors import (
    BuildInterrupted,
    OutputExistsError,
    CheckpointError,
    ShapeMismatchError,
    SpecError,
    StitchframeError,
    UnknownNameError,
    UsageError,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main", "build_parser", "COMMANDS"]

#: Exit code for every user mistake (spec, command line, files, folders, budgets, missing extras).
EXIT_USAGE = 2
#: Exit code for a failure that is not the user's to fix (a broken plugin, a non-finite loss, a bug).
EXIT_FAILURE = 1
#: Exit code when the reader of the output closed the pipe (128 + SIGPIPE, as shells report it).
EXIT_BROKEN_PIPE = 141
#: Errors that are the user's to fix in the spec, the command line or the files given (exit code 2).
USAGE_ERRORS = (SpecError, UnknownNameError, ShapeMismatchError, OutputExistsError, CheckpointError, UsageError)
_SPEC_ERRORS = (SpecError, UnknownNameError, ShapeMismatchError)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def _console(err: bool = False) -> Console:
    """A console that prints text literally: no markup, no ``:emoji:`` codes, no highlighting.

    User text (sources such as ``hf:package:name``, paths, messages) must reach
    the terminal as written; styled parts go through ``rich.text.Text``.
    """
    from rich.console import Console

    return Console(stderr=err, highlight=False, soft_wrap=True, markup=False, emoji=False)


def registries_for(args: argparse.Namespace):
    """Registries with installed plugins plus those named by ``--plugin``."""
    from .plugins import get_plugin_manager, load_registries

    regs = load_registries(get_plugin_manager(plugins=getattr(args, "plugin", None) or ()))
    return regs


@contextlib.contextmanager
def about_spec(path: str) -> Iterator[None]:
    """Spec mistakes raised inside the block name the spec file (``path: field: message``)."""
    try:
        yield
    except _SPEC_ERRORS as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc


@contextlib.contextmanager
def _interrupts_stop_the_build() -> Iterator[None]:
    """SIGINT and SIGTERM outside training (which checkpoints and stops by itself) end the build too.

    Either way the unfinished build is kept and ``--resume`` continues it;
    the command exits with 128 + the signal number (130, 143).
    """
    hint = "the unfinished build is kept; rerun with --resume to continue it"

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise BuildInterrupted(f"Build interrupted by SIGTERM; {hint}", signal_name="SIGTERM")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        yield
    except KeyboardInterrupt:
        raise BuildInterrupted(f"Build interrupted by SIGINT; {hint}", signal_name="SIGINT") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _warn_problems(regs) -> None:
    if regs.problems:
        from rich.text import Text

        con = _console(err=True)
        for p in regs.problems:
            con.print(Text.assemble(("warning:", "yellow"), " ", p.message))


@command("plugins")
def cmd_plugins(args: argparse.Namespace) -> int:
    """List installed plugins, their versions, hooks and what they registered, as JSON."""
    regs = registries_for(args)
    print(json.dumps(regs.plugin_report(), indent=2))
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (schema, names, plugin options) without loading any model."""
    from .spec import load_spec
    from .validation import validate_spec

    with about_spec(args.spec):
        spec = load_spec(args.spec)
        regs = registries_for(args)
        _warn_problems(regs)
        notes = validate_spec(spec, regs)
    for n in notes:
        _console(err=True).print(f"note: {n}")
    print(f"{args.spec}: OK ({len(spec.anchors)} anchors, space {spec.stitch.space!r}, layer {spec.stitch.layer!r})")
    return 0


def _is_output_dir(path: str) -> bool:
    from pathlib import Path

    from .pipeline import WEIGHTS

    p = Path(path)
    return p.is_dir() and (p / "spec.yaml").is_file() and (p / WEIGHTS).is_file()


@command("routes")
def cmd_routes(args: argparse.Namespace) -> int:
    """Print the route table of a spec's SN-Net (no training), or of a build output with its metrics."""
    regs = registries_for(args)
    _warn_problems(regs)
    if _is_output_dir(args.spec):
        from .pipeline import load_snnet

        net = load_snnet(args.spec, regs)
    else:
        from .engine import assemble
        from .spec import load_spec

        with about_spec(args.spec):
            net = assemble(load_spec(args.spec), regs)
    if args.json:
        print(json.dumps(net.routes.to_list(), indent=2))
    else:
        from .report import route_table

        _console().print(route_table(net.routes, title=f"{len(net.routes)} routes of {args.spec}"))
    return 0


def _default_output(spec_path: str) -> str:
    from pathlib import Path

    return str(Path("runs") / Path(spec_path).stem)


@command("build")
def cmd_build(args: argparse.Namespace) -> int:
    """Build an SN-Net: load anchors, calibrate, train, evaluate every route, report and save."""
    from .pipeline import build
    from .spec import load_spec

    with _interrupts_stop_the_build(), about_spec(args.spec):
        spec = load_spec(args.spec)
        regs = registries_for(args)
        _warn_problems(regs)
        output = args.output or spec.output or _default_output(args.spec)
        build(spec, output=output, overwrite=args.overwrite, resume=args.resume, registries=regs, console=_console())
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Reload a build output and evaluate every route (results in OUT_DIR/evaluation/)."""
    from .pipeline import evaluate_build

    regs = registries_for(args)
    _warn_problems(regs)
    evaluate_build(args.out_dir, latency=args.latency or None, max_batches=args.max_batches, registries=regs,
                   console=_console())
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse_count(text: str, unit: str = "FLOPs") -> float:
    """``"1.5e9"``, ``"1.5G"``, ``"800M"`` (optionally ending in the unit's name) -> a count."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
    t = text.strip().lower().removesuffix(unit.lower())
    try:
        value = float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {unit} count; write e.g. 1.5e9 or 1.5G")
    return value


def parse_flops(text: str) -> float:
    """``"1.5e9"``, ``"1.5G"``, ``"800M"`` -> FLOPs."""
    return parse_count(text, "FLOPs")


def parse_macs(text: str) -> float:
    """``"1.26G"``, ``"800M"`` -> multiply-adds (MACs)."""
    return parse_count(text, "MACs")


def cost(route) -> str:
    """A route's cost in both units: ``1.258 GMACs (2.517 GFLOPs), 5.72 M params``."""
    return (f"{(route.macs or 0) / 1e9:.3f} GMACs ({(route.flops or 0) / 1e9:.3f} GFLOPs), "
            f"{(route.params or 0) / 1e6:.2f} M params")


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    """Export one route of a build output as a standalone model (safetensors + manifest, optionally .pt2 and ONNX)."""
    from .export import export_route

    regs = registries_for(args)
    _warn_problems(regs)
    res = export_route(args.out_dir, route=args.route, max_flops=args.max_flops, max_macs=args.max_macs,
                       dest=args.output, onnx=args.onnx, pt2=args.pt2, merge=args.merge, registries=regs)
    r = res.module.route
    con = _console()
    con.print(f"route {res.route_id}: {r.describe()} ({cost(r)})")
    if res.note is not None:
        con.print(f"note: {res.note}")
    for path in (res.weights, res.description, res.pt2, res.onnx):
        if path is not None:
            size = path.stat().st_size
            shown = f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
            con.print(f"wrote {path} ({shown})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="stitchframe",
        description="Build, evaluate and export Stitchable Neural Networks from a YAML spec.",
    )
    parser.add_argument("--version", action="version", version=f"stitchframe {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE[:ATTR]",
        help="load a plugin that is not installed as an entry point (repeatable; also STITCHFRAME_PLUGINS)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("plugins", help=cmd_plugins.__doc__)
    p = sub.add_parser("validate", help=cmd_validate.__doc__)
    p.add_argument("spec", help="path to spec.yaml")
    p = sub.add_parser("routes", help=cmd_routes.__doc__)
    p.add_argument("spec", help="path to spec.yaml, or a build output folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("build", help=cmd_build.__doc__)
    p.add_argument("spec", help="path to spec.yaml")
    p.add_argument("--output", "-o", metavar="DIR",
                   help="output folder (default: the spec's output, else runs/<spec name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build output")
    p.add_argument("--resume", action="store_true", help="continue the unfinished build of this output")
    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__)
    p.add_argument("out_dir", metavar="OUT_DIR", help="a build output folder")
    p.add_argument("--latency", action="store_true", help="also measure each route's latency (batch size 1)")
    p.add_argument("--max-batches", type=_positive_int, metavar="N",
                   help="evaluate at most N batches (default: the spec's)")
    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("out_dir", metavar="OUT_DIR", help="a build output folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--route", metavar="ID", help="route id (or its printed name)")
    which.add_argument("--max-flops", type=parse_flops, metavar="X",
                       help="the most accurate route with at most X FLOPs per example (e.g. 1.5e9 or 1.5G; "
                       "torch's convention, 2 per multiply-add)")
    which.add_argument("--max-macs", type=parse_macs, metavar="X",
                       help="the most accurate route with at most X multiply-adds per example (the papers' "
                       "unit, half the FLOPs; e.g. 1.26G)")
    p.add_argument("--onnx", action="store_true", help="also write an ONNX file (needs the onnx extra: "
                   "pip install 'stitchframe[onnx]'; checked before anything is written)")
    p.add_argument("--pt2", action="store_true", help="also write the torch.export program (.pt2; loads with "
                   "torch.export.load)")
    p.add_argument("--merge", action="store_true", help="merge low-rank stitching layers for inference")
    p.add_argument("--output", "-o", metavar="FILE", help="the .safetensors file to write "
                   "(default: OUT_DIR/exports/route<ID>.safetensors)")
    return parser


def _report(message: str, show_traceback: bool) -> None:
    """Print ``error: message`` as one line on stderr (and the traceback first, on request)."""
    if show_traceback:
        traceback.print_exc()
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    _console(err=True).print(f"error: {one_line}", markup=False)


def _report_error(exc: StitchframeError, show_traceback: bool) -> None:
    """Report a stitchframe error, except on the ranks that got it from rank 0 (which prints it) under torchrun."""
    if not exc.on_rank_zero:
        _report(str(exc), show_traceback)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one ``warning:`` line, like the command's other messages (no source lines)."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    where = "" if issubclass(category, UserWarning) else f" ({category.__name__}, {filename}:{lineno})"
    _console(err=True).print(f"warning: {one_line}{where}", markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stitchframe`` command; returns the exit code.

    A rank launched by ``torchrun`` (``WORLD_SIZE`` above 1) ends here instead, with :func:`os._exit` once its
    output is flushed: the build has destroyed its process group by then, and skipping the interpreter's
    teardown avoids a rare abort of a rank there ("terminate called without an active exception", seen on
    gloo after a complete build), which torchrun would report as a failed run.
    """
    code = _main(argv)
    if _torchrun_world() > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    return code


def _torchrun_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except BuildInterrupted as exc:
        _report_error(exc, args.traceback)
        return exc.exit_code
    except USAGE_ERRORS as exc:
        _report_error(exc, args.traceback)
        return EXIT_USAGE
    except StitchframeError as exc:
        _report_error(exc, args.traceback)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _report("interrupted (SIGINT)", args.traceback)
        return 128 + signal.SIGINT
    except Exception as exc:  # noqa: BLE001 - a bug, still reported on one line
        _report(f"unexpected {type(exc).__name__}: {exc} (a bug in stitchframe or a plugin; "
                "rerun with --traceback and report it)", args.traceback)
        return EXIT_FAILURE


def _silence_stdout() -> None:
    """After the reader closed the pipe: send what is left to /dev/null, so exiting does not fail once more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``stitchframe`` command.

Thin by design: parse arguments, load the spec, call the library, print.
Exit codes: 0 success, 2 bad spec or usage, 1 runtime failure.  Errors print
one line; ``--traceback`` shows the full trace.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from .errors import PluginError, SpecError, StitchframeError, UnknownNameError

__all__ = ["main", "build_parser", "COMMANDS"]

#: Exit code for a bad spec or bad usage.
EXIT_USAGE = 2
#: Exit code for a failure while running.
EXIT_FAILURE = 1

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def _console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=True)


def registries_for(args: argparse.Namespace):
    """Registries with installed plugins plus those named by ``--plugin``."""
    from .plugins import get_plugin_manager, load_registries

    regs = load_registries(get_plugin_manager(plugins=getattr(args, "plugin", None) or ()))
    return regs


def _warn_problems(regs) -> None:
    if regs.problems:
        con = _console(err=True)
        for p in regs.problems:
            con.print(f"[yellow]warning:[/] {p.message}", markup=True)


@command("plugins")
def cmd_plugins(args: argparse.Namespace) -> int:
    """List installed plugins, their versions, hooks and what they registered, as JSON."""
    regs = registries_for(args)
    print(json.dumps(regs.plugin_report(), indent=2))
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (schema, names, plugin options) without loading any model."""
    from .engine import validate_spec
    from .spec import load_spec

    spec = load_spec(args.spec)
    regs = registries_for(args)
    _warn_problems(regs)
    notes = validate_spec(spec, regs)
    for n in notes:
        _console(err=True).print(f"note: {n}")
    print(f"{args.spec}: OK ({len(spec.anchors)} anchors, space {spec.stitch.space!r}, layer {spec.stitch.layer!r})")
    return 0


def route_table(routes, *, title: str = "routes") -> Table:
    """A rich table of routes (id, route, GFLOPs, params, and any recorded metrics)."""
    metrics = sorted({k for r in routes for k, v in r.meta.items() if isinstance(v, (int, float)) and k != "kind"})
    table = Table(title=title)
    for col in ("id", "route", "GFLOPs", "M params", *metrics):
        table.add_column(col, justify="left" if col == "route" else "right")
    for i, r in sorted(enumerate(routes), key=lambda ir: ir[1].flops or 0):
        vals = [f"{r.meta[m]:.4g}" if isinstance(r.meta.get(m), (int, float)) else "" for m in metrics]
        table.add_row(str(i), r.describe(), f"{(r.flops or 0) / 1e9:.3f}", f"{(r.params or 0) / 1e6:.2f}", *vals)
    return table


@command("routes")
def cmd_routes(args: argparse.Namespace) -> int:
    """Print the route table of a spec's SN-Net (loads the anchors, no training)."""
    from .engine import assemble
    from .spec import load_spec

    spec = load_spec(args.spec)
    regs = registries_for(args)
    _warn_problems(regs)
    net = assemble(spec, regs)
    if args.json:
        print(json.dumps(net.routes.to_list(), indent=2))
    else:
        _console().print(route_table(net.routes, title=f"{len(net.routes)} routes of {args.spec}"))
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
    p.add_argument("spec", help="path to spec.yaml")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stitchframe`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, UnknownNameError) as exc:
        if args.traceback:
            traceback.print_exc()
        _console(err=True).print(f"error: {exc}", markup=False)
        return EXIT_USAGE
    except (StitchframeError, PluginError) as exc:
        if args.traceback:
            traceback.print_exc()
        _console(err=True).print(f"error: {exc}", markup=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _console(err=True).print("interrupted", markup=False)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

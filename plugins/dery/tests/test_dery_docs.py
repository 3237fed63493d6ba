"""The docs page, the example script and the example spec cannot drift from the code."""

from __future__ import annotations

import runpy
from pathlib import Path

import attrs
import stitchframe_dery
import stitchframe_timm
from stitchframe_dery import Budget, DeryOptions

import stitchframe

PLUGIN = Path(__file__).resolve().parents[1]
PAGE = PLUGIN.parents[1] / "docs" / "plugins" / "dery.md"
#: Generated from the options classes by ``python -m stitchframe._docgen`` (the core's tests keep it current).
REGISTRY = PLUGIN.parents[1] / "docs" / "reference" / "registry.md"


def _tables(text: str) -> list[str]:
    """The markdown tables of a page section, each as one string."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def test_the_docs_page_lists_every_option_as_the_code_defines_it():
    section = REGISTRY.read_text(encoding="utf-8").split("#### `dery`", 1)[1].split("\n## ", 1)[0]
    tables = _tables(section)
    assert len(tables) == 2, "the registry page gives DeryOptions and its Budget entries"
    for cls, table in zip((DeryOptions, Budget), tables):
        assert all(f"| `{f.name}` |" in table for f in attrs.fields(cls)), f"regenerate {REGISTRY.name}"
        assert table in PAGE.read_text(encoding="utf-8"), f"copy the {cls.__name__} table of {REGISTRY} into {PAGE}"


def test_the_example_spec_is_valid():
    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(stitchframe_timm, name="timm")
    pm.register_plugin(stitchframe_dery, name="dery")
    regs = stitchframe.load_registries(pm)
    spec = stitchframe.load_spec(PLUGIN / "examples" / "dery_zoo.yaml")
    assert spec.stitch.space == "dery" and spec.stitch.space_options["budgets"]
    if spec.data is not None and spec.data.name not in regs.datasets:  # datasets come with the build pipeline
        spec = attrs.evolve(spec, data=None)
    stitchframe.validate_spec(spec, regs)


def test_the_example_script_runs(capsys):
    runpy.run_path(str(PLUGIN / "examples" / "reassemble.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "-> linear ->" in out and "exported" in out and "torch.Size([2, 10])" in out

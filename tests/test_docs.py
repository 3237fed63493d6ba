"""The docs cannot drift from the code.

Every hook has a test and a reference entry, every CLI command and spec field is documented (the
generated pages are up to date), every public name has an API entry, every page is in the nav, and the
site builds with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import yaml

import stitchframe
from stitchframe import _docgen, cli, hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook_names() -> list[str]:
    names = [n for n in dir(hookspecs) if n.startswith("stitchframe_")]
    return sorted(n for n in names if hasattr(getattr(hookspecs, n), "stitchframe_spec"))


def test_hookspecs_are_found():
    assert "stitchframe_register_anchor_adapters" in _hook_names()
    assert len(_hook_names()) >= 5


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_has_a_test(hook):
    pattern = re.compile(rf"^def test_hook_{hook}\(", re.MULTILINE)
    files = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert files, f"hook {hook!r} has no `def test_hook_{hook}(` in tests/; add one to tests/test_hookspecs.py"


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_is_in_the_hooks_reference(hook):
    page = (DOCS / "reference" / "hooks.md").read_text(encoding="utf-8")
    assert "::: stitchframe.hookspecs" in page
    assert f"### `{hook}`" in page, f"docs/reference/hooks.md has no example section '### `{hook}`'"
    assert re.search(rf"^\s+- {hook}$", page, re.MULTILINE), f"docs/reference/hooks.md does not render {hook}"


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hookspec_docstring_is_complete(hook):
    doc = getattr(hookspecs, hook).__doc__ or ""
    for part in ("Args:", "Returns:", "Example:", "Added in"):
        assert part in doc, f"the docstring of {hook} lacks {part!r} (see STYLE.md, section 2)"


def test_every_spec_field_has_help():
    assert _docgen.missing_help() == [], "give these fields metadata={'help': ...}"


@pytest.mark.parametrize("page", sorted(_docgen.PAGES))
def test_generated_pages_are_up_to_date(page):
    missing = _docgen.missing_in_tree_plugins()
    if page == "docs/reference/registry.md" and missing:
        pytest.skip(f"the registry page lists the in-tree plugins; install {', '.join(missing)} (pip install -e plugins/...)")
    path = ROOT / page
    assert path.exists(), f"{page} is missing; run `python -m stitchframe._docgen`"
    stale = path.read_text(encoding="utf-8") != _docgen.PAGES[page]()
    assert not stale, f"{page} is stale; run `python -m stitchframe._docgen`"


def test_registry_page_lists_every_in_tree_plugin_with_helped_options():
    missing = _docgen.missing_in_tree_plugins()
    if missing:
        pytest.skip(f"in-tree plugins not installed: {', '.join(missing)}")
    entries = _docgen._registry_entries()
    assert set(entries) == {"stitchframe", *_docgen.IN_TREE_PLUGINS}
    assert all(entries[name] for name in _docgen.IN_TREE_PLUGINS), "every in-tree plugin registers something"
    page = _docgen.registry_reference()
    for kinds in entries.values():
        for group in kinds.values():
            for e in group:
                assert f"#### `{e.name}" in page
                for path, cls in _docgen._sections(e.options, ""):
                    lacking = [f.name for f in attrs.fields(cls) if not f.metadata.get("help")]
                    assert not lacking, f"{e.plugin}: {e.name!r} options {path or cls.__name__} lack help: {lacking}"
    for dist in ("stitchframe-timm", "stitchframe-transformers", "stitchframe-dery", "stitchframe-learngene"):
        assert f"## `{dist}`" in page


def test_docgen_check_mode(tmp_path, capsys):
    assert _docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/reference/spec.md is stale" in capsys.readouterr().err
    assert _docgen.main(["--root", str(tmp_path)]) == 0
    assert _docgen.main(["--check", "--root", str(tmp_path)]) == 0


def test_every_cli_command_is_documented():
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(cli.COMMANDS), "every subcommand needs a @command handler and vice versa"
    for name in cli.COMMANDS:
        assert f"## `stitchframe {name}`" in page, f"docs/reference/cli.md lacks `stitchframe {name}`"


def test_every_public_name_has_an_api_entry():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference" / "api").glob("*.md"))
    missing = [n for n in stitchframe.__all__ if n != "__version__" and f"::: stitchframe.{n}\n" not in text + "\n"]
    assert not missing, f"add `::: stitchframe.<name>` to a page in docs/reference/api/ for {missing}"


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "examples" not in p.relative_to(DOCS).parts}
    assert pages - nav == set(), "add these pages to the nav of mkdocs.yml"
    assert nav - pages == set(), "the nav of mkdocs.yml lists pages that do not exist"


def test_snippet_sections_exist():
    """Every `--8<-- "file:section"` names a file and a section marker in it (mkdocs checks it too)."""
    for page in DOCS.rglob("*.md"):
        for path, section in re.findall(r'--8<-- "([^":]+)(?::([\w-]+))?"', page.read_text(encoding="utf-8")):
            target = ROOT / path
            assert target.is_file(), f"{page.relative_to(ROOT)} includes missing file {path}"
            if section:
                text = target.read_text(encoding="utf-8")
                assert f"[start:{section}]" in text and f"[end:{section}]" in text, (
                    f"{page.relative_to(ROOT)} includes section {section!r} that {path} does not mark"
                )


def test_mkdocs_build_strict(tmp_path):
    toolchain = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
    missing = [m for m in toolchain if not importlib.util.find_spec(m)]
    if missing:
        pytest.skip(f"the docs toolchain is not installed ({', '.join(missing)}); pip install -e '.[docs]'")
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (tmp_path / "site" / "reference" / "hooks" / "index.html").is_file()



def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- ci:test -->")[1].split("<!-- /ci:test -->")[0]
    command = "\n".join(line for line in block.strip().splitlines() if not line.startswith("```"))
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command.startswith("python3 -m venv") and command.endswith("python -m pytest -q")
    assert f"ci_cmd='{command}'" in run and f"\n{command}\n" in run

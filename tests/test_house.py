"""The shape of the code: no import circles, no private reads across modules, plugins on the public API only."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import networkx as nx

import stitchframe

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "stitchframe"
#: Code that plays a third party's part: the in-tree plugins and the tutorial's example plugin.
PLUGIN_CODE = [*ROOT.glob("plugins/*/stitchframe_*"), *ROOT.glob("plugins/*/examples"),
               *ROOT.glob("docs/examples/*/stitchframe_*"), *ROOT.glob("docs/examples/*/examples")]
PLUGIN_TESTS = [*ROOT.glob("plugins/*/tests"), *ROOT.glob("docs/examples/*/tests")]
#: Public modules beside the names stitchframe exports: the conformance kit and its pytest plugin.
PUBLIC_MODULES = {"stitchframe.testing", "stitchframe.testing.pytest_plugin"}
#: Private attributes read outside their own class, each for a reason: argparse has no public way to list a
#: parser's actions; transformers selects the attention kernel through this config field; route_bn sets and
#: reads the per-route state of the BatchNorm layers whose class it swaps for its own mixin.  (torch's own
#: privates, ``nn.modules.batchnorm._BatchNorm`` and overridden hooks, are the library's API for subclasses.)
PRIVATE_READS_ALLOWED = {
    *(("stitchframe/_docgen.py", a) for a in ("_actions", "_choices_actions", "_AppendAction", "_HelpAction",
                                             "_SubParsersAction", "_VersionAction")),
    ("plugins/transformers/stitchframe_transformers/adapter.py", "_attn_implementation"),
    ("stitchframe/cli.py", "_exit"),  # os._exit: a torchrun rank skips the interpreter teardown (cli.main)
    *(("stitchframe/route_bn.py", a) for a in ("_route_bn_state", "_rows", "_owner", "_sums", "_loaded_row",
                                                "_skip_row0", "_finish_collect")),
}


def _files(*roots: Path) -> list[Path]:
    return sorted(f for root in roots for f in root.rglob("*.py") if ".egg-info" not in str(f))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_imports(tree: ast.AST):
    """Every ``from ... import`` that runs (inside functions too), leaving out ``if TYPE_CHECKING:`` blocks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []  # annotations only
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node


def test_the_core_has_no_import_circles():
    """Imports inside functions count too: a circle there is a circle in the design (cli <-> pipeline)."""
    graph = nx.DiGraph()
    for path in _files(CORE):
        module = _module_name(path)
        if module == "stitchframe":
            continue  # the lazy public API imports everything on demand
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            target = _imported_module(node, module, path.name == "__init__.py")
            if target.startswith("stitchframe.") and target != module:
                graph.add_edge(module, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import circles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in _files(CORE, *PLUGIN_CODE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("stitchframe")):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, f"private names imported across modules (make them public or move them): {found}"


def test_private_attributes_are_read_only_by_their_own_class():
    """``x._name`` on anything but ``self``/``cls`` (or torch's own ops) is a private cross-module read."""
    found = set()
    for path in _files(CORE, *PLUGIN_CODE):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ("self", "cls", "torch", "nn", "_aten"):
                continue
            if isinstance(root, ast.Call) and getattr(root.func, "id", None) == "super":
                continue
            found.add((rel, node.attr))
    assert found <= PRIVATE_READS_ALLOWED, f"private attributes read outside: {sorted(found - PRIVATE_READS_ALLOWED)}"


def _core_references(path: Path):
    """``(line, what)`` for every use of a stitchframe name: ``from stitchframe[.x] import y``, ``stitchframe.y``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "stitchframe":
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("stitchframe."):
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "stitchframe":
            yield node.lineno, "stitchframe", node.attr


def _not_public(module: str, name: str | None, *, attributes: bool = True) -> bool:
    if module in PUBLIC_MODULES or (module == "stitchframe" and name in PUBLIC_MODULES - {"stitchframe.testing"}):
        return False
    if module == "stitchframe":
        return name not in stitchframe.__all__ and not (name == "testing")
    return True


def test_plugins_use_only_the_names_stitchframe_exports():
    """Plugins and their examples use ``from stitchframe import <exported name>`` (and ``stitchframe.testing``)."""
    bad = [f"{path.relative_to(ROOT)}:{line} {module}{'.' + name if name else ''}"
           for path in _files(*PLUGIN_CODE) for line, module, name in _core_references(path)
           if _not_public(module, name)]
    assert not bad, f"plugins use names stitchframe does not export (export them, with docstrings): {bad}"


def test_plugin_tests_import_only_exported_names():
    """Tests may reach into modules to monkeypatch them, but what they import is the public API."""
    bad = [f"{path.relative_to(ROOT)}:{line} {module}.{name}"
           for path in _files(*PLUGIN_TESTS) for line, module, name in _core_references(path)
           if module != "stitchframe" and _not_public(module, name)]
    assert not bad, f"plugin tests import names stitchframe does not export: {bad}"


def test_every_exported_class_and_function_has_a_docstring():
    missing = []
    for name in stitchframe.__all__:
        obj = getattr(stitchframe, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
    assert not missing, f"exported without a docstring: {missing}"


def test_hook_callbacks_have_named_types():
    """``register`` is a :class:`stitchframe.Register`, not ``Any``; loaders and checks are Protocols too."""
    from stitchframe import hookspecs

    for name in (n for n in dir(hookspecs) if n.startswith("stitchframe_register_")):
        assert inspect.signature(getattr(hookspecs, name)).parameters["register"].annotation == "Register", name
    params = inspect.signature(stitchframe.Register.__call__).parameters
    assert {"name", "obj", "options", "aliases", "replace", "check_identifier"} <= set(params)
    loader = inspect.signature(stitchframe.AnchorLoader.__call__).parameters
    assert list(loader) == ["self", "identifier", "options", "registries", "structure_only"]
    assert loader["structure_only"].kind is inspect.Parameter.KEYWORD_ONLY

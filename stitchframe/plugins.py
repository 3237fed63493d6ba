"""Plugin manager, entry-point loading and the registries plugins fill.

There is no global plugin manager: :func:`get_plugin_manager` returns a new
one each time and :func:`load_registries` turns it into a
:class:`Registries` object that the engine is handed explicitly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError, did_you_mean
from .registry import PREFIX_NAME, Registry

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginManager",
    "PluginProblem",
    "Registries",
    "get_plugin_manager",
    "import_plugin",
    "load_registries",
    "KNOWN_PREFIXES",
    "prefix_provider",
]

ENTRY_POINT_GROUP = "stitchframe"

#: Built-in plugin modules.  They need only torch and register through the
#: same hooks as third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "stitchframe.stitch_layers",
    "stitchframe.stitch_spaces",
    "stitchframe.cross_space",
    "stitchframe.datasets",
    "stitchframe.tasks",
)

#: Built-in plugins whose hooks live apart from the module they are named after, so that registering
#: them imports no torch (they register lazy references; see :mod:`stitchframe.builtins`).
_BUILTIN_HOOKS = {
    "stitchframe.stitch_layers": "stitchframe.builtins:StitchLayerHooks",
    "stitchframe.datasets": "stitchframe.builtins:DatasetHooks",
    "stitchframe.tasks": "stitchframe.builtins:TaskHooks",
}

#: Anchor source prefixes of known plugins: prefix -> (distribution, how to install it).  Named in the
#: error for a source whose prefix no installed plugin registers.
KNOWN_PREFIXES: dict[str, tuple[str, str]] = {
    "timm": ("stitchframe-timm", "pip install -e plugins/timm"),
    "hf": ("stitchframe-transformers", "pip install -e plugins/transformers"),
    "hf-config": ("stitchframe-transformers", "pip install -e plugins/transformers"),
    "learngene": ("stitchframe-learngene", "pip install -e plugins/learngene"),
    "torchvision": ("stitchframe-torchvision", "pip install -e docs/examples/stitchframe-torchvision"),
}

_REGISTER_HOOKS = {
    "stitchframe_register_anchor_adapters": ("anchor_adapters", "anchor adapter"),
    "stitchframe_register_stitch_layers": ("stitch_layers", "stitch layer"),
    "stitchframe_register_stitch_spaces": ("stitch_spaces", "stitch space"),
    "stitchframe_register_datasets": ("datasets", "dataset"),
    "stitchframe_register_tasks": ("tasks", "task"),
}


@attrs.frozen(kw_only=True)
class PluginProblem:
    """A plugin that could not be loaded or whose hook failed.

    Attributes:
        plugin: The plugin name (entry-point name or module name).
        hook: The hook that failed, or ``None`` for import/registration failures.
        message: One line saying what went wrong and how to fix it.
    """

    plugin: str
    hook: str | None
    message: str


class PluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` that remembers broken plugins and versions."""

    def __init__(self) -> None:
        super().__init__("stitchframe")
        self.add_hookspecs(hookspecs)
        self.problems: list[PluginProblem] = []
        self.versions: dict[str, str | None] = {}

    def register_plugin(self, plugin: Any, name: str | None = None, version: str | None = None) -> None:
        """Register ``plugin`` (a module, class or object with hookimpls).

        Unlike :meth:`pluggy.PluginManager.register` this validates the plugin at
        once: an implementation of a hook that does not exist (a misspelling)
        is a :class:`~stitchframe.errors.PluginError` naming the plugin and the
        closest real hook.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if self.is_registered(plugin):
            raise PluginError(f"Plugin {name!r} is already registered as {self.get_name(plugin)!r} (the same object); "
                              "load it once (an installed plugin needs no --plugin or STITCHFRAME_PLUGINS)")
        if self.has_plugin(name):
            taken = self.get_plugin(name)
            where = getattr(taken, "__name__", type(taken).__name__)
            raise PluginError(f"Plugin name {name!r} is taken by {where!r}; two plugins cannot share a name "
                              "(rename one entry point, or uninstall the duplicate)")
        try:
            self.register(plugin, name=name)
        except ValueError as exc:  # pluggy's own checks, first line only (the rest lists every plugin)
            raise PluginError(f"Plugin {name!r} could not be registered: {str(exc).splitlines()[0]}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"Plugin {name!r} is invalid: {exc}") from exc
        known = set(_hook_names())
        for attr in dir(plugin):
            if not attr.startswith("stitchframe_") or attr in known:
                continue
            if self.parse_hookimpl_opts(plugin, attr) is None:
                continue
            self.unregister(name=name)
            raise PluginError(
                f"Plugin {name!r} implements unknown hook {attr!r}; "
                f"{did_you_mean(attr, known)}Known hooks: {', '.join(sorted(known))}."
            )
        self.versions[name] = version if version is not None else getattr(plugin, "__version__", None)

    def plugin_names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [name for name, plugin in self.list_name_plugin() if plugin is not None]


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("stitchframe_")]


def _allowed_from_env() -> set[str] | None:
    value = os.environ.get("STITCHFRAME_LOAD_PLUGINS")
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def import_plugin(ref: str) -> Any:
    """Import a plugin given as ``"package.module"`` or ``"package.module:attribute"``.

    Raises:
        PluginError: The module or attribute cannot be imported.
    """
    modname, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(modname)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - reported with the reference
        raise PluginError(
            f"Plugin {ref!r} cannot be imported: {type(exc).__name__}: {exc}. "
            "Give it as 'package.module' or 'package.module:attribute' importable from this environment."
        ) from exc
    return obj


def get_plugin_manager(
    load_entrypoints: bool = True,
    plugins: Iterable[Any] = (),
) -> PluginManager:
    """Return a new plugin manager with the built-ins and installed plugins.

    Args:
        load_entrypoints: Load the ``stitchframe`` entry-point group.  When the
            ``STITCHFRAME_LOAD_PLUGINS`` environment variable is set, only the
            comma-separated entry points it names are loaded (empty: none).
            The ``STITCHFRAME_PLUGINS`` environment variable adds plugins that
            are not installed as entry points, as comma-separated
            ``module[:attribute]`` references (also read when this is false).
        plugins: Extra plugins passed explicitly: objects (modules, classes,
            instances) or ``"module[:attribute]"`` strings.

    Returns:
        The manager.  Plugins that failed to import or register are not
        raised: they are listed in ``pm.problems`` so the rest keep working.
    """
    pm = PluginManager()
    from . import __version__

    for modname in DEFAULT_PLUGINS:
        pm.register_plugin(import_plugin(_BUILTIN_HOOKS.get(modname, modname)), name=modname, version=__version__)
    if load_entrypoints:
        allowed = _allowed_from_env()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (allowed is not None and ep.name not in allowed) or pm.has_plugin(ep.name):
                continue
            version = ep.dist.version if ep.dist is not None else None
            pm.versions[ep.name] = version
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported
                pm.problems.append(
                    PluginProblem(
                        plugin=ep.name,
                        hook=None,
                        message=f"Plugin {ep.name!r} failed to import {ep.value!r}: "
                        f"{type(exc).__name__}: {exc}. Reinstall it or uninstall its distribution.",
                    )
                )
                continue
            try:
                pm.register_plugin(obj, name=ep.name, version=version)
            except PluginError as exc:
                pm.problems.append(PluginProblem(plugin=ep.name, hook=None, message=str(exc)))
    refs = [r.strip() for r in os.environ.get("STITCHFRAME_PLUGINS", "").split(",") if r.strip()]
    for obj in [*refs, *plugins]:
        name = obj if isinstance(obj, str) else None
        if pm.has_plugin(name) if name else pm.is_registered(obj):
            continue
        try:
            plugin = import_plugin(obj) if isinstance(obj, str) else obj
            if isinstance(obj, str) and pm.is_registered(plugin):
                continue  # --plugin naming an installed plugin's module: it is loaded already
            pm.register_plugin(plugin, name=name)
        except PluginError as exc:
            if not isinstance(obj, str):
                raise
            pm.problems.append(PluginProblem(plugin=obj, hook=None, message=str(exc)))
    return pm


@attrs.define(kw_only=True)
class Registries:
    """Everything plugins registered, handed explicitly to the engine.

    Attributes:
        anchor_adapters: Anchor loaders by source prefix.
        stitch_layers: Stitching-layer classes.
        stitch_spaces: Stitch-space classes.
        datasets: Dataset loaders.
        tasks: Tasks (what the build trains and evaluates per route).
        pm: The plugin manager they came from (for resolution hooks).
        problems: Plugins that failed, by name and hook.
    """

    anchor_adapters: Registry = attrs.field(factory=lambda: Registry("anchor adapter", name_pattern=PREFIX_NAME))
    stitch_layers: Registry = attrs.field(factory=lambda: Registry("stitch layer"))
    stitch_spaces: Registry = attrs.field(factory=lambda: Registry("stitch space"))
    datasets: Registry = attrs.field(factory=lambda: Registry("dataset"))
    tasks: Registry = attrs.field(factory=lambda: Registry("task"))
    pm: PluginManager | None = None
    problems: list[PluginProblem] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        for attr, _kind in _REGISTER_HOOKS.values():
            registry = getattr(self, attr)
            registry.note = self.broken_note  # unknown names mention the broken plugins
            registry.check = lambda obj, _attr=attr: _wrong_kind(_attr, obj)  # lazy references, when imported

    def broken_note(self) -> str:
        """A sentence naming broken plugins, to append to lookup errors."""
        if not self.problems:
            return ""
        names = sorted({p.plugin for p in self.problems})
        return f" Broken plugins (see `stitchframe plugins`): {', '.join(names)}."

    def resolve_anchor(self, source: str, options: dict[str, Any]) -> Any:
        """Call ``stitchframe_resolve_anchor``; errors name the plugin."""
        if self.pm is None:
            return None
        for impl in reversed(self.pm.hook.stitchframe_resolve_anchor.get_hookimpls()):
            kwargs = {"source": source, "options": options}
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                raise PluginError(
                    f"Plugin {impl.plugin_name!r} raised in hook 'stitchframe_resolve_anchor' "
                    f"for source {source!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if result is not None:
                from .anchors import Anchor

                if not isinstance(result, Anchor):
                    raise PluginError(
                        f"Plugin {impl.plugin_name!r} returned {type(result).__name__} from hook "
                        f"'stitchframe_resolve_anchor' for source {source!r}; it must return a stitchframe.Anchor or None"
                    )
                return result
        return None

    def plugin_report(self) -> list[dict[str, Any]]:
        """One dict per plugin: name, version, hooks, what it registered, status."""
        rows: dict[str, dict[str, Any]] = {}
        if self.pm is not None:
            for name in self.pm.plugin_names():
                plugin = self.pm.get_plugin(name)
                hooks = sorted(
                    h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name.startswith("stitchframe_")
                )
                rows[name] = {
                    "name": name,
                    "version": self.pm.versions.get(name),
                    "hooks": hooks,
                    "registered": {},
                    "status": "ok",
                    "errors": [],
                }
        for attr, _kind in _REGISTER_HOOKS.values():
            reg: Registry = getattr(self, attr)
            for entry in reg:
                row = rows.setdefault(
                    entry.plugin,
                    {"name": entry.plugin, "version": None, "hooks": [], "registered": {}, "status": "ok", "errors": []},
                )
                row["registered"].setdefault(attr, []).append(entry.name)
        for problem in self.problems:
            row = rows.setdefault(
                problem.plugin,
                {
                    "name": problem.plugin,
                    "version": self.pm.versions.get(problem.plugin) if self.pm else None,
                    "hooks": [],
                    "registered": {},
                    "status": "ok",
                    "errors": [],
                },
            )
            row["status"] = "broken"
            row["errors"].append(problem.message)
        return list(rows.values())


def load_registries(pm: PluginManager | None = None) -> Registries:
    """Run every registration hook and collect the results.

    Each plugin's implementation is called with a ``register`` callback that
    records that plugin as the origin of what it registers.  A hook that
    raises (including a duplicate name) is recorded in ``problems`` with the
    plugin and hook named, and the other plugins' registrations still count.

    Args:
        pm: A plugin manager; by default :func:`get_plugin_manager`.

    Returns:
        The filled registries.
    """
    pm = pm if pm is not None else get_plugin_manager()
    regs = Registries(pm=pm, problems=list(pm.problems))
    for hook_name, (attr, _kind) in _REGISTER_HOOKS.items():
        registry: Registry = getattr(regs, attr)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, obj, *, options=None, aliases=(), replace=False, check_identifier=None,
                         _plugin=plugin, _reg=registry, _attr=attr):
                expected = None if isinstance(obj, str) else _wrong_kind(_attr, obj)  # str: checked when imported
                if expected is not None:
                    raise PluginError(f"Plugin {_plugin!r} registered {_reg.kind} {name!r} as {_what(obj)}; "
                                      f"it must be {expected}")
                if check_identifier is not None and _attr != "anchor_adapters":
                    raise PluginError(f"Plugin {_plugin!r} registered {_reg.kind} {name!r} with check_identifier; "
                                      "only anchor adapters take one")
                return _reg.register(name, obj, options=options, aliases=aliases, plugin=_plugin, replace=replace,
                                     check_identifier=check_identifier)

            try:
                kwargs = {"register": register}
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - reported with plugin and hook
                message = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                regs.problems.append(
                    PluginProblem(
                        plugin=plugin,
                        hook=hook_name,
                        message=f"Plugin {plugin!r} failed in hook {hook_name!r}: {message}",
                    )
                )
    return regs


def _wrong_kind(attr: str, obj: Any) -> str | None:
    """What registry ``attr`` needs when ``obj`` is not it (``None``: ``obj`` fits)."""
    if attr == "stitch_layers":
        from .stitch_layers import StitchLayer  # only here: registering spaces and adapters imports no torch

        fits = isinstance(obj, type) and issubclass(obj, StitchLayer)
        return None if fits else "a subclass of stitchframe.StitchLayer"
    if attr == "tasks":
        from .tasks import Task  # only here: registering tasks imports no torch

        fits = isinstance(obj, type) and issubclass(obj, Task)
        return None if fits else "a subclass of stitchframe.Task"
    if attr == "stitch_spaces":
        fits = isinstance(obj, type) and callable(getattr(obj, "routes", None))
        return None if fits else "a class with a routes() method (a subclass of stitchframe.StitchSpace)"
    return None if callable(obj) else "a callable"


def _what(obj: Any) -> str:
    text = repr(obj)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(obj, type) else f"{type(obj).__name__} {text}"


def prefix_provider(prefix: str | None) -> str:
    """``" The stitchframe-timm plugin provides prefix 'timm' (pip install ...)."`` for a known prefix, else ``""``."""
    known = KNOWN_PREFIXES.get(prefix or "")
    if known is None:
        return ""
    dist, install = known
    return f" The {dist} plugin provides prefix {prefix!r}; install it ({install}) or load it with --plugin."


def unknown_source_error(source: str, regs: Registries, where: str = "") -> UnknownNameError:
    """Error for an anchor source no adapter or resolver claims (naming the plugin that provides a known prefix)."""
    at = f" at {where}" if where else ""
    prefixes = regs.anchor_adapters.names()
    prefix = source.split(":", 1)[0] if ":" in source else None
    if prefix is None:
        what = f"Anchor source {source!r}{at} has no 'prefix:'"
    else:
        hint = did_you_mean(prefix, prefixes).strip() if prefix not in KNOWN_PREFIXES else ""
        what = f"Unknown anchor prefix {prefix!r} in source {source!r}{at}" + (f"; {hint}" if hint else "")
    return UnknownNameError(
        f"{what}.{prefix_provider(prefix)} Write it as 'prefix:identifier' with a registered prefix: "
        f"{', '.join(prefixes) or '(none: install a plugin such as stitchframe-timm)'}.{regs.broken_note()}"
    )

"""Named registries filled by plugins.

A :class:`Registry` maps lowercase names (and aliases) to factories, each with
an attrs ``Options`` class and the name of the plugin that registered it.
A factory may be registered as a *lazy reference*, the string
``"package.module:attribute"``: it is imported the first time
:attr:`Entry.obj` is read, so listing plugins and validating specs need not
import torch or a model library.
Nothing is ever overwritten silently: registering a taken name raises
:class:`~stitchframe.errors.PluginError` naming both plugins unless
``replace=True`` is passed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs

from .errors import PluginError, UnknownNameError, did_you_mean

if TYPE_CHECKING:
    from .anchors import Anchor, Preprocess
    from .datasets import DatasetSplits
    from .plugins import Registries

__all__ = ["Entry", "Registry", "NoOptions", "Register", "AnchorLoader", "DatasetLoader", "IdentifierCheck"]

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: Anchor source prefixes may also contain '-' (``hf-config:``).
PREFIX_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_RULES = {
    _NAME: "lowercase snake_case (letters, digits, '_', starting with a letter)",
    PREFIX_NAME: "lowercase (letters, digits, '_', '-', starting with a letter)",
}


@attrs.frozen(kw_only=True)
class NoOptions:
    """Options class for registered objects that take no options."""


class IdentifierCheck(Protocol):
    """``check(identifier, options)``: a cheap check of an anchor source, run by ``stitchframe validate``.

    Registered with an anchor adapter (``register(prefix, load, ...,
    check_identifier=check)``).  It must not build a model, download or
    import torch: it looks the identifier up (a model name list, a local
    file) and raises :class:`~stitchframe.UnknownNameError` or
    :class:`~stitchframe.SpecError` with a one-line message when the
    identifier cannot work; it returns ``None`` when it can (or when it cannot
    tell without the network).  The engine adds where in the spec it was.
    """

    def __call__(self, identifier: str, options: Any) -> None: ...


class AnchorLoader(Protocol):
    """``load(identifier, options, registries, *, structure_only=False)``: an adapter's loader, returning an Anchor.

    ``identifier`` is the source after ``prefix:``; ``options`` an instance of
    the adapter's options class; ``registries`` the engine's
    :class:`~stitchframe.Registries`, for an adapter built on other sources
    (``stitchframe.load_anchor(source, registries)``).  A loader that does not
    need them declares ``registries=None``.

    Every loader takes the keyword ``structure_only``.  The engine passes
    ``True`` when :func:`~stitchframe.load_route` rebuilds an exported route,
    and calls the loader inside ``torch.device("meta")`` then: the loader must
    build the same modules without reading or downloading weights (ignore
    ``pretrained`` and weight-file options; the route's own tensors replace
    the values).  When the modules' structure comes from a file (a
    ``config.json``), the loader also passes
    ``Anchor(structure=(source, options))``: a source that builds them with
    nothing but those options, which the route's manifest records.  A loader
    whose models hold random weights only can ignore the flag.
    """

    def __call__(self, identifier: str, options: Any, registries: Registries, *,
                 structure_only: bool = False) -> Anchor: ...


class DatasetLoader(Protocol):
    """``load(options, preprocess)``: a dataset's loader, returning :class:`~stitchframe.DatasetSplits`.

    ``preprocess`` is the :class:`~stitchframe.Preprocess` the anchors agree on
    (input size, mean, std).
    """

    def __call__(self, options: Any, preprocess: Preprocess) -> DatasetSplits: ...


class Register(Protocol):
    """The ``register`` callback every ``stitchframe_register_*`` hook receives.

    ``register(name, obj, *, options=None, aliases=(), replace=False,
    check_identifier=None)`` records ``obj`` under ``name`` with the calling
    plugin as its origin and returns the :class:`Entry`; see :meth:`__call__`.
    """

    def __call__(self, name: str, obj: Any, *, options: type | None = None, aliases: Sequence[str] = (),
                 replace: bool = False, check_identifier: IdentifierCheck | str | None = None) -> Entry:
        """Register ``obj`` under ``name``.

        Args:
            name: Lowercase snake_case (anchor prefixes may contain ``-``), unique
                across all plugins.
            obj: What the hook registers: an :class:`AnchorLoader`, a
                :class:`~stitchframe.StitchLayer` subclass, a
                :class:`~stitchframe.StitchSpace` subclass or a
                :class:`DatasetLoader`; or a lazy reference
                ``"package.module:attribute"`` to one, imported on first use.
            options: The attrs class of its options (default ``obj.Options``,
                else :class:`NoOptions`); give it with a lazy reference, so
                registering imports nothing.
            aliases: Other names for the same entry.
            replace: Override an entry another plugin registered, deliberately.
            check_identifier: Anchor adapters only: an :class:`IdentifierCheck`
                (or a lazy reference to one) that ``stitchframe validate`` runs on
                every source with this prefix.

        Returns:
            The new entry.

        Raises:
            PluginError: A malformed or taken name, an ``obj`` of the wrong kind,
                or ``check_identifier`` given to another registry.
        """


@attrs.frozen(kw_only=True)
class Entry(Generic[T]):
    """One registered object.

    Attributes:
        name: The canonical name.
        obj: The registered factory or class; a lazy reference
            (``"module:attribute"``) is imported on first access.
        options: The attrs class validating this entry's options.
        plugin: The plugin that registered it.
        aliases: Other names that resolve to this entry.
        doc: First line of the object's docstring, for listings.
        kind: What the registry holds (``"stitch layer"``), for messages.
        check: ``check(obj)`` returns what ``obj`` should have been, or
            ``None`` when it fits; lazy references are checked when imported.
        check_identifier: Anchor adapters: the :class:`IdentifierCheck` that
            ``stitchframe validate`` runs (``None``: identifiers are not
            checked before loading); a lazy reference is imported on first use.
    """

    name: str
    _obj: Any = attrs.field(alias="obj")
    options: type = NoOptions
    plugin: str = "?"
    aliases: tuple[str, ...] = ()
    _doc: str = attrs.field(default="", alias="doc")
    kind: str = attrs.field(default="object", eq=False, repr=False)
    check: Callable[[Any], str | None] | None = attrs.field(default=None, eq=False, repr=False)
    _check_identifier: Any = attrs.field(default=None, eq=False, repr=False, alias="check_identifier")

    @property
    def check_identifier(self) -> IdentifierCheck | None:
        """The identifier check (a lazy reference is imported now), or ``None``."""
        if isinstance(self._check_identifier, str):
            check = self._resolve(self._check_identifier, kind_check=False, what=" check_identifier")
            object.__setattr__(self, "_check_identifier", check)
        return self._check_identifier

    @property
    def lazy(self) -> bool:
        """Whether the object is a lazy reference not imported yet."""
        return isinstance(self._obj, str)

    @property
    def obj(self) -> Any:
        if isinstance(self._obj, str):
            object.__setattr__(self, "_obj", self._resolve(self._obj))
        return self._obj

    @property
    def doc(self) -> str:
        """First line of the object's docstring (imports a lazy reference)."""
        if not self._doc:
            object.__setattr__(self, "_doc", _first_doc_line(self.obj))
        return self._doc

    def _resolve(self, ref: str, *, kind_check: bool = True, what: str = "") -> Any:
        modname, _, attr = ref.partition(":")
        try:
            obj = importlib.import_module(modname)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - reported with the plugin and the reference
            raise PluginError(
                f"Plugin {self.plugin!r} registered {self.kind} {self.name!r}{what} as {ref!r}, which cannot be "
                f"imported: {type(exc).__name__}: {exc}. Reinstall the plugin or fix the reference "
                "('package.module:attribute')"
            ) from exc
        if not kind_check:
            expected = None if callable(obj) else "a callable"
        else:
            expected = self.check(obj) if self.check is not None else None
        if expected is not None:
            raise PluginError(f"Plugin {self.plugin!r} registered {self.kind} {self.name!r}{what} as {ref!r}, "
                              f"a {type(obj).__name__}; it must be {expected}")
        return obj


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def _lazy_reference(obj: Any) -> bool:
    return isinstance(obj, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", obj) is not None


class Registry(Generic[T]):
    """A namespace of registered objects of one kind.

    Args:
        kind: Human name of what is registered (``"stitch layer"``), used in
            error messages.
        name_pattern: Pattern every name must match (default: lowercase
            snake_case; anchor prefixes use :data:`PREFIX_NAME`).

    Attributes:
        note: Called for a sentence appended to unknown-name errors (the
            :class:`~stitchframe.Registries` it belongs to names its broken plugins there).
    """

    def __init__(self, kind: str, *, name_pattern: re.Pattern[str] = _NAME) -> None:
        self.kind = kind
        self.name_pattern = name_pattern
        self.note: Callable[[], str] | None = None
        self.check: Callable[[Any], str | None] | None = None
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        obj: T,
        *,
        options: type | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        plugin: str = "?",
        replace: bool = False,
        check_identifier: IdentifierCheck | str | None = None,
    ) -> Entry[T]:
        """Register ``obj`` under ``name``.

        Args:
            name: Lowercase snake_case name, unique across all plugins.
            obj: The factory or class, or a lazy reference
                ``"package.module:attribute"`` imported on first use (then
                pass ``options``, or the reference is imported at once to
                read its ``Options``).
            options: attrs class for the options; defaults to the object's
                ``Options`` attribute, or :class:`NoOptions`.
            aliases: Other names for the same entry.
            plugin: Name of the registering plugin (filled in by the plugin
                manager's callback).
            replace: Deliberately override an existing entry.
            check_identifier: An :class:`IdentifierCheck` or a lazy reference
                to one (anchor adapters).

        Returns:
            The new entry.

        Raises:
            PluginError: The name is malformed, or taken and ``replace`` is false.
        """
        names = (name, *aliases)
        for n in names:
            if not isinstance(n, str) or not self.name_pattern.match(n):
                rule = _RULES.get(self.name_pattern, f"match {self.name_pattern.pattern}")
                raise PluginError(f"Plugin {plugin!r} registered {self.kind} name {n!r}; names must be {rule}.")
        for what, value in (("", obj), (" check_identifier", check_identifier)):
            if isinstance(value, str) and not _lazy_reference(value):
                raise PluginError(f"Plugin {plugin!r} registered {self.kind} {name!r}{what} as the string {value!r}; "
                                  "a lazy reference is written 'package.module:attribute'")
        if check_identifier is not None and not isinstance(check_identifier, str) and not callable(check_identifier):
            raise PluginError(f"Plugin {plugin!r} registered {self.kind} {name!r} with check_identifier="
                              f"{check_identifier!r}; it must be a callable check(identifier, options)")
        if options is None and isinstance(obj, str):
            obj = Entry(name=name, obj=obj, plugin=plugin, kind=self.kind, check=self.check).obj
        if options is None:
            options = getattr(obj, "Options", NoOptions)
        if not attrs.has(options):
            raise PluginError(
                f"Plugin {plugin!r} registered {self.kind} {name!r} with options={options!r}; "
                "options must be an attrs class (decorate it with @attrs.frozen(kw_only=True))."
            )
        for n in names:
            taken = self._lookup(n)
            if taken is not None and not replace:
                raise PluginError(
                    f"Plugin {plugin!r} registered {self.kind} {n!r}, which plugin "
                    f"{taken.plugin!r} already registered; pick another name or pass replace=True "
                    "to override deliberately."
                )
        if replace:
            for n in names:
                taken = self._lookup(n)
                if taken is not None:
                    self._remove(taken.name)
        entry = Entry(
            name=name,
            obj=obj,
            options=options,
            plugin=plugin,
            aliases=tuple(aliases),
            kind=self.kind,
            check=self.check,
            check_identifier=check_identifier,
        )
        self._entries[name] = entry
        for a in aliases:
            self._aliases[a] = name
        return entry

    def _lookup(self, name: str) -> Entry[T] | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        return None

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name)
        for a in entry.aliases:
            self._aliases.pop(a, None)

    def get(self, name: str, *, where: str = "") -> Entry[T]:
        """Return the entry for ``name`` (or an alias).

        Args:
            name: The name to look up.
            where: Where the name came from (a spec path), for the message.

        Raises:
            UnknownNameError: Nothing is registered under that name; the
                message suggests close matches and lists what is registered.
        """
        entry = self._lookup(name) if isinstance(name, str) else None
        if entry is None:
            at = f" at {where}" if where else ""
            known = self.names()
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}{at}; {did_you_mean(name, known)}"
                f"Registered: {', '.join(known) or '(none)'}.{self.note() if self.note else ''}"
            )
        return entry

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Sorted canonical names."""
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        """Name of the plugin that registered ``name``."""
        return self.get(name).plugin

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

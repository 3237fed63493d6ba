"""Hook specifications: the whole plugin contract of stitchframe.

Plugins implement these with ``@stitchframe.hookimpl`` (re-exported as
``stitchframe.hookimpl``) and are found through the ``stitchframe``
entry-point group.  Hooks are called with keyword arguments; an
implementation may declare only the arguments it uses.

Registration hooks (``stitchframe_register_*``) receive a ``register``
callback (:class:`stitchframe.Register`); their return value is ignored.
The callback's signature is::

    register(name, obj, *, options=None, aliases=(), replace=False, check_identifier=None)

``name`` is lowercase snake_case and unique across all plugins; ``options``
is an attrs class validating the object's options (defaults to
``obj.Options``); registering a taken name raises
:class:`~stitchframe.errors.PluginError` naming both plugins unless
``replace=True``.  ``obj`` may be a lazy reference, the string
``"package.module:attribute"``, imported (and checked) the first time it is
used; with ``options`` given, registering then imports nothing, so
``stitchframe validate`` and ``stitchframe plugins`` stay fast::

    register("toy", "stitchframe_toy.adapter:load_toy_anchor", options=ToyOptions)

Resolution hooks (``stitchframe_resolve_*``) are ``firstresult``: return an
object to claim the request or ``None`` to pass.
"""

from __future__ import annotations

from typing import Any

import pluggy

from .registry import Register

hookspec = pluggy.HookspecMarker("stitchframe")
hookimpl = pluggy.HookimplMarker("stitchframe")

__all__ = ["hookspec", "hookimpl"]


@hookspec
def stitchframe_register_anchor_adapters(register: Register) -> None:
    """Register anchor adapters: loaders that turn ``prefix:identifier`` into an Anchor.

    Called once when the engine builds its registries
    (:func:`stitchframe.plugins.load_registries`), before any spec is read.

    Args:
        register: Callback ``register(prefix, load, *, options=None, aliases=(),
            replace=False, check_identifier=None)`` (:class:`stitchframe.Register`).
            ``prefix`` is the source prefix the adapter owns (``"timm"`` for
            ``timm:deit_tiny_patch16_224``); ``load`` is a
            :class:`stitchframe.AnchorLoader`, called as
            ``load(identifier, options, registries, structure_only=False)``
            where ``options`` is an instance of the attrs ``options`` class,
            built from the anchor's ``options:`` mapping in the spec, and
            ``registries`` the engine's :class:`stitchframe.Registries` (so an
            adapter built on other sources, a distilled pool of students of a
            ``timm:`` teacher say, loads them with
            ``stitchframe.load_anchor(source, registries)``; a loader that
            needs none declares ``registries=None``).  Every loader takes the
            keyword ``structure_only``: with ``True`` (inside
            ``torch.device("meta")``, when :func:`stitchframe.load_route`
            rebuilds an exported route) it builds the same modules without
            reading or downloading weights, ignoring ``pretrained`` and
            weight-file options (the route's own tensors replace them).  When
            the modules' structure comes from a file (a ``config.json``), the
            loader also passes ``Anchor(structure=(source, options))``: a
            source that builds them with nothing but those options; it is
            written into the route's manifest.
            ``check_identifier`` is an optional :class:`stitchframe.IdentifierCheck`,
            ``check(identifier, options)``, that ``stitchframe validate`` runs
            without building a model (a name list, a local file) and that
            raises :class:`stitchframe.UnknownNameError` or
            :class:`stitchframe.SpecError` for an identifier that cannot load.

    Returns:
        Nothing; the return value is ignored.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_register_anchor_adapters(register):
            register("toy", load_toy_anchor, options=ToyOptions,
                     check_identifier="stitchframe_toy.names:check_toy_name")

        def load_toy_anchor(identifier, options, registries=None, *, structure_only=False):
            model = ToyNet(width=int(identifier))  # on the meta device when structure_only
            if options.weights and not structure_only:
                model.load_state_dict(safetensors.torch.load_file(options.weights))
            return stitchframe.Anchor(identifier, stem=model.stem, blocks=list(model.blocks), head=model.head)
        ```

    Added in 0.1.
    """


@hookspec
def stitchframe_register_stitch_layers(register: Register) -> None:
    """Register stitching-layer types.

    Called once when the engine builds its registries.

    Args:
        register: Callback ``register(name, cls, *, options=None, aliases=(),
            replace=False)`` (:class:`stitchframe.Register`).  ``cls`` is a :class:`stitchframe.StitchLayer`
            subclass constructed as ``cls(src, dst, options)`` from two
            :class:`stitchframe.ActivationSpec` objects; its classmethod
            ``supports(src, dst)`` returns ``None`` when it can bridge the pair
            or a one-line reason when it cannot.  ``options`` defaults to
            ``cls.Options``.

    Returns:
        Nothing; the return value is ignored.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_register_stitch_layers(register):
            register("mlp", MLPStitch)
        ```

    Added in 0.1.
    """


@hookspec
def stitchframe_register_stitch_spaces(register: Register) -> None:
    """Register stitch-space generators (which routes an SN-Net offers).

    Called once when the engine builds its registries.

    Args:
        register: Callback ``register(name, cls, *, options=None, aliases=(),
            replace=False)``.  ``cls`` is a :class:`stitchframe.StitchSpace`
            subclass constructed as ``cls(options)``; its method
            ``routes(anchors, can_stitch, context=None)`` yields
            :class:`stitchframe.Route` objects (see :mod:`stitchframe.stitch_spaces`);
            ``can_stitch`` is a :class:`stitchframe.CanStitch` and the engine
            passes a :class:`stitchframe.SpaceContext` as ``context`` (probe
            inputs, a stitching-layer factory, the seed) for spaces that
            choose routes on data.

    Returns:
        Nothing; the return value is ignored.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_register_stitch_spaces(register):
            register("every_pair", EveryPairSpace)
        ```

    Added in 0.1.
    """


@hookspec
def stitchframe_register_datasets(register: Register) -> None:
    """Register datasets that specs can name under ``data.name``.

    Called once when the engine builds its registries.

    Args:
        register: Callback ``register(name, load, *, options=None, aliases=(),
            replace=False)``.  ``load`` is a :class:`stitchframe.DatasetLoader`,
            ``load(options, preprocess) -> stitchframe.DatasetSplits``, where
            ``preprocess`` is the :class:`stitchframe.Preprocess` the anchors
            agree on (input size, mean, std).

    Returns:
        Nothing; the return value is ignored.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_register_datasets(register):
            register("my_images", load_my_images, options=MyImagesOptions)
        ```

    Added in 0.1.
    """


@hookspec
def stitchframe_register_tasks(register: Register) -> None:
    """Register tasks that specs can name under ``task.name``: what the build trains and evaluates per route.

    Called once when the engine builds its registries.  The built-in
    ``classification`` task (every route's output is its end anchor's class
    logits) registers through this hook too.

    Args:
        register: Callback ``register(name, cls, *, options=None, aliases=(),
            replace=False)``.  ``cls`` is a :class:`stitchframe.Task` subclass
            constructed as ``cls(options)``, ``options`` an instance of the attrs
            ``options`` class (default ``cls.Options``) built from the spec's
            ``task.options``.  The build calls, in order, ``check(snnet,
            splits, spec)`` (raise :class:`stitchframe.SpecError` when the data or
            the anchors do not fit the task), ``build_model(snnet, splits)``
            (the module trained and evaluated: it holds ``snnet`` and runs its
            selected route, plus the task's own layers such as a shared head),
            ``loss(output, target, train_spec)`` at every training step, and
            ``batch_stats(output, target)`` per route and validation batch,
            whose sums ``metrics(stats)`` turns into the route's metrics
            (``accuracy`` and ``loss`` at least, and the task's ``metric``,
            which the report ranks routes by).

    Returns:
        Nothing; the return value is ignored.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_register_tasks(register):
            register("segmentation", SegmentationTask, options=SegmentationOptions)
        ```

    Added in 0.1.
    """


@hookspec(firstresult=True)
def stitchframe_resolve_anchor(source: str, options: dict[str, Any]) -> Any:
    """Load an anchor from a source that no registered adapter prefix claims.

    Called by :func:`stitchframe.load_anchor` when ``source`` has no
    ``prefix:`` or its prefix is not registered, before reporting an unknown
    source.  Implementations are tried in turn until one returns non-``None``.

    Args:
        source: The source string exactly as written in the spec.
        options: The anchor's ``options:`` mapping from the spec (plain data,
            not validated by stitchframe).

    Returns:
        A :class:`stitchframe.Anchor` to claim the source, or ``None`` to pass.

    Example:
        ```python
        @stitchframe.hookimpl
        def stitchframe_resolve_anchor(source, options):
            if source.endswith(".onnx"):
                return load_onnx_anchor(source, **options)
            return None
        ```

    Added in 0.1.
    """

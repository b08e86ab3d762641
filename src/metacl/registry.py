"""Registries of the named parts a configuration may use.

A configuration file can only name what is registered here: datasets, scenarios,
models, strategies, meta-learning algorithms. Nothing in a configuration is imported or
called by dotted path, so a shared configuration or sweep file is safe to run.

A registered factory declares its settings as keyword-only parameters with type
annotations and defaults. :meth:`Registry.validate` checks a settings dictionary against
that signature before anything is built: an unknown key or a value of the wrong type is
a :class:`~metacl.errors.ConfigError` that lists what is valid.

Example:
    >>> from metacl.registry import Registry
    >>> COLOURS = Registry("colour")
    >>> @COLOURS.register("red", summary="a warm colour")
    ... def red(*, brightness: float = 1.0) -> str:
    ...     return f"red at {brightness}"
    >>> COLOURS.build("red", brightness=0.5)
    'red at 0.5'
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from metacl.errors import ConfigError

__all__ = ["Param", "Entry", "Registry", "check_value"]


@dataclass(frozen=True)
class Param:
    """One configurable setting of a registered factory."""

    name: str
    annotation: Any
    default: Any
    required: bool

    def describe(self) -> str:
        kind = type_name(self.annotation)
        if self.required:
            return f"{self.name}: {kind} (required)"
        return f"{self.name}: {kind} = {self.default!r}"


@dataclass(frozen=True)
class Entry:
    """A registered factory with its name, one-line summary and settings."""

    name: str
    factory: Callable[..., Any]
    summary: str
    params: dict[str, Param] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


class Registry:
    """A name -> factory table for one kind of part (dataset, model, strategy, ...).

    Args:
        kind: What the registry holds, used in error messages ("dataset").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, summary: str | None = None, tags: tuple[str, ...] = ()
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers ``factory`` under ``name``.

        Only the factory's keyword-only parameters are configurable; positional
        parameters are the context the caller passes (a model, a stream).
        """

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, doc, _params_of(factory), tags)
            return factory

        return decorate

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an error listing the valid names otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            )
        return self._entries[name]

    def validate(self, name: str, settings: dict[str, Any], *, where: str = "") -> dict:
        """Check ``settings`` against the factory's signature and fill in defaults.

        Args:
            name: A registered name.
            settings: Keyword settings from a configuration.
            where: Where the settings come from, for error messages ("strategy").

        Returns:
            A new dictionary holding every parameter, defaults filled in.

        Raises:
            ConfigError: An unknown key, a missing required key or a bad value.
        """
        entry = self.get(name)
        where = where or self.kind
        unknown = sorted(set(settings) - set(entry.params))
        if unknown:
            valid = ", ".join(entry.params) or "none"
            raise ConfigError(
                f"unknown key(s) {', '.join(map(repr, unknown))} for {self.kind} "
                f"{name!r} in {where}; valid keys: {valid}"
            )
        resolved = {}
        for param in entry.params.values():
            if param.name in settings:
                resolved[param.name] = check_value(
                    settings[param.name], param.annotation, f"{where}.{param.name}"
                )
            elif param.required:
                raise ConfigError(
                    f"{where}.{param.name} is required for {self.kind} {name!r} "
                    f"({param.describe()})"
                )
            else:
                resolved[param.name] = param.default
        return resolved

    def build(self, name: str, *context: Any, **settings: Any) -> Any:
        """Validate ``settings`` and call the factory with ``context`` first."""
        resolved = self.validate(name, settings)
        return self.get(name).factory(*context, **resolved)


def _params_of(factory: Callable[..., Any]) -> dict[str, Param]:
    signature = inspect.signature(factory)
    try:
        target = factory.__init__ if isinstance(factory, type) else factory
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: fall back to no checking
        hints = {}
    params = {}
    for p in signature.parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        required = p.default is inspect.Parameter.empty
        params[p.name] = Param(
            p.name, hints.get(p.name, Any), None if required else p.default, required
        )
    return params


def type_name(annotation: Any) -> str:
    """A short readable name for a type annotation."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        inner = type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if annotation is float:
        return "finite float"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation``; return it, converted where harmless.

    Integers are accepted where floats are expected, and lists where tuples are.

    Raises:
        ConfigError: The value does not fit, with the expected type or choices.
    """
    ok, converted = _fits(value, annotation)
    if not ok:
        raise ConfigError(
            f"{where} = {value!r} is invalid; expected {type_name(annotation)}"
        )
    return converted


def _fits(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if origin in (Union, types.UnionType):
        for option in args:
            ok, converted = _fits(value, option)
            if ok:
                return True, converted
        return False, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        inner = args[0] if args else Any
        out = []
        for item in value:
            ok, converted = _fits(item, inner)
            if not ok:
                return False, value
            out.append(converted)
        return True, (tuple(out) if origin is tuple else out)
    if annotation is type(None):
        return value is None, value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return False, value
        # NOTE: NaN passes every comparison a range check makes (nan < 0 is false),
        # and an infinite rate or weight only shows up as a NaN loss mid-run
        return math.isfinite(number), number
    if annotation is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if annotation is dict or origin is dict:
        return isinstance(value, dict), value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value

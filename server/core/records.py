"""Typed JSON records: frozen dataclasses read from and written to JSON by their type annotations.

Supported annotations: str, int, float (an int is accepted: JSON writes 3.0 as 3), bool, Any,
``X | None``, ``tuple[X, ...]`` (a JSON list), ``dict[str, X]`` and nested dataclasses. A field with a
default may be absent; ``None`` fields are left out of the JSON, so an optional key that was absent
stays absent. Unknown keys are ignored, so a newer writer's extra facts do not break an older reader.
"""

from __future__ import annotations

import copy
import dataclasses
import reprlib
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any


class FieldError(ValueError):
    """A JSON value does not fit its record.

    Attributes:
        field: the dotted path of the offending value, e.g. ``models.seed.splits.holdout.user_tower.input_dim``
            (list items as ``[j]``; "" for the root).
        problem: what was expected and what arrived.
    """

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field or 'the document'} {problem}")
        self.field = field
        self.problem = problem


def decode(tp: Any, value: Any, where: str = "", shown: Any = None) -> Any:
    """``value`` (parsed JSON) as an instance of annotation ``tp``.

    Args:
        where: the dotted path of ``value``, for errors.
        shown: the annotation to name in a type error (the ``X | None`` that ``tp`` came from).

    Raises:
        FieldError: naming the first missing or mistyped field.
    """

    def wrong() -> FieldError:
        return FieldError(where, f"must be {type_name(shown or tp)} (got {_got(value)})")

    if tp is Any:
        return copy.deepcopy(value)  # a free-form part: the record must not share it with the caller
    if isinstance(tp, types.UnionType):  # only ``X | None`` is used
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return decode(inner, value, where, shown=tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise wrong()
        item = typing.get_args(tp)[0]
        return tuple(decode(item, v, f"{where}[{j}]") for j, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        item = typing.get_args(tp)[1]
        return {k: decode(item, v, _join(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = decode(hints[f.name], value[f.name], _join(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise FieldError(_join(where, f.name), f"is missing (expected {type_name(hints[f.name])})")
        return tp(**kwargs)
    # bool is a subclass of int in Python, never in JSON: true is not a dimension.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise wrong()


def encode(value: Any) -> Any:
    """A record (or any value inside one) as JSON-ready dicts, lists and scalars; None fields left out."""
    if dataclasses.is_dataclass(value):
        return {
            f.name: encode(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None
        }
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: encode(v) for k, v in value.items()}
    return value


def string_fields(node: Any, wanted: typing.Callable[[str], bool], skip: str = "") -> Iterator[str]:
    """The values of every str field, at any depth, whose field name satisfies ``wanted``.

    Fields named ``skip`` are not entered.
    """
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name == skip:
                continue
            if isinstance(value, str) and wanted(f.name):
                yield value
            else:
                yield from string_fields(value, wanted, skip)
    elif isinstance(node, Mapping):
        for v in node.values():
            yield from string_fields(v, wanted, skip)
    elif isinstance(node, (tuple, list)):
        for v in node:
            yield from string_fields(v, wanted, skip)


def type_name(tp: Any, top: bool = True) -> str:
    """How an error names an annotation: int, str or null, list[str], dict[str, TowerGraph], an object (Catalog)."""
    if tp is Any:
        return "any value"
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):
        return " or ".join(type_name(a, top) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list[{type_name(args[0], False)}]"
    if typing.get_origin(tp) is dict:
        return f"dict[str, {type_name(args[1], False)}]"
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})" if top else tp.__name__
    return "null" if tp is type(None) else tp.__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _got(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"  # reprlib: long strings and lists shortened

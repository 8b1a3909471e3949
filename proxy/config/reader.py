"""Reading YAML mappings with key paths: the helpers every config section uses.

Each converter raises ``ValueError`` on a bad value; ``Reader`` turns that into a
``ConfigError`` naming the file, the key path, the value and the expected form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from proxy.config.units import parse_duration, parse_size

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem, located by file and key path."""

    def __init__(self, file: str, path: str, value: object, expected: str) -> None:
        self.file, self.path, self.value, self.expected = file, path, value, expected
        where = f"{file}: {path}" if path else file
        try:
            shown = repr(value)
        except ValueError:  # an int too long to print (YAML reads 0xfff... of any length)
            shown = "a number too long to show"
        super().__init__(f"{where}: got {shown}, expected {expected}")


class Reader:
    """Walks a YAML mapping, remembering the key path for error messages."""

    def __init__(self, file: str, data: dict[str, Any], path: str = "") -> None:
        self.file, self.data, self.path = file, data, path
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, value: object, expected: str) -> ConfigError:
        return ConfigError(self.file, self._key(key), value, expected)

    def has(self, key: str) -> bool:
        return key in self.data

    def section(self, key: str) -> Reader:
        self.used.add(key)
        value = self.data.get(key, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, value, "a mapping")
        return Reader(self.file, value, self._key(key))

    def get(self, key: str, default: T, convert: Callable[[Any], T], expected: str) -> T:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        try:
            return convert(value)
        except (ValueError, TypeError):
            raise self.fail(key, value, expected) from None

    def field(self, model: type, key: str, convert: Callable[[Any], T], expected: str) -> T:
        """``get`` with the default that ``model`` states for its field named ``key``."""
        fallback: T = default(model, key)
        return self.get(key, fallback, convert, expected)

    def require(self, key: str, convert: Callable[[Any], T], expected: str) -> T:
        if key not in self.data:
            raise self.fail(key, None, expected + " (required)")
        self.used.add(key)
        try:
            return convert(self.data[key])
        except (ValueError, TypeError):
            raise self.fail(key, self.data[key], expected) from None

    def done(self, allowed_extra: tuple[str, ...] = ()) -> None:
        """Reject keys nobody read: a typo must not silently fall back to a default."""
        for key in self.data:
            if key not in self.used and key not in allowed_extra:
                known = ", ".join(sorted(self.used | set(allowed_extra)))
                raise self.fail(str(key), self.data[key], f"no such key here (known: {known})")


def default(cls: type, name: str) -> Any:
    """The default a dataclass states for field ``name``: readers take it from there, so each
    default is written once, in the model."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name}")


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError
        return value

    return convert


def reject() -> Any:
    raise ValueError


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError
        return str(value)

    return convert


def list_of(convert: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def convert_list(value: Any) -> tuple[T, ...]:
        if isinstance(value, str) or not isinstance(value, list):
            raise ValueError
        return tuple(convert(v) for v in value)

    return convert_list


def names(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError
    return frozenset(str(v) for v in value)


def read_flat(
    r: Reader, default: T, kinds: dict[str, tuple[Callable[[Any], Any], str]]
) -> T:
    """Read a flat section whose every field has a converter and an expected form."""
    values = {
        name: r.get(name, getattr(default, name), convert, expected)
        for name, (convert, expected) in kinds.items()
    }
    r.done()
    return dataclasses.replace(default, **values)  # type: ignore[type-var]


DUR = (parse_duration, "a duration such as 250ms, 30s, 5m or 2h (0 disables)")
SIZE = (parse_size, "a size such as 65536, 64KiB, 10MiB or 1GiB")


def positive(hi: int) -> tuple[Callable[[Any], int], str]:
    return int_range(1, hi), f"an integer 1..{hi}"

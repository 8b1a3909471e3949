"""The two sides a request can go to."""

from __future__ import annotations

from typing import Final, Literal

Variant = Literal["original", "new"]
ORIGINAL: Final = "original"
NEW: Final = "new"
VARIANTS: Final[tuple[Variant, Variant]] = (ORIGINAL, NEW)

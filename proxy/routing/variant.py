"""The two sides a request can go to, and the series telemetry keeps."""

from __future__ import annotations

from typing import Final, Literal

Variant = Literal["original", "new"]
ORIGINAL: Final = "original"
NEW: Final = "new"
VARIANTS: Final[tuple[Variant, Variant]] = (ORIGINAL, NEW)

# What telemetry records: the two variants, and for mirrored requests the shadow's answers
# (``shadow``, from new) beside original's answers to the same requests (``paired``).
Series = Literal["original", "new", "shadow", "paired"]
SHADOW: Final = "shadow"
PAIRED: Final = "paired"
SERIES: Final[tuple[Series, ...]] = (ORIGINAL, NEW, SHADOW, PAIRED)

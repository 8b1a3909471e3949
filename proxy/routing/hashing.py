"""Sticky, monotone, Unleash-compatible bucketing: pure functions.

``h = murmur3_x86_32(f"{salt}:{key}", seed 0)``; ``bucket = (h % 100) * 100 +
(h // 100) % 100`` (0..9999 basis points); a user is on ``new`` when
``bucket < new_weight_bp``. ``h % 100 + 1`` is Unleash's ``normalizedHash``, so
at whole percents the cohort is the one an Unleash gradual rollout with
groupId = salt would pick. Raising the weight only moves users to new.
"""

from __future__ import annotations

import mmh3

from proxy.routing.variant import NEW, ORIGINAL, Variant


def bucket(salt: str, key: str) -> int:
    """The user's basis-point bucket 0..9999 (UTF-8 murmur3 x86 32, seed 0)."""
    h = mmh3.hash(f"{salt}:{key}", 0, False)
    return (h % 100) * 100 + (h // 100) % 100


def choose(bucket_bp: int, new_weight_bp: int) -> Variant:
    """Sticky and monotone: raising the weight only moves users to new."""
    return NEW if bucket_bp < new_weight_bp else ORIGINAL

"""Assigning requests to the versions of a member.

With a key, assignment is weighted rendezvous hashing: each version scores the key as
-ln(u)/share with u a hash of (key, version) in (0, 1), and the lowest score wins. A key
therefore keeps its version while the split is unchanged, a version wins keys in proportion
to its share, and raising one share while the others keep their proportions only moves keys
*to* that version (monotone), however many versions there are. A change that also moves the
others' proportions (50/30/20 to 20/30/50) moves keys between them as well: their scores'
order changes. Without a key, assignment is random at the configured shares.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence


class ChangeRejected(ValueError):
    """An invalid change (HTTP 422); `conflict` marks one refused because of a running rollout (409)."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


def check_split(split: Mapping[str, float], versions: Iterable[str]) -> None:
    """ChangeRejected unless `split` gives non-negative shares summing to 1 over deployed versions."""
    deployed = set(versions)
    unknown = sorted(set(split) - deployed)
    if unknown:
        raise ChangeRejected(f"split: versions {unknown} are not deployed (deployed: {sorted(deployed)})")
    negative = sorted(v for v, share in split.items() if not share >= 0)
    if negative:
        raise ChangeRejected(f"split: shares must be >= 0: {negative}")
    total = sum(split.values())
    if abs(total - 1.0) > 1e-6:
        raise ChangeRejected(f"split: shares must sum to 1, not {total:.6g}")


def check_shadow(shadow: Mapping[str, float], versions: Iterable[str]) -> None:
    deployed = set(versions)
    unknown = sorted(set(shadow) - deployed)
    if unknown:
        raise ChangeRejected(f"shadow: versions {unknown} are not deployed (deployed: {sorted(deployed)})")
    bad = sorted(v for v, share in shadow.items() if not 0 <= share <= 1)
    if bad:
        raise ChangeRejected(f"shadow: shares must lie in [0, 1]: {bad}")


def _unit_hash(key: str, version: str) -> float:
    digest = hashlib.blake2b(f"{version}\x00{key}".encode(), digest_size=8).digest()
    # 53 bits into (0, 1): never 0, so the log below is finite.
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) / float(1 << 53)


def sticky_version(key: str, split: Mapping[str, float]) -> str:
    """The version `key` reaches under `split` (versions with share 0 never win)."""
    best_version, best_score = "", math.inf
    for version, share in split.items():
        if share > 0:
            score = -math.log(_unit_hash(key, version)) / share
            if score < best_score:
                best_version, best_score = version, score
    if not best_version:
        raise ValueError("split has no version with a positive share")
    return best_version


class Splitter:
    """Chooses a version per request for one member under a fixed split."""

    def __init__(self, split: Mapping[str, float], rng: random.Random | None = None) -> None:
        self.split = dict(split)
        self._versions = [v for v, s in self.split.items() if s > 0]
        if not self._versions:
            raise ValueError("split has no version with a positive share")
        self._cumulative = []
        total = 0.0
        for version in self._versions:
            total += self.split[version]
            self._cumulative.append(total)
        self._rng = rng or random.Random()

    def choose(self, keys: Sequence[str | None]) -> list[str]:
        if len(self._versions) == 1:
            return [self._versions[0]] * len(keys)
        return [self._choose_one(key) for key in keys]

    def _choose_one(self, key: str | None) -> str:
        if key is not None:
            return sticky_version(key, self.split)
        draw = self._rng.random() * self._cumulative[-1]
        for version, bound in zip(self._versions, self._cumulative):
            if draw < bound:
                return version
        return self._versions[-1]

"""Traffic splits: accuracy, stickiness and monotone movement (issue acceptance numbers)."""
import random
from collections import Counter

import pytest

from ensemble.traffic import Splitter, sticky_version

N = 10_000
KEYS = [f"user-{i}" for i in range(N)]


@pytest.mark.parametrize("split", [{"v1": 0.8, "v2": 0.2}, {"v1": 0.5, "v2": 0.3, "v3": 0.2}, {"v1": 0.05, "v2": 0.95}])
def test_keyed_and_random_shares_within_two_percent(split):
    splitter = Splitter(split, random.Random(3))
    for keys in (KEYS, [None] * N):
        counts = Counter(splitter.choose(keys))
        for version, share in split.items():
            assert abs(counts[version] / N - share) <= 0.02, (version, counts)


def test_sticky_for_repeated_keys():
    splitter = Splitter({"v1": 0.7, "v2": 0.3})
    first = splitter.choose(KEYS)
    assert all(splitter.choose(KEYS) == first for _ in range(3))
    assert first == Splitter({"v1": 0.7, "v2": 0.3}).choose(KEYS)  # a fresh replica agrees


@pytest.mark.parametrize("versions", [["v1", "v2"], ["v1", "v2", "v3"]])
def test_growing_share_only_moves_keys_to_that_version(versions):
    previous = None
    others = {v: i + 1.0 for i, v in enumerate(versions[:-1])}  # unequal, in fixed proportions
    for canary in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0):
        split = {v: (1 - canary) * w / sum(others.values()) for v, w in others.items()} | {versions[-1]: canary}
        assigned = {k: sticky_version(k, split) for k in KEYS}
        if previous is not None:
            moved = [k for k in KEYS if assigned[k] != previous[k]]
            assert all(assigned[k] == versions[-1] for k in moved)
        previous = assigned


def test_zero_share_never_chosen_and_empty_split_rejected():
    assert set(Splitter({"v1": 1.0, "v2": 0.0}).choose(KEYS[:500] + [None] * 500)) == {"v1"}
    with pytest.raises(ValueError):
        Splitter({"v1": 0.0})

"""Learned trust on a stream where the best member degrades half way and later recovers."""
from __future__ import annotations

import numpy as np
import pytest

from ensemble.combine import weighted_mean
from ensemble.trust import MemberStats, TrustBook, TrustSpec

MEMBERS = ["best-v1", "b-v1", "c-v1", "d-v1", "e-v1"]
NOISE = np.array([0.1, 0.3, 0.4, 0.5, 0.6])  # members' error std around the signal
N, DEGRADE, RECOVER = 6000, 2000, 4000


def stream(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels [N] and member predictions [M, N]; the best member is off in [DEGRADE, RECOVER)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, np.sqrt(0.3), N)
    actual = signal + rng.normal(0, np.sqrt(0.7), N)
    predictions = signal + rng.normal(size=(len(MEMBERS), N)) * NOISE[:, None]
    bad = slice(DEGRADE, RECOVER)
    predictions[0, bad] += 3.0 + rng.normal(0, 3.0, RECOVER - DEGRADE)  # bias and noise injected
    return actual, predictions


def replay(policy: str, **spec: float) -> tuple[np.ndarray, np.ndarray]:
    """Predict each label with the weights in force, then learn from it; returns combined [N], weights [M, N]."""
    book = TrustBook(TrustSpec(policy=policy, **spec), priors={m: 1.0 for m in MEMBERS})
    actual, predictions = stream()
    combined, history = np.empty(N), np.empty((len(MEMBERS), N))
    for t in range(N):
        weights = book.weights(MEMBERS)
        history[:, t] = [weights[m] for m in MEMBERS]
        combined[t] = weighted_mean(predictions[:, t : t + 1], history[:, t : t + 1])[0][0]
        book.update([(dict(zip(MEMBERS, predictions[:, t])), actual[t])])
    return combined, history


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def test_hedge_moves_away_from_a_degraded_member_and_back():
    actual, predictions = stream()
    combined, weights = replay("hedge")
    static, _ = replay("static")
    # Skip the first 200 labels of the segment: the time hedge needs to notice.
    segment = slice(DEGRADE + 200, RECOVER)
    best_remaining = min(mse(predictions[m, segment], actual[segment]) for m in range(1, len(MEMBERS)))
    hedge_mse, static_mse = mse(combined[segment], actual[segment]), mse(static[segment], actual[segment])
    print(f"\ndegraded segment MSE: hedge {hedge_mse:.4f}, best remaining member {best_remaining:.4f}, "
          f"static {static_mse:.4f} (hedge/best {hedge_mse / best_remaining:.3f}, hedge/static {hedge_mse / static_mse:.3f})")
    print(f"best member's weight: before {weights[0, DEGRADE - 1]:.3f}, degraded {weights[0, RECOVER - 1]:.4f}, "
          f"recovered {weights[0, -1]:.3f}")
    assert hedge_mse <= 1.10 * best_remaining
    assert hedge_mse <= 0.80 * static_mse
    assert weights[0, RECOVER - 1] < 0.02  # near the floor while degraded
    assert weights[0, -1] > 0.2 and weights[0, -1] == weights[:, -1].max()  # earned back


def test_inverse_error_also_avoids_the_degraded_member():
    actual, _ = stream()
    combined, _ = replay("inverse_error")
    static, _ = replay("static")
    segment = slice(DEGRADE + 300, RECOVER)
    assert mse(combined[segment], actual[segment]) <= 0.8 * mse(static[segment], actual[segment])


def test_static_keeps_the_priors():
    book = TrustBook(TrustSpec(policy="static"), priors={"a-v1": 3.0, "b-v1": 1.0})
    book.update([({"a-v1": 5.0, "b-v1": 0.0}, 0.0)] * 50)
    assert book.weights() == {"a-v1": 3.0, "b-v1": 1.0}


def test_floor_keeps_every_member_in():
    book = TrustBook(TrustSpec(policy="hedge", floor=0.05), priors={"a-v1": 1.0, "b-v1": 1.0})
    book.update([({"a-v1": 10.0, "b-v1": 0.0}, 0.0), ({"a-v1": 10.0, "b-v1": 1.0}, 1.0)] * 100)
    assert book.weights()["a-v1"] == pytest.approx(0.025, rel=1e-6)


def test_state_round_trip_restores_exact_weights():
    actual, predictions = stream()
    book = TrustBook(TrustSpec(), priors={m: 1.0 for m in MEMBERS})
    book.update((dict(zip(MEMBERS, predictions[:, t])), actual[t]) for t in range(500))
    copy = TrustBook(TrustSpec(), priors={m: 1.0 for m in MEMBERS})
    copy.restore(book.state())
    assert copy.weights() == book.weights()


def test_drift_flags_error_ratio_and_bias():
    rng = np.random.default_rng(1)
    book = TrustBook(TrustSpec(), priors={"a-v1": 1.0, "b-v1": 1.0}, baselines={"a-v1": 1.0, "b-v1": 1.0})
    actual = rng.normal(size=1000)
    book.update(({"a-v1": y + rng.normal(0, 0.5), "b-v1": y + 0.5 + rng.normal(0, 0.1)}, y) for y in actual)
    assert book.drift("a-v1")["drift"] is False
    b = book.drift("b-v1")
    assert b["drift"] is True and "residual" in b["reason"] and b["bias_z"] < -4
    noisy = TrustBook(TrustSpec(), priors={"a-v1": 1.0}, baselines={"a-v1": 0.5})
    noisy.update(({"a-v1": y + rng.normal(0, 1.0)}, y) for y in actual)
    assert noisy.drift("a-v1")["drift"] is True and noisy.drift("a-v1")["ratio"] > 1.5


def test_a_version_that_never_predicted_does_not_lead():
    """Sleeping experts: absence is charged the mean loss of those present, not rewarded."""
    book = TrustBook(TrustSpec(), priors={"good-v1": 1.0, "bad-v1": 1.0, "good-v2": 1.0})
    actuals = np.random.default_rng(1).normal(0, 1, 100)
    book.update([({"good-v1": y + 0.1, "bad-v1": y + 1.0}, y) for y in actuals])
    weights = book.weights()
    assert weights["good-v1"] > weights["good-v2"] > weights["bad-v1"]
    assert book.stats["good-v2"].labels == 0


def test_a_version_deployed_after_others_learned_starts_at_their_mean():
    """A canary added to a running graph neither takes over its answers nor starts buried."""
    members = {"good-v1": 0.1, "fair-v1": 0.5, "poor-v1": 1.0}  # error std
    book = TrustBook(TrustSpec(), priors=dict.fromkeys(members, 1.0))
    rng = np.random.default_rng(2)
    actuals = rng.normal(0, 1, 2000)
    book.update([({m: y + rng.normal(0, s) for m, s in members.items()}, y) for y in actuals])
    book.stats["gone-v1"] = MemberStats(discounted_loss=1e4)  # retired long ago: its loss stands still
    book.priors["good-v2"] = 1.0  # deployed now, as `make deploy` of a canary does
    weights = book.weights()
    assert weights["good-v1"] > weights["good-v2"] > weights["poor-v1"]
    book.update([({**{m: y + rng.normal(0, s) for m, s in members.items()}, "good-v2": y + rng.normal(0, 0.1)}, y)
                 for y in rng.normal(0, 1, 5)])
    weights = book.weights()
    assert weights["good-v1"] > weights["good-v2"] > weights["poor-v1"]  # a few good labels do not crown it


def test_one_wrong_label_does_not_stop_learning():
    """A label in the wrong unit (3.4e38) counts as a few standard deviations, not as itself."""
    members = {"good-v1": 0.1, "poor-v1": 1.0}
    rng = np.random.default_rng(4)

    def labels(n: int) -> list:
        return [({m: y + rng.normal(0, s) for m, s in members.items()}, y) for y in rng.normal(0, 1, n)]

    book = TrustBook(TrustSpec(), priors=dict.fromkeys(members, 1.0))
    book.update(labels(300))
    book.update([({m: 0.0 for m in members}, 3.4e38)])
    assert book.scale.variance < 2.0 and book.stats["good-v1"].recent() < 1.0
    book.update(labels(300))
    weights = book.weights()
    assert weights["good-v1"] > 0.9  # still learning whom to trust


@pytest.mark.parametrize("wrong_at", [0, 2, 12])
def test_a_wrong_label_among_the_first_leaves_no_trace(wrong_at: int):
    """Nothing is learned from the first labels until five are in, each then bounded by the median
    and MAD of all five; later ones by those of the labels so far; at the 30th the scale is built
    again from them. So even the first label being wrong (3.4e38) is forgotten."""
    members = {"good-v1": 0.1, "poor-v1": 1.0}
    rng = np.random.default_rng(5)

    def labels(n: int) -> list:
        return [({m: y + rng.normal(0, s) for m, s in members.items()}, y) for y in rng.normal(0, 1, n)]

    for policy in ("hedge", "inverse_error"):
        book = TrustBook(TrustSpec(policy=policy), priors=dict.fromkeys(members, 1.0))
        book.update(labels(wrong_at))
        book.update([({m: 0.0 for m in members}, 3.4e38)])
        book.update(labels(300))
        assert 0.5 < book.scale.variance < 2.0, book.scale
        assert book.stats["good-v1"].recent() < 1.0, policy  # bounded to ten deviations, decaying
        assert book.weights()["good-v1"] > (0.9 if policy == "hedge" else 0.6), policy


def test_the_first_labels_held_survive_a_restart_and_a_state_past_them_reads_as_before():
    book = TrustBook(TrustSpec(), priors={"a-v1": 1.0})
    book.update([({"a-v1": 0.0}, 1.0)] * 3)
    assert book.stats["a-v1"].labels == 0 and len(book.state()["held"]) == 3
    again = TrustBook(TrustSpec(), priors={"a-v1": 1.0})
    again.restore(book.state())
    again.update([({"a-v1": 0.0}, 1.0)] * 2)
    assert again.stats["a-v1"].labels == 5 and "held" not in again.state()
    again.update([({"a-v1": 0.0}, 1.0)] * 25)
    state = again.state()
    assert set(state) == {"stats", "scale"} and set(state["scale"]) == {"count", "mean", "m2"}  # as releases before


def test_a_member_off_by_exactly_a_constant_is_flagged_for_bias():
    book = TrustBook(TrustSpec(), priors={"a-v1": 1.0}, baselines={"a-v1": 10.0})
    book.update(({"a-v1": y - 0.5}, y) for y in np.random.default_rng(6).normal(size=200))
    drift = book.drift("a-v1")
    assert drift["drift"] is True and "residual" in drift["reason"] and drift["bias_z"] > 4


@pytest.mark.parametrize("policy", ["hedge", "inverse_error"])
def test_weights_stay_finite_and_ordered_whatever_the_labels_unit(policy: str):
    """Labels around 1e-160 are valid numbers: inverse_error's 1/MSE overflowed to inf and the
    normalised weights became NaN, which answers nothing."""
    rng = np.random.default_rng(0)
    book = TrustBook(TrustSpec(policy=policy), priors={"a-v1": 1.0, "b-v1": 1.0})
    actual = rng.normal(size=300) * 1e-160
    book.update([({"a-v1": y + 1e-162 * z, "b-v1": y + 1e-160 * z}, y)
                 for y, z in zip(actual, rng.normal(size=300))])
    weights = book.weights()
    assert all(np.isfinite(w) and w > 0 for w in weights.values())
    assert weights["a-v1"] > weights["b-v1"]


def test_a_wrong_label_among_first_labels_mostly_equal_leaves_no_trace():
    """Returns of exactly 0 made most of the first labels equal, so their median deviation was 0
    and nothing bounded the one label in the wrong unit among them: the scale kept it for good."""
    rng = np.random.default_rng(5)
    noise = {"good-v1": 0.1, "poor-v1": 1.0}

    def labels(n: int) -> list[tuple[dict[str, float], float]]:
        return [({m: y + rng.normal(0, s) for m, s in noise.items()}, y) for y in rng.normal(0, 1, n)]

    zero = ({m: 0.0 for m in noise}, 0.0)
    book = TrustBook(TrustSpec(policy="hedge"), priors=dict.fromkeys(noise, 1.0))
    book.update([zero] * 3 + [({m: 0.0 for m in noise}, 1e6)] + [zero] * 14 + labels(12) + labels(3000))
    weights = book.weights()
    assert book.scale.variance < 10  # 2e8 before: every later loss rounded to 0 and hedge stayed at 0.5 / 0.5
    assert weights["good-v1"] > 0.9 * sum(weights.values())

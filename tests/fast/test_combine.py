import numpy as np

from ensemble.combine import weighted_mean


def test_weights_renormalise_over_answering_members():
    predictions = np.array([[1.0, 1.0], [3.0, np.nan], [5.0, 5.0]])
    weights = np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])
    combined, applied = weighted_mean(predictions, weights)
    np.testing.assert_allclose(combined, [(1 + 6 + 5) / 4, 3.0])
    np.testing.assert_allclose(np.array(applied)[:, 1], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(np.array(applied).sum(axis=0), [1.0, 1.0])


def test_zero_weights_fall_back_to_equal_shares():
    combined, applied = weighted_mean(np.array([[2.0], [4.0]]), np.zeros((2, 1)))
    np.testing.assert_allclose(combined, [3.0])
    np.testing.assert_allclose(np.array(applied)[:, 0], [0.5, 0.5])


def test_no_answer_is_nan():
    combined, applied = weighted_mean(np.full((2, 1), np.nan), np.ones((2, 1)))
    assert np.isnan(combined[0]) and not np.array(applied).any()


def test_negative_weights_count_as_zero():
    combined, _ = weighted_mean(np.array([[2.0], [4.0]]), np.array([[-1.0], [1.0]]))
    np.testing.assert_allclose(combined, [4.0])

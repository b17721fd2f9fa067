"""DMP's structural-bias statistics (Table 5, Fig. 7) on inputs whose answers can be worked out by hand."""
import numpy as np
import pytest

from tsmflow.evaluation.structure import activation_bias, offdiag_stats


def test_offdiag_statistics_of_three_hand_made_latents():
    a = np.array([1.0, -1.0, 2.0, -2.0])  # zero mean: its correlations equal its cosine similarities
    s = offdiag_stats(np.stack([a, a, -a]).reshape(3, 1, 2, 2))
    # ordered off-diagonal pairs: (0,1) (1,0) = 1; the four with the third = -1
    assert s["n_latents"] == 3
    for k in ("correlation", "similarity"):
        assert s[f"{k}_max"] == pytest.approx(1) and s[f"{k}_min"] == pytest.approx(-1)
        assert s[f"{k}_mean"] == pytest.approx(-1 / 3)
        assert s[f"{k}_std"] == pytest.approx(np.std([1, 1, -1, -1, -1, -1]))


def test_a_shift_changes_cosine_similarity_but_not_correlation():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])
    s = offdiag_stats(np.stack([a, b]))
    assert s["correlation_mean"] == pytest.approx(-1)
    assert s["similarity_mean"] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # 20/30
    with pytest.raises(ValueError, match="at least 2"):
        offdiag_stats(a[None])
    with pytest.raises(ValueError, match="constant latent"):
        offdiag_stats(np.stack([a, np.ones(4)]))


def test_activation_bias_spreads():
    # 2 timesteps x 1 block x 3 positions (+ one NaN position past the block's size); rows sum to 1 (softmax)
    w = np.array([[[0.5, 0.25, 0.25, np.nan]], [[0.1, 0.3, 0.6, np.nan]]])
    b = activation_bias(w)
    assert b["temporal_bias_std"] == pytest.approx(np.std([0.3, 0.275, 0.425]))
    assert b["spatial_bias_std"] == pytest.approx(0, abs=1e-12)  # each timestep's mean over positions is 1/3

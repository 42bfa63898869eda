"""The per-image signals: ranges, extremes, and the squeezers' defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from serving.signals import (
    DEFAULT_SQUEEZERS,
    ENTROPY_BUCKETS,
    MAX_PROBABILITY_BUCKETS,
    SQUEEZE_BUCKETS,
    SQUEEZERS,
    max_probability,
    median_filter_2x2,
    normalised_entropy,
    reduce_bit_depth,
    squeeze_score,
)
from training import build_model


def random_probs(n: int, k: int = 10, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3
    return torch.softmax(logits, dim=1)


def test_entropy_is_0_for_certain_1_for_uniform_and_within_0_1() -> None:
    certain = torch.zeros(1, 10)
    certain[0, 3] = 1.0
    uniform = torch.full((1, 10), 0.1)
    assert normalised_entropy(certain).item() == pytest.approx(0.0, abs=1e-6)
    assert normalised_entropy(uniform).item() == pytest.approx(1.0, abs=1e-6)
    values = normalised_entropy(random_probs(500))
    assert values.shape == (500,)
    assert bool(((values >= 0) & (values <= 1)).all())


def test_entropy_is_normalised_by_ln_k_whatever_k() -> None:
    two = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    expected = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert normalised_entropy(two).tolist() == pytest.approx([1.0, expected], abs=1e-6)


def test_max_probability_is_the_top_probability() -> None:
    probs = random_probs(50)
    top = max_probability(probs)
    assert torch.equal(top, probs.max(dim=1).values)
    assert bool((top >= 0.1 - 1e-6).all()) and bool((top <= 1).all())


def test_signals_reject_a_batch_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        normalised_entropy(torch.ones(10))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        median_filter_2x2(torch.ones(28, 28))


def test_bit_depth_reduction_quantises_and_is_idempotent() -> None:
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    squeezed = reduce_bit_depth(x, bits=3)
    assert set((squeezed * 7).round().unique().tolist()) <= set(range(8))
    assert (squeezed - x).abs().max() <= 0.5 / 7 + 1e-6
    assert torch.equal(reduce_bit_depth(squeezed, bits=3), squeezed)


def test_median_filter_matches_a_direct_computation_and_keeps_flat_images() -> None:
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    out = median_filter_2x2(x)
    assert out.shape == x.shape
    for i in range(6):
        for j in range(6):
            rows, cols = [max(i - 1, 0), i], [max(j - 1, 0), j]
            window = torch.stack([x[0, 0, r, c] for r in rows for c in cols])
            assert out[0, 0, i, j] == window.sort().values[2]
    flat = torch.full((1, 1, 28, 28), 0.25)
    assert torch.equal(median_filter_2x2(flat), flat)


def test_squeeze_score_is_zero_for_an_image_both_squeezers_leave_alone() -> None:
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    flat = torch.full((3, 1, 28, 28), 1.0)  # binary and constant: a fixed point of both
    scores = squeeze_score(model, flat)
    assert scores.shape == (3,)
    assert scores.abs().max().item() == pytest.approx(0.0, abs=1e-6)


def test_squeeze_score_is_the_larger_l1_distance_of_the_chosen_squeezers() -> None:
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        d_bits = (torch.softmax(model(reduce_bit_depth(x, 2)), 1) - p).abs().sum(1)
        d_median = (torch.softmax(model(median_filter_2x2(x)), 1) - p).abs().sum(1)
    assert not torch.allclose(d_bits, d_median, atol=1e-3)  # the cases below differ
    both = squeeze_score(model, x, squeezers=SQUEEZERS, bits=2)
    assert torch.allclose(both, torch.maximum(d_bits, d_median), atol=1e-6)
    assert bool(((both >= 0) & (both <= 2)).all())
    median = squeeze_score(model, x, squeezers=["median-2x2"])
    assert torch.allclose(median, d_median, atol=1e-6)
    # The default, what the server exports unless serving.squeezers says otherwise.
    assert DEFAULT_SQUEEZERS == ("bit-depth",)
    assert torch.allclose(squeeze_score(model, x, bits=2), d_bits, atol=1e-6)


@pytest.mark.parametrize("squeezers", [[], ["bit-depth", "jpeg"]])
def test_squeeze_score_refuses_no_or_unknown_squeezers(squeezers: list[str]) -> None:
    model = build_model("cnn").eval()
    with pytest.raises(ValueError, match="squeezers must be one or more of"):
        squeeze_score(model, torch.rand(2, 1, 28, 28), squeezers=squeezers)


def test_squeeze_score_leaves_the_model_unchanged() -> None:
    model: nn.Module = build_model("cnn").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    squeeze_score(model, torch.rand(2, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize(
    ("buckets", "top"),
    [(ENTROPY_BUCKETS, 1.0), (MAX_PROBABILITY_BUCKETS, 1.0), (SQUEEZE_BUCKETS, 2.0)],
)
def test_buckets_increase_and_cover_the_signal_range(
    buckets: tuple[float, ...], top: float
) -> None:
    assert list(buckets) == sorted(set(buckets))
    assert buckets[-1] == top

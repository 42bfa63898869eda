"""Invariants of every attack, on a small trained model.

For any white-box attack (those in :data:`training.ATTACKS`, and BPDA) and the black-box Square
attack: shape kept, output in [0, 1], ||x_adv - x||_inf <= eps, the model's train/eval mode
restored, and accuracy under attack at most clean accuracy. Square never asks for more than its
query budget; BPDA keeps the squeeze score and the entropy closer to their clean levels than
PGD does.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustloop.config import DataConfig
from tests.conftest import DATASET_ROOT
from training import (
    ATTACKS,
    BPDA,
    FGSM,
    PGD,
    Attack,
    QueryBudgetExceeded,
    ScoreAttack,
    Square,
    evaluate,
    make_attack,
    make_splits,
    model_scores,
    normalised_entropy,
    reduce_bit_depth,
    squeeze_score,
    train_standard,
)
from training.models import build_model

pytestmark = pytest.mark.skipif(not DATASET_ROOT.is_dir(), reason=f"{DATASET_ROOT} absent")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A CNN trained for one epoch on 1500 images, and 120 held-out images."""
    splits = make_splits(DataConfig(train_limit=1500, eval_size=120, traffic_size=100))
    torch.manual_seed(0)
    model = build_model("cnn")
    train_standard(model, splits.train, epochs=1, batch_size=50, lr=2e-3, seed=0, progress=False)
    images, labels = splits.eval.tensors
    return model, images, labels


def _attacks(model: nn.Module, eps: float) -> list[Attack]:
    return [make_attack(name, model, eps, steps=3) for name in sorted(ATTACKS)] + [
        FGSM(model, eps=eps, random_start=True),
        PGD(model, eps=eps, steps=2, restarts=2),
        PGD(model, eps=eps, steps=2, random_start=False),
        BPDA(model, eps=eps, steps=2),
    ]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(eps=st.floats(0.0, 0.5), start=st.integers(0, 112), training=st.booleans())
def test_every_attack_keeps_shape_range_and_ball(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], eps: float, start: int, training: bool
) -> None:
    model, images, labels = trained
    x, y = images[start : start + 8], labels[start : start + 8]
    model.train(training)
    anywhere = torch.rand_like(x)  # a start usually outside the ball: it gets projected
    for attack, adv in [
        (attack, attack(x, y, start=start))
        for attack in _attacks(model, eps)
        for start in (None, anywhere)
    ]:
        assert adv.shape == x.shape, attack
        assert adv.dtype == x.dtype
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0, attack
        assert float((adv - x).abs().max()) <= eps + 1e-6, attack
        assert model.training is training, f"{attack} did not restore the model's mode"
        assert all(p.requires_grad for p in model.parameters()), f"{attack} froze the weights"
        assert not adv.requires_grad
    model.eval()


def test_attacks_lower_accuracy_and_pgd_beats_fgsm(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    from torch.utils.data import TensorDataset

    data = TensorDataset(images, labels)
    clean = evaluate(model, data, attack="none").accuracy
    fgsm = evaluate(model, data, attack="fgsm", eps=0.1).accuracy
    pgd = evaluate(model, data, attack="pgd", eps=0.1, steps=10).accuracy
    assert clean > 0.6, "the fixture model did not learn"
    assert fgsm < clean - 0.2
    assert pgd <= fgsm


def test_zero_eps_changes_nothing(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    for attack in _attacks(model, 0.0):
        assert torch.equal(attack(images[:8], labels[:8]), images[:8]), attack


def test_restarts_only_add_fooled_examples(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """With the same seed the first restart is the single run; more restarts fool a superset."""
    model, images, labels = trained
    from torch.utils.data import TensorDataset

    data = TensorDataset(images, labels)
    one = evaluate(model, data, attack="pgd", eps=0.05, steps=3, restarts=1, seed=5).correct
    three = evaluate(model, data, attack="pgd", eps=0.05, steps=3, restarts=3, seed=5).correct
    assert not bool((three & ~one).any()), "a restart un-fooled an example"


def test_a_given_start_replaces_the_attacks_own(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """With a zero step an attack returns where it began: the given start, projected onto the
    eps-ball (random starts and restarts do not override it)."""
    model, images, labels = trained
    x, y = images[:8], labels[:8]
    start = (x + torch.empty_like(x).uniform_(-0.3, 0.3)).clamp(0, 1)
    expected = torch.maximum(torch.minimum(start, (x + 0.1).clamp(max=1)), (x - 0.1).clamp(min=0))
    for attack in (
        FGSM(model, eps=0.1, random_start=True, step_size=0.0),
        PGD(model, eps=0.1, steps=2, step_size=0.0),
    ):
        torch.testing.assert_close(attack(x, y, start=start), expected, rtol=0, atol=0)
        assert not torch.equal(attack(x, y), expected), attack
    with pytest.raises(ValueError, match="start has shape"):
        FGSM(model)(x, y, start=x[:4])


def test_bad_inputs_are_refused(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FGSM(model)(images[:4] * 2, labels[:4])
    with pytest.raises(ValueError, match="batch size"):
        PGD(model)(images[:4], labels[:3])
    with pytest.raises(ValueError, match="choose one of"):
        make_attack("cw", model, 0.1)
    with pytest.raises(ValueError, match="eps"):
        PGD(model, eps=2.0)


def test_registry_lists_fgsm_and_pgd_with_paper_defaults(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model = trained[0]
    assert set(ATTACKS) == {"fgsm", "pgd"}
    pgd = PGD(model, eps=0.1, steps=20)
    assert pgd.step_size == pytest.approx(2.5 * 0.1 / 20)
    assert FGSM(model, eps=0.1, random_start=True).step_size == pytest.approx(0.125)


class CountingScores:
    """A local model as a black box, counting the calls and the images it is asked about."""

    def __init__(self, model: nn.Module) -> None:
        self.scores = model_scores(model)
        self.calls = 0
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += images.shape[0]
        return self.scores(images)


@pytest.mark.parametrize(("eps", "budget", "training"), [(0.1, 30, False), (0.3, 12, True)])
def test_square_keeps_the_invariants_and_its_query_budget(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], eps: float, budget: int, training: bool
) -> None:
    model, images, labels = trained
    x, y = images[:16], labels[:16]
    model.train(training)
    black_box = CountingScores(model)
    attack = Square(black_box, eps=eps, max_queries=budget, seed=3)
    adv = attack(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert not adv.requires_grad
    assert model.training is training, "the black box did not restore the model's mode"
    # Counted by the black box itself: at most `budget` calls, each about at most 16 images,
    # and per image at most `budget` queries, which add up to what the black box saw.
    assert 1 <= black_box.calls <= budget and black_box.calls == attack.calls
    assert int(attack.queries.max()) <= budget and int(attack.queries.min()) >= 1
    assert int(attack.queries.sum()) == black_box.images
    model.eval()


def test_square_only_keeps_improvements_and_is_deterministic_with_a_seed(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """With the same seed, one query is the start (vertical stripes); 24 more never raise an
    image's margin (the search keeps only improvements) and lower some."""
    model, images, labels = trained
    x, y = images[16:32], labels[16:32]
    scores = model_scores(model)
    start = Square(scores, eps=0.1, max_queries=1, seed=7)(x, y)
    searched = Square(scores, eps=0.1, max_queries=25, seed=7)(x, y)
    again = Square(scores, eps=0.1, max_queries=25, seed=7)(x, y)
    other = Square(scores, eps=0.1, max_queries=25, seed=8)(x, y)
    assert torch.equal(searched, again)
    assert not torch.equal(searched, other)
    before = Square.margin(scores(start), y)
    after = Square.margin(scores(searched), y)
    assert bool((after <= before).all())
    assert bool((after < before).any())


def test_a_score_attack_that_overspends_is_stopped(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """The base class counts every query: a subclass asking for one more than its budget
    fails instead of sending it."""
    model, images, labels = trained

    class Greedy(ScoreAttack):
        def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            everyone = torch.arange(images.shape[0])
            for _ in range(self.max_queries + 1):
                self.query(images, everyone)
            return images

    black_box = CountingScores(model)
    with pytest.raises(QueryBudgetExceeded, match="more than 3 queries"):
        Greedy(black_box, eps=0.1, max_queries=3)(images[:4], labels[:4])
    assert black_box.calls == 3


def test_straight_through_rounding_keeps_values_and_passes_the_gradient() -> None:
    """BPDA's backward pass: bit-depth reduction computes the same values, and its gradient is
    the identity's instead of rounding's zero."""
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    plain = reduce_bit_depth(x, 2)
    through = reduce_bit_depth(x, 2, straight_through=True)
    assert torch.equal(plain, through)
    (grad_plain,) = torch.autograd.grad(plain.sum(), x)
    (grad_through,) = torch.autograd.grad(through.sum(), x)
    assert torch.equal(grad_plain, torch.zeros_like(x))
    assert torch.equal(grad_through, torch.ones_like(x))


def _mean_signals(model: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Mean squeeze score and mean normalised entropy, as the server computes them."""
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
        squeeze = squeeze_score(model, images, probs=probs)
        return float(squeeze.mean()), float(normalised_entropy(probs).mean())


def test_bpda_hides_from_the_detector_better_than_pgd(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """At the same eps and steps on the same model, BPDA's images have a lower mean squeeze
    score than PGD's and an entropy closer to the clean one, and still fool the model on some
    images it classifies right."""
    model, images, labels = trained
    x, y = images[:48], labels[:48]
    torch.manual_seed(0)
    pgd = PGD(model, eps=0.1, steps=5)(x, y)
    torch.manual_seed(0)
    bpda = BPDA(model, eps=0.1, steps=5)(x, y)
    clean_squeeze, clean_entropy = _mean_signals(model, x)
    pgd_squeeze, pgd_entropy = _mean_signals(model, pgd)
    bpda_squeeze, bpda_entropy = _mean_signals(model, bpda)
    assert bpda_squeeze < pgd_squeeze
    assert abs(bpda_entropy - clean_entropy) < abs(pgd_entropy - clean_entropy)
    with torch.no_grad():
        clean_right = model(x).argmax(dim=1) == y
        bpda_right = model(bpda).argmax(dim=1) == y
    assert int(bpda_right.sum()) < int(clean_right.sum())
    assert clean_squeeze < pgd_squeeze  # the detector does see plain PGD


def test_new_attacks_carry_their_papers_defaults(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model = trained[0]
    bpda = BPDA(model)
    assert (bpda.eps, bpda.steps, bpda.step_size) == (0.1, 20, pytest.approx(2.5 * 0.1 / 20))
    assert (bpda.bits, bpda.squeezers) == (2, ("bit-depth",))
    square = Square(model_scores(model))
    assert (square.eps, square.max_queries, square.p_init) == (0.1, 10_000, 0.8)
    with pytest.raises(ValueError, match="max_queries"):
        Square(model_scores(model), max_queries=0)
    with pytest.raises(ValueError, match="squeeze_weight"):
        BPDA(model, squeeze_weight=-1)

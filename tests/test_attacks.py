"""Invariants of every registered attack, on a small trained model.

For any attack in :data:`training.ATTACKS`: shape kept, output in [0, 1], ||x_adv - x||_inf <= eps,
the model's train/eval mode restored, and accuracy under attack at most clean accuracy.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustloop.config import DataConfig
from tests.conftest import DATASET_ROOT
from training import ATTACKS, FGSM, PGD, Attack, evaluate, make_attack, make_splits, train_standard
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

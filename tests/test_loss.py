"""Focal/CE loss on soft targets and class-weight presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from drsearch.config.recipe import LossConfig
from drsearch.train.loss import SoftTargetLoss, one_hot_smoothed, resolve_class_weights


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 5, generator=g) * 3, torch.randint(0, 5, (32,), generator=g)


def test_focal_with_gamma0_alpha1_equals_cross_entropy(batch) -> None:
    logits, labels = batch
    focal = SoftTargetLoss(LossConfig(name="focal", gamma=0.0, alpha=1.0), None)
    assert focal(logits, one_hot_smoothed(labels, 0.0)).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_ce_with_label_smoothing_matches_torch(batch, smoothing: float) -> None:
    logits, labels = batch
    ce = SoftTargetLoss(LossConfig(name="ce"), None)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert ce(logits, one_hot_smoothed(labels, smoothing)).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_focal_formula_per_sample(batch) -> None:
    logits, labels = batch
    loss = SoftTargetLoss(LossConfig(name="focal", gamma=2.0, alpha=4.0), [1, 1, 1, 2, 3])
    p_t = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
    w = torch.tensor([1.0, 1, 1, 2, 3])[labels]
    expected = (4.0 * w * (1 - p_t) ** 2 * -p_t.log()).mean()
    assert loss(logits, F.one_hot(labels, 5).float()).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[8.0, 0, 0, 0, 0]])
    hard = torch.tensor([[0.5, 0, 0, 0, 0]])
    target = F.one_hot(torch.tensor([0]), 5).float()
    ce = SoftTargetLoss(LossConfig(name="ce"), None)
    focal = SoftTargetLoss(LossConfig(name="focal", gamma=2.0), None)
    assert focal(easy, target) / ce(easy, target) < focal(hard, target) / ce(hard, target)


def test_weighted_ce_matches_torch_for_hard_labels(batch) -> None:
    logits, labels = batch
    weights = [0.5, 1.0, 1.5, 4.0, 6.0]
    ce = SoftTargetLoss(LossConfig(name="ce", class_weights=weights), weights)
    # torch divides by the weight sum; ours by the batch size (stable under MixUp)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weights), reduction="sum")
    assert ce(logits, one_hot_smoothed(labels, 0.0)).item() == pytest.approx(
        expected.item() / len(labels), rel=1e-6
    )


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("none", None),
        # counts 60/20/10/5/5: w_c = N / (K * n_c)
        ("inverse", [100 / (5 * 60), 100 / (5 * 20), 100 / (5 * 10), 4.0, 4.0]),
    ],
)
def test_class_weight_presets(preset: str, expected: list[float] | None) -> None:
    labels = [0] * 60 + [1] * 20 + [2] * 10 + [3] * 5 + [4] * 5
    weights = resolve_class_weights(LossConfig(class_weights=preset), labels)
    assert weights == (None if expected is None else pytest.approx(expected))


def test_inverse_sqrt_is_normalised_and_fills_absent_grades() -> None:
    labels = [0] * 64 + [1] * 16 + [2] * 4
    weights = resolve_class_weights(LossConfig(class_weights="inverse_sqrt"), labels)
    assert weights[0] * 2 == pytest.approx(weights[1]) and weights[1] * 2 == pytest.approx(
        weights[2]
    )
    assert weights[3] == weights[4] == pytest.approx(max(weights[:3]))
    mean = (64 * weights[0] + 16 * weights[1] + 4 * weights[2]) / 84
    assert mean == pytest.approx(1.0)


def test_explicit_weights_pass_through() -> None:
    assert resolve_class_weights(LossConfig(class_weights=[1, 1, 1, 8, 6]), [0, 1]) == [
        1.0,
        1.0,
        1.0,
        8.0,
        6.0,
    ]


def test_focal_alpha_per_grade_is_lin_et_al_alpha_t() -> None:
    # fixed logits, hand-written reference of FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3], [0.1, 0.2, 0.3, 1.5, -0.5]])
    labels = torch.tensor([0, 3])
    alpha = [0.25, 1.0, 1.0, 2.0, 3.0]
    gamma = 2.0
    p = logits.softmax(1)
    by_hand = [
        -alpha[int(y)] * (1 - float(p[i, y])) ** gamma * torch.log(p[i, y]).item()
        for i, y in enumerate(labels)
    ]
    loss = SoftTargetLoss(LossConfig(name="focal", gamma=gamma, alpha=alpha), None)
    assert loss(logits, F.one_hot(labels, 5).float()).item() == pytest.approx(
        sum(by_hand) / 2, rel=1e-6
    )
    # a per-grade alpha changes the balance between grades, not merely the loss's scale
    flat = SoftTargetLoss(LossConfig(name="focal", gamma=gamma, alpha=1.5), None)
    one, three = (F.one_hot(torch.tensor([y]), 5).float() for y in (0, 3))
    ratio = loss(logits[1:], three) / loss(logits[:1], one)
    assert ratio.item() == pytest.approx(8.0 * (flat(logits[1:], three) / flat(logits[:1], one)))


def test_focal_alpha_presets_come_from_the_training_grades() -> None:
    from drsearch.train.loss import resolve_focal_alpha

    labels = [0] * 60 + [1] * 10 + [2] * 20 + [3] * 5 + [4] * 5
    assert resolve_focal_alpha(LossConfig(alpha="inverse"), labels) == resolve_class_weights(
        LossConfig(class_weights="inverse"), labels
    )
    assert resolve_focal_alpha(LossConfig(alpha=2.0), labels) == [2.0] * 5
    with pytest.raises(ValueError, match="training labels"):
        SoftTargetLoss(LossConfig(name="focal", alpha="inverse_sqrt"), None)


def test_focal_with_label_smoothing_weights_each_grade_share() -> None:
    logits = torch.tensor([[1.0, 0.2, -0.3, 0.0, 0.5]])
    targets = one_hot_smoothed(torch.tensor([0]), 0.1)
    p = logits.softmax(1)[0]
    by_hand = sum(
        -float(targets[0, c]) * (1 - float(p[c])) ** 2 * float(torch.log(p[c])) for c in range(5)
    )
    loss = SoftTargetLoss(LossConfig(name="focal", gamma=2.0, label_smoothing=0.1), None)
    assert loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)

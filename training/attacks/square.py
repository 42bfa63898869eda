"""The Square attack, L-inf (Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV).

Score-based and black-box: it reads no weights and no gradients, only the probabilities the
classifier returns, so it works as well through a model server's API as on a local model, and
gradient masking does not stop it. It is a random search: start from vertical stripes of
``+-eps``, then, at each query, redraw one square window of the perturbation to ``+-eps`` (one
sign per channel) and keep the change where it lowered the margin loss. The windows shrink as the
queries go by (the ``p`` schedule of the paper, rescaled to the budget).
"""

from __future__ import annotations

import math

import torch

from training.attacks.base import ScoreAttack, Scores

_TINY = 1e-30
"""Probabilities are floored here before the log: an exact 0 from float32 softmax stays finite."""

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256), (10000, 512))  # fmt: skip
"""The paper's ``p`` schedule over 10,000 queries: up to query ``q``, ``p = p_init / d``."""


def square_fraction(p_init: float, query: int, max_queries: int) -> float:
    """The fraction ``p`` of the image a window covers at ``query`` out of ``max_queries``.

    The paper halves ``p`` at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of
    10,000; a smaller budget runs the same schedule compressed (so that a short attack also
    ends with small windows).
    """
    at = int(query / max_queries * 10000)
    for upto, divisor in _SCHEDULE:
        if at <= upto:
            return p_init / divisor
    return p_init / 512


class Square(ScoreAttack):
    """Random search over the L-inf ball's vertices, one square window at a time.

    Each image stops querying once it is misclassified (its margin is negative), so an image
    uses between 1 and ``max_queries`` queries; :attr:`queries` says how many.

    Args:
        scores: the black box: images -> probabilities [N, K].
        eps: L-inf radius.
        max_queries: queries allowed per image, the first (the stripes) included. The paper
            reports 10,000; a live attacker of a served model can rarely afford that many.
        p_init: the initial fraction of the image a window covers; 0.8 is the authors' setting
            for small images (as AutoAttack runs it on MNIST and CIFAR-10; 0.05 on ImageNet).
        seed: seed of the random search (stripes, windows, signs); two attacks with the same
            seed, called on the same images, return the same examples.
    """

    name = "square"

    def __init__(
        self,
        scores: Scores,
        eps: float = 0.1,
        max_queries: int = 10_000,
        p_init: float = 0.8,
        seed: int = 0,
    ) -> None:
        super().__init__(scores, eps, max_queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.p_init = float(p_init)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _signs(self, *shape: int) -> torch.Tensor:
        """Uniform random signs (+1 or -1), drawn from the attack's own generator."""
        bits = torch.randint(0, 2, shape, generator=self._generator)
        return (bits * 2 - 1).to(torch.float32)

    @staticmethod
    def margin(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``log p_y - max_{j != y} log p_j`` per image: negative once the model is fooled.

        On log-probabilities this equals the margin of the logits that the paper minimises
        (softmax shifts every logit of an image by the same constant).
        """
        logs = probs.clamp(min=_TINY).log()
        true = logs.gather(1, labels.unsqueeze(1)).squeeze(1)
        others = logs.scatter(1, labels.unsqueeze(1), float("-inf"))
        return true - others.max(dim=1).values

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        device = images.device
        everyone = torch.arange(n, device=device)
        stripes = self._signs(n, c, 1, w).to(device) * self.eps
        best = (images + stripes).clamp(0.0, 1.0)
        margin = self.margin(self.query(best, everyone), labels)
        for step in range(1, self.max_queries):
            todo = (margin > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = square_fraction(self.p_init, step, self.max_queries)
            side = max(1, min(round(math.sqrt(p * h * w)), h - 1, w - 1))
            top = int(torch.randint(0, h - side + 1, (1,), generator=self._generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=self._generator))
            window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
            x, current = images[todo], best[todo]
            delta = current - x
            # Redraw the signs of a window that would change nothing (a wasted query); a few
            # tries suffice, and where none changed anything the query still goes out.
            signs = self._signs(len(todo), c, 1, 1).to(device)
            for _ in range(10):
                delta[window] = signs * self.eps
                candidate = (x + delta).clamp(0.0, 1.0)
                same = (candidate[window] == current[window]).flatten(1).all(dim=1)
                if not bool(same.any()):
                    break
                signs[same] = self._signs(int(same.sum()), c, 1, 1).to(device)
            new_margin = self.margin(self.query(candidate, todo), labels[todo])
            better = new_margin < margin[todo]
            best[todo[better]] = candidate[better]
            margin[todo[better]] = new_margin[better]
        return best

    def __repr__(self) -> str:
        return (
            f"Square(eps={self.eps}, max_queries={self.max_queries}, p_init={self.p_init}, "
            f"seed={self.seed})"
        )

"""How many tokens a provider will bill for so many characters, learned from the usage it reports."""

from __future__ import annotations

import math

DEFAULT_CHARS_PER_TOKEN = 4.0  # English prose with the common BPE vocabularies


class TokenEstimator:
    """An exponentially weighted chars-per-token ratio for one provider.

    Each observation is clamped to [min_ratio, max_ratio] before it is weighed in, so one odd
    usage figure (a provider reporting 1 token, or a million) moves the ratio by at most
    `weight` of the way to a bound. The low bound sits under 1 because a reranker's prompt
    template bills tokens for every pair that the passages' characters do not show.
    """

    def __init__(
        self,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        weight: float = 0.1,
        min_ratio: float = 0.5,
        max_ratio: float = 12.0,
    ) -> None:
        if not 0 < min_ratio <= chars_per_token <= max_ratio:
            raise ValueError(
                f"need 0 < min_ratio <= chars_per_token <= max_ratio, got {min_ratio}, {chars_per_token}, {max_ratio}"
            )
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], not {weight}")
        self._ratio = chars_per_token
        self._weight = weight
        self._min = min_ratio
        self._max = max_ratio

    @property
    def chars_per_token(self) -> float:
        return self._ratio

    def estimate_tokens(self, chars: int) -> int:
        """Tokens for `chars` characters, rounded up: an estimate that reserves budget should not run short."""
        return math.ceil(max(0, chars) / self._ratio)

    def observe(self, chars: int, tokens: int) -> None:
        """Weigh in what a call of `chars` characters was billed; calls without usage are ignored."""
        if chars <= 0 or tokens <= 0:
            return
        sample = min(self._max, max(self._min, chars / tokens))
        self._ratio += self._weight * (sample - self._ratio)

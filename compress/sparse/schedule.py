"""Sparsity schedules: one-shot, and gradual with the cubic ramp of Zhu & Gupta 2017
("To prune, or not to prune"):

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3    for t0 <= t <= t0 + n * dt,

updated every dt steps (between updates s_t holds), s_i before t0 and s_f after the ramp.
`cubic_sparsity` is the ramp itself, the one implementation of it: `SparsitySchedule` steps it
for unstructured masks, `compress.accuracy.schedules` (prune --schedule gradual) for channel ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import CompressError


@dataclass(frozen=True)
class SparsitySchedule:
    final: float                 # s_f
    initial: float = 0.0         # s_i
    start: int = 0               # t0
    steps: int = 0               # n * dt: ramp length; 0 = one-shot at `start`
    every: int = 1               # dt: sparsity changes only every `every` steps

    def __post_init__(self):
        for name in ("final", "initial"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise CompressError(f"sparsity schedule: {name} must be in [0, 1), got {v}")
        if self.steps < 0 or self.start < 0 or self.every < 1:
            raise CompressError("sparsity schedule: start and steps must be >= 0, every >= 1")

    def at(self, step: int) -> float:
        if step < self.start:
            return self.initial
        if self.steps == 0 or step >= self.start + self.steps:
            return self.final
        t = (step - self.start) // self.every * self.every
        return cubic_sparsity(self.final, t, self.steps, self.initial)


def cubic_sparsity(final: float, step: int, steps: int, initial: float = 0.0) -> float:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f) * (1 - t / n)^3 for t in 0..n (clamped)."""
    if steps < 1:
        raise CompressError(f"the cubic schedule needs at least one step, got {steps}")
    t = min(max(step, 0), steps)
    return final + (initial - final) * (1.0 - t / steps) ** 3


def one_shot(sparsity: float, at_step: int = 0) -> SparsitySchedule:
    return SparsitySchedule(final=sparsity, initial=0.0, start=at_step, steps=0)


def cubic(final: float, steps: int, start: int = 0, initial: float = 0.0, every: int = 1) -> SparsitySchedule:
    return SparsitySchedule(final=final, initial=initial, start=start, steps=steps, every=every)

from __future__ import annotations

import pytest

from compress.errors import CompressError
from compress.sparse.schedule import SparsitySchedule, cubic, one_shot


def test_one_shot():
    s = one_shot(0.8, at_step=5)
    assert s.at(0) == 0.0 and s.at(4) == 0.0 and s.at(5) == 0.8 and s.at(10 ** 6) == 0.8


def test_cubic_follows_zhu_gupta():
    s = cubic(0.9, steps=100, start=10)
    assert s.at(0) == 0.0 and s.at(10) == 0.0 and s.at(110) == 0.9 and s.at(500) == 0.9
    assert s.at(60) == pytest.approx(0.9 + (0.0 - 0.9) * 0.5 ** 3)
    vals = [s.at(t) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))                 # never decreases
    assert s.at(20) - s.at(10) > s.at(110) - s.at(100)                 # fast early, slow late


def test_cubic_holds_between_updates():
    s = cubic(0.5, steps=100, every=10, initial=0.1)
    assert s.at(0) == pytest.approx(0.1) and s.at(9) == s.at(0) and s.at(10) == s.at(19) > s.at(9)


@pytest.mark.parametrize("kw", [{"final": 1.0}, {"final": -0.1}, {"final": 0.5, "every": 0},
                                {"final": 0.5, "steps": -1}])
def test_bad_schedules(kw):
    with pytest.raises(CompressError):
        SparsitySchedule(**kw)


def test_cubic_steps_the_one_cubic_ramp():
    # SparsitySchedule and `compress prune --schedule gradual` share compress.sparse.schedule.cubic_sparsity
    from compress.accuracy import schedules
    from compress.sparse.schedule import cubic_sparsity

    assert schedules.cubic_sparsity is cubic_sparsity
    s = cubic(0.8, steps=40, start=5, initial=0.2, every=4)
    for t in range(5, 45):
        assert s.at(t) == cubic_sparsity(0.8, (t - 5) // 4 * 4, 40, initial=0.2)

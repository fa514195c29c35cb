"""Rows dealt over a policy group's ranks: every position holds the same kind of row on every rank (so ZeRO's
gradient reductions pair up), every row lands exactly once, and the work is even."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emo_r3.training.cluster.rank_schedule import Padding, deal, fill


def _kind(slot: int | Padding, has_image: list[bool]) -> bool:
    return slot is Padding.IMAGE if isinstance(slot, Padding) else has_image[slot]


@given(
    has_image=st.lists(st.booleans(), max_size=40),
    ranks=st.integers(1, 5),
    micro=st.integers(1, 3),
    data=st.data(),
)
def test_every_position_has_one_kind_on_all_ranks(has_image: list[bool], ranks: int, micro: int, data) -> None:
    lengths = data.draw(st.lists(st.integers(1, 500), min_size=len(has_image), max_size=len(has_image)))
    plan = deal(has_image, lengths, ranks, micro)
    assert len({len(slots) for slots in plan}) == 1
    assert len(plan[0]) % micro == 0
    for position in range(len(plan[0])):
        assert len({_kind(slots[position], has_image) for slots in plan}) == 1
    placed = sorted(slot for slots in plan for slot in slots if isinstance(slot, int))
    assert placed == list(range(len(has_image)))


def test_longest_rows_go_to_different_ranks() -> None:
    plan = deal([False] * 4, [10, 400, 20, 300], ranks=2)
    assert plan == [[1, 2], [3, 0]]


def test_a_kind_short_on_one_rank_is_padded_with_its_own_kind() -> None:
    plan = deal([True, False, False, True, True], [5, 5, 5, 5, 5], ranks=2)
    assert plan == [[0, 4, 1], [3, Padding.IMAGE, 2]]


def test_fill_pads_with_text_rows_up_to_the_fixed_count() -> None:
    assert fill([[0], [1]], 3) == [[0, Padding.TEXT, Padding.TEXT], [1, Padding.TEXT, Padding.TEXT]]


def test_fill_refuses_more_rows_than_the_fixed_count() -> None:
    with pytest.raises(ValueError, match="more than the group's fixed 1"):
        fill([[0, 1], [2, 3]], 1)

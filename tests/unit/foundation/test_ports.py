"""Test ports: one process never hands out the same port twice before the slice runs out."""

from __future__ import annotations

from tests.ports import SLICE, free_port


def test_ports_handed_out_in_a_row_are_all_different() -> None:
    # Drawn at random with repeats, 200 of 2,000 would repeat one almost surely (1 - e^-10).
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_spent_slice_starts_over_instead_of_failing() -> None:
    ports = {free_port() for _ in range(SLICE + 10)}
    assert len(ports) <= SLICE


"""The capacity model's bytes-per-entity default is still what a real redis-server stores for
entities written through the sync's own writer (loadtests/entity_memory.py)."""

from __future__ import annotations

import pytest

from loadtests.capacity import Measured

pytestmark = pytest.mark.integration


def test_measured_bytes_per_entity_is_near_the_default():
    from loadtests import entity_memory

    default = Measured().bytes_per_entity
    got = entity_memory.measure(entities=20_000, features=12)
    assert 105 + 16 < got < 1_000  # at least the record and its field, far below a key per entity
    assert default / 2 < got < default * 2

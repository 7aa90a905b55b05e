from __future__ import annotations

import pytest

from tests.planner.plans import two_layer_graph


@pytest.fixture(scope="module")
def graph():
    return two_layer_graph()

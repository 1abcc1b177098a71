"""Fixtures the integration modules share.

``cluster``: a real PostgreSQL 15 cluster of the module's own (module scope: each test
module gets a fresh one; a module that needs another kind defines its own ``cluster``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pgfixture import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c

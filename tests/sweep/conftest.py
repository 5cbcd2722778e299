"""One local Ray session for every sweep test that runs on Ray: a Ray worker's first start
(importing torch) costs tens of seconds on a loaded 2-core machine, paid once here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'modelzip[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

"""One real Ray instance for the whole session, on loopback only, torn down at the end."""

import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from boostray.distributed.runtime import ray_session

    with ray_session(num_cpus=2, object_store_bytes=512 << 20):
        yield ray.get_runtime_context().gcs_address

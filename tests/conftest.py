"""Suite-wide fixtures.

Kernel and e2e tests need root and a BPF-capable kernel. When either is
missing they fail with a message that says so: a skip would hide that the
dataplane was never exercised.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/kernel/" in str(item.fspath) or "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def _require_root(request):
    if request.node.get_closest_marker("kernel") and os.geteuid() != 0:
        pytest.fail("this test loads BPF programs into the kernel and needs root (run `sudo make test`)", pytrace=False)

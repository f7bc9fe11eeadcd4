"""Fixtures for the Kubernetes layer: an API server double over real HTTP and a real client for it."""

from __future__ import annotations

import pytest
from apiserver_double import ApiServerDouble
from k8s_helpers import Recorder
from kubernetes import client


@pytest.fixture
def apiserver():
    """A running :class:`ApiServerDouble`; its ``url`` is http://127.0.0.1:<ephemeral port>."""
    with ApiServerDouble() as api:
        yield api


@pytest.fixture
def api_client(apiserver):
    """The real kubernetes ApiClient, configured against the double."""
    configuration = client.Configuration(host=apiserver.url)
    configuration.retries = False  # retries would hide the failures the tests inject
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def recorder():
    return Recorder()

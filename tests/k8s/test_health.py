"""Health endpoints and metrics rendering, over real HTTP on 127.0.0.1 (no kernel needed)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from k8s_helpers import free_port

from calico_ebpf.k8s.health import HttpServers, ProxierHealth, ServiceHealthServers
from calico_ebpf.k8s.metrics import Registry

pytestmark = pytest.mark.timeout(30)


def get(port: int, path: str = "/") -> tuple[int, dict | str, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            status, body, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, body, headers = e.code, e.read(), dict(e.headers)
    text = body.decode()
    return status, json.loads(text) if headers.get("Content-Type", "").startswith("application/json") else text, headers


@pytest.fixture
def servers():
    s = HttpServers().start()
    yield s
    s.close()


class Clock:
    """A settable time source for ProxierHealth (it takes the clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_proxier_health_follows_kube_proxy_rules(servers):
    clock = Clock()
    health = ProxierHealth(timeout=60, clock=clock)
    port = servers.serve("healthz", "127.0.0.1", 0, {"/healthz": health.handle})

    status, body, _ = get(port, "/healthz")
    assert status == 503 and body["lastUpdated"] is None  # never synced

    health.queued()
    health.take_pending()
    health.updated()
    status, body, headers = get(port, "/healthz")
    assert status == 200 and body["lastUpdated"] == body["currentTime"] == "2023-11-14T22:13:20Z"
    assert body["nodeEligible"] is True and headers["X-Content-Type-Options"] == "nosniff"

    clock.now += 3600  # idle for an hour with nothing pending: still healthy
    assert get(port, "/healthz")[0] == 200

    health.queued()  # a change waits...
    clock.now += 59
    assert get(port, "/healthz")[0] == 200
    clock.now += 2  # ...longer than the timeout
    assert get(port, "/healthz")[0] == 503

    since = health.take_pending()  # an apply starts, fails: still pending since then
    health.restore_pending(since)
    assert get(port, "/healthz")[0] == 503
    health.take_pending()
    health.updated()
    assert get(port, "/healthz")[0] == 200


def test_service_health_servers_open_update_and_close(servers):
    hc = ServiceHealthServers(servers, "127.0.0.1")
    port_a, port_b = free_port(), free_port()
    hc.sync({("ns", "a"): (port_a, 2), ("ns", "b"): (port_b, 0)})
    status, body, headers = get(port_a, "/anything")
    assert status == 200
    assert body == {"service": {"namespace": "ns", "name": "a"}, "localEndpoints": 2, "serviceProxyHealthy": True}
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert get(port_b)[0] == 503

    hc.sync({("ns", "a"): (port_a, 0)})  # count drops, b goes away
    assert get(port_a)[0] == 503
    with pytest.raises(urllib.error.URLError):
        get(port_b)
    assert hc.ports() == {("ns", "a"): port_a}


def test_service_health_port_in_use_is_reported_and_retried(servers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hc = ServiceHealthServers(servers, "127.0.0.1")
        hc.sync({("ns", "a"): (port, 1)})
        assert ("ns", "a") in hc.failed and hc.ports() == {}
    hc.sync({("ns", "a"): (port, 1)})  # the port came free: the next sync binds it
    assert hc.failed == {} and get(port)[0] == 200


def test_service_health_reports_an_unhealthy_proxy(servers):
    proxier = ProxierHealth()  # never synced
    hc = ServiceHealthServers(servers, "127.0.0.1", proxier)
    port = free_port()
    hc.sync({("ns", "a"): (port, 3)})
    status, body, _ = get(port)
    assert status == 503 and body["localEndpoints"] == 3 and body["serviceProxyHealthy"] is False


def test_metrics_render_text_format():
    r = Registry()
    c = r.counter("x_total", "Things.", ["kind"])
    c.inc(kind='a"b')
    c.inc(2, kind="c")
    g = r.gauge("x_level", "Level\nwith newline.")
    g.set(1.5)
    h = r.histogram("x_seconds", "Latency.", buckets=(0.1, 1))
    for v in (0.05, 0.5, 5):
        h.observe(v)
    r.collector(lambda: [("x_live", "gauge", "Read now.", [({"map": "m"}, 7)])])

    def broken():
        raise OSError("map gone")

    r.collector(broken)
    assert r.render().splitlines() == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{kind="a\\"b"} 1',
        'x_total{kind="c"} 2',
        "# HELP x_level Level\\nwith newline.",
        "# TYPE x_level gauge",
        "x_level 1.5",
        "# HELP x_seconds Latency.",
        "# TYPE x_seconds histogram",
        'x_seconds_bucket{le="0.1"} 1',
        'x_seconds_bucket{le="1"} 2',
        'x_seconds_bucket{le="+Inf"} 3',
        "x_seconds_sum 5.55",
        "x_seconds_count 3",
        "# HELP x_live Read now.",
        "# TYPE x_live gauge",
        'x_live{map="m"} 7',
        "# collector broken failed: OSError: map gone",
    ]
    with pytest.raises(ValueError):
        c.inc(kind="a", extra="b")
    with pytest.raises(ValueError):
        r.counter("x_total", "again")

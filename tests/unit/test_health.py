"""The one health-URL builder and the pure reading of a health document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harbor_ops.hosts import health


@pytest.mark.parametrize(("harbor", "url", "loopback", "cafile"), [
    ({"hostname": "h.example", "http": {"port": 8080}},
     "http://h.example:8080/api/v2.0/health", "http://127.0.0.1:8080/api/v2.0/health", None),
    ({"hostname": "h.example"}, "http://h.example:80/api/v2.0/health",
     "http://127.0.0.1:80/api/v2.0/health", None),
    ({"hostname": "h.example", "http": {"port": 80},
      "https": {"port": 8443, "certificate": "/etc/harbor/tls.crt"}},
     "https://h.example:8443/api/v2.0/health", "https://127.0.0.1:8443/api/v2.0/health",
     Path("/etc/harbor/tls.crt")),
    ({"hostname": "h.example", "https": {}}, "https://h.example:443/api/v2.0/health",
     "https://127.0.0.1:443/api/v2.0/health", None),
])
def test_endpoint_of_the_site(harbor: dict[str, Any], url: str, loopback: str,
                              cafile: Path | None) -> None:
    ep = health.endpoint(harbor)
    assert (ep.url, ep.loopback_url, ep.cafile) == (url, loopback, cafile)
    assert str(ep) == f"{url} (via 127.0.0.1)"


def test_a_plain_url_is_an_endpoint_too() -> None:
    ep = health.of("http://127.0.0.1:8080/api/v2.0/health")
    assert (ep.scheme, ep.address, ep.server_name, ep.port) == ("http", "127.0.0.1",
                                                                "127.0.0.1", 8080)
    assert str(ep) == "http://127.0.0.1:8080/api/v2.0/health"


@pytest.mark.parametrize(("doc", "bad"), [
    ({"status": "healthy", "components": [{"name": "core", "status": "healthy"}]}, []),
    ({"status": "unhealthy", "components": [{"name": "core", "status": "healthy"},
                                            {"name": "redis", "status": "unhealthy"}]},
     ["redis"]),
    ({"status": "unhealthy", "components": []}, ["status 'unhealthy'"]),
    ({}, ["status None"]),
])
def test_unhealthy(doc: dict[str, Any], bad: list[str]) -> None:
    assert health.unhealthy(doc) == bad

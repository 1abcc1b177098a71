"""harbor.yml as data: every key of every release 2.0.0 … 2.15.2.

One row per key path (the NEWEST name; older names are in ``renamed``). A row says
when the key exists, whether Harbor's template has it active (rendered with its
default) or commented out (rendered only when the site sets it), its type, and its
default per version. Source: reference/harbor-facts.md §2 and harbor-yml/KEY-MATRIX.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from packaging.version import Version

LOG_LEVELS = ("debug", "info", "warning", "error", "fatal")
JOB_LOGGERS = ("STD_OUTPUT", "FILE", "DB")
STORAGE_DRIVERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # driver: (required settings, optional settings) as distribution documents them.
    "filesystem": (frozenset(), frozenset({"rootdirectory", "maxthreads"})),
    "s3": (frozenset({"region", "bucket"}),
           frozenset({"accesskey", "secretkey", "regionendpoint", "encrypt", "keyid", "secure",
                      "skipverify", "v4auth", "chunksize", "multipartcopychunksize",
                      "multipartcopymaxconcurrency", "multipartcopythresholdsize",
                      "rootdirectory", "storageclass", "forcepathstyle"})),
    "azure": (frozenset({"accountname", "accountkey", "container"}),
              frozenset({"realm", "rootdirectory"})),
    "gcs": (frozenset({"bucket", "keyfile"}), frozenset({"rootdirectory", "chunksize"})),
    "swift": (frozenset({"authurl", "username", "password", "container"}),
              frozenset({"region", "tenant", "tenantid", "domain", "domainid", "trustid",
                         "insecureskipverify", "chunksize", "prefix", "secretkey",
                         "accesskey", "authversion", "endpointtype", "tempurlcontainerkey",
                         "tempurlmethods"})),
    "oss": (frozenset({"accesskeyid", "accesskeysecret", "region", "bucket"}),
            frozenset({"endpoint", "internal", "encrypt", "secure", "chunksize",
                       "rootdirectory"})),
}
# Settings of a storage driver that are secrets (accept *_file / *_env like passwords).
STORAGE_SECRETS = frozenset({"secretkey", "accountkey", "password", "accesskeysecret"})
PROXY_COMPONENTS = ("core", "jobservice", "trivy", "clair")


@dataclass(frozen=True)
class Key:
    """One harbor.yml key path."""

    path: str
    kind: str  # str int bool port path size duration hours list enum dict host url secret
    since: str = "2.0.0"
    until: str | None = None  # first release WITHOUT the key
    active: bool = False  # present uncommented in Harbor's template
    default: Any = None
    defaults: tuple[tuple[str, Any], ...] = ()  # (first version, value) when it changed
    gaps: tuple[tuple[str, str], ...] = ()  # [from, to) ranges where a patch lacks the key
    choices: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()  # (first version with new name, old path)
    secret: bool = False
    items: tuple[str, ...] = field(default=())  # allowed list items

    def available(self, v: Version) -> bool:
        if v < Version(self.since):
            return False
        if self.until and v >= Version(self.until):
            return False
        return not any(Version(a) <= v < Version(b) for a, b in self.gaps)

    def default_for(self, v: Version) -> Any:
        value = self.default
        for since, val in self.defaults:
            if Version(since) <= v:
                value = val
        return value

    def name_for(self, v: Version) -> str:
        for since, old in self.renamed:
            if v < Version(since):
                return old
        return self.path


_K = Key
KEYS: tuple[Key, ...] = (
    _K("hostname", "host", active=True),
    _K("http.port", "port", active=True, default=80),
    _K("https.port", "port", default=443),
    _K("https.certificate", "path"),
    _K("https.private_key", "path"),
    _K("https.strong_ssl_ciphers", "bool", since="2.10.1"),
    _K("ip_family.ipv6.enabled", "bool", since="2.11.0"),
    _K("ip_family.ipv4.enabled", "bool", since="2.11.0"),
    _K("internal_tls.enabled", "bool"),
    _K("internal_tls.dir", "path"),
    _K("external_url", "url"),
    _K("harbor_admin_password", "secret", active=True, secret=True),
    _K("database.password", "secret", active=True, secret=True),
    _K("database.max_idle_conns", "int", active=True, default=50, defaults=(("2.3.0", 100),)),
    _K("database.max_open_conns", "int", active=True, default=100,
       defaults=(("2.0.2", 1000), ("2.3.0", 900))),
    _K("database.conn_max_lifetime", "duration", since="2.7.0", active=True, default="5m"),
    _K("database.conn_max_idle_time", "duration", since="2.7.0", active=True, default=0),
    _K("data_volume", "path", active=True, default="/data"),
    _K("storage_service.ca_bundle", "path"),
    _K("storage_service.redirect.disable", "bool", renamed=(("2.8.0",
                                                            "storage_service.redirect.disabled"),)),
    *(_K(f"storage_service.{d}", "dict") for d in STORAGE_DRIVERS),
    _K("clair.updaters_interval", "int", until="2.2.0", active=True, default=12),
    _K("trivy.ignore_unfixed", "bool", active=True, default=False),
    _K("trivy.skip_update", "bool", active=True, default=False),
    _K("trivy.skip_java_db_update", "bool", since="2.9.3", gaps=(("2.10.0", "2.10.1"),),
       active=True, default=False),
    _K("trivy.db_repository", "str", since="2.15.0", active=True,
       default="ghcr.io/aquasecurity/trivy-db"),
    _K("trivy.java_db_repository", "str", since="2.15.0", active=True,
       default="ghcr.io/aquasecurity/trivy-java-db"),
    _K("trivy.offline_scan", "bool", since="2.4.2", active=True, default=False),
    _K("trivy.security_check", "str", since="2.6.2", active=True, default="vuln"),
    _K("trivy.insecure", "bool", active=True, default=False),
    _K("trivy.github_token", "secret", secret=True),
    _K("trivy.timeout", "duration", since="2.11.0", active=True, default="5m0s"),
    _K("jobservice.max_job_workers", "int", active=True, default=10),
    _K("jobservice.max_job_duration_hours", "int", since="2.13.0", active=True, default=24),
    _K("jobservice.job_loggers", "list", since="2.9.0", active=True,
       default=["STD_OUTPUT", "FILE"], items=JOB_LOGGERS),
    _K("jobservice.logger_sweeper_duration", "int", since="2.8.0", active=True, default=1),
    _K("notification.webhook_job_max_retry", "int", active=True, default=10,
       defaults=(("2.8.0", 3),)),
    _K("notification.webhook_job_http_client_timeout", "int", since="2.8.0", active=True,
       default=3),
    _K("chart.absolute_url", "enum", until="2.8.0", active=True, default="disabled",
       choices=("enabled", "disabled")),
    _K("log.level", "enum", active=True, default="info", choices=LOG_LEVELS),
    _K("log.local.rotate_count", "int", active=True, default=50),
    _K("log.local.rotate_size", "size", active=True, default="200M"),
    _K("log.local.location", "path", active=True, default="/var/log/harbor"),
    _K("log.external_endpoint.protocol", "enum", choices=("tcp", "udp")),
    _K("log.external_endpoint.host", "str"),
    _K("log.external_endpoint.port", "port"),
    *(_K(f"external_database.harbor.{k}", kind) for k, kind in (
        ("host", "str"), ("port", "port"), ("db_name", "str"), ("username", "str"),
        ("max_idle_conns", "int"), ("max_open_conns", "int"))),
    _K("external_database.harbor.ssl_mode", "enum",
       choices=("disable", "require", "verify-ca", "verify-full")),
    _K("external_database.harbor.password", "secret", secret=True),
    *(_K(f"external_database.{db}.{k}", kind, until=until, secret=kind == "secret")
      for db, until in (("clair", "2.2.0"), ("notary_signer", "2.9.0"), ("notary_server", "2.9.0"))
      for k, kind in (("host", "str"), ("port", "port"), ("db_name", "str"), ("username", "str"),
                      ("password", "secret"), ("ssl_mode", "str"))),
    _K("external_redis.clair_db_index", "int", until="2.2.0"),
    _K("external_redis.chartmuseum_db_index", "int", until="2.8.0"),
    _K("external_redis.host", "str"),
    _K("external_redis.password", "secret", secret=True),
    _K("external_redis.username", "str", since="2.8.0"),
    _K("external_redis.sentinel_master_set", "str", since="2.1.0"),
    _K("external_redis.registry_db_index", "int"),
    _K("external_redis.jobservice_db_index", "int"),
    _K("external_redis.trivy_db_index", "int"),
    _K("external_redis.idle_timeout_seconds", "int"),
    _K("external_redis.harbor_db_index", "int", since="2.7.3", gaps=(("2.8.0", "2.8.4"),)),
    _K("external_redis.cache_layer_db_index", "int", since="2.7.3", gaps=(("2.8.0", "2.8.4"),)),
    _K("external_redis.tlsOptions.enable", "bool", since="2.13.0"),
    _K("external_redis.tlsOptions.rootCA", "path", since="2.13.0"),
    *(_K(f"redis.{k}", "int", since="2.7.3", gaps=(("2.8.0", "2.8.4"),)) for k in (
        "registry_db_index", "jobservice_db_index", "trivy_db_index", "harbor_db_index",
        "cache_layer_db_index")),
    _K("uaa.ca_file", "path"),
    _K("proxy.http_proxy", "str", active=True),
    _K("proxy.https_proxy", "str", active=True),
    _K("proxy.no_proxy", "str", active=True),
    _K("proxy.components", "list", active=True, default=["core", "jobservice", "clair", "trivy"],
       defaults=(("2.2.0", ["core", "jobservice", "trivy"]),), items=PROXY_COMPONENTS),
    _K("metric.enabled", "bool", since="2.2.0"),
    _K("metric.port", "port", since="2.2.0"),
    _K("metric.path", "str", since="2.2.0"),
    _K("trace.enabled", "bool", since="2.4.0"),
    _K("trace.sample_rate", "float", since="2.4.0"),
    _K("trace.namespace", "str", since="2.4.0"),
    _K("trace.attributes", "dict", since="2.4.0"),
    _K("trace.jaeger.endpoint", "url", since="2.4.0"),
    _K("trace.jaeger.username", "str", since="2.4.0"),
    _K("trace.jaeger.password", "secret", since="2.4.0", secret=True),
    _K("trace.jaeger.agent_host", "str", since="2.4.0"),
    _K("trace.jaeger.agent_port", "port", since="2.4.0"),
    _K("trace.otel.endpoint", "str", since="2.4.0"),
    _K("trace.otel.url_path", "str", since="2.4.0"),
    _K("trace.otel.compression", "bool", since="2.4.0"),
    _K("trace.otel.insecure", "bool", since="2.4.0"),
    _K("trace.otel.timeout", "int", since="2.4.0"),
    _K("upload_purging.enabled", "bool", since="2.5.0", active=True, default=True),
    _K("upload_purging.age", "hours", since="2.5.0", active=True, default="168h"),
    _K("upload_purging.interval", "hours", since="2.5.0", active=True, default="24h"),
    _K("upload_purging.dryrun", "bool", since="2.5.0", active=True, default=False),
    _K("cache.enabled", "bool", since="2.6.0", active=True, default=False),
    _K("cache.expire_hours", "int", since="2.6.0", active=True, default=24),
    _K("core.quota_update_provider", "enum", since="2.9.0", choices=("db", "redis")),
)
# external_redis.host was "host" plus a separate "port" before 2.1.0 (§2.4).
REDIS_HOST_PORT_SPLIT_UNTIL = Version("2.1.0")


@cache
def by_path() -> dict[str, Key]:
    return {k.path: k for k in KEYS}


def lookup(path: str) -> Key | None:
    """The row for a leaf path; storage driver settings resolve to their driver's row."""
    table = by_path()
    if path in table:
        return table[path]
    parts = path.split(".")
    if len(parts) >= 3 and parts[0] == "storage_service" and parts[1] in STORAGE_DRIVERS:
        return table[f"storage_service.{parts[1]}"]
    if path.startswith("trace.attributes."):
        return table["trace.attributes"]
    return None


def group_prefixes() -> frozenset[str]:
    """Every non-leaf path (``log``, ``log.local`` …): mappings, not values."""
    out = set()
    for k in KEYS:
        parts = k.path.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return frozenset(out)


def first_version_with(path: str) -> str:
    k = lookup(path)
    return k.since if k else "?"

"""harborctl test bed: a stand-in for Harbor's prepare (make/photon/prepare), run inside the
goharbor/prepare image exactly as Harbor's ``prepare`` wrapper runs it:
/input/harbor.yml in; /compose_location/docker-compose.yml, /config/... and /data/... out;
the host's root at /hostfs.

Behaviour kept from Harbor (reference/harbor-facts.md §2.5, §7, §11.2), per release through
the HARBOR_BED_RELEASE knobs the builder bakes into the image:
* required keys are read with ``[...]``: a missing one dies with a KeyError traceback;
* ``validate()`` checks with Harbor's messages; failure prints
  ``Error happened in config validation...`` and exits -1 (255);
* the compose project: Harbor's service and container names, bind mounts and owners.
* the token keys as Harbor's prepare makes them with openssl: ``{data_volume}/secret/core/
  private_key.pem`` (core signs tokens) and ``secret/registry/root.crt`` (the registry's
  ``auth: token: rootcertbundle``), kept when present; nginx sends ``/v2/`` and
  ``/service/`` to core, as Harbor's does.
Not kept: internal TLS, trace, external redis details, the syslog log driver.
Test-bed addition: when ``{data_volume}/bed-faults`` exists, it is mounted read-only at
``/harbor-bed-faults`` in harbor-db and harbor-core (the fault switches, see core.py and
db/upgrade.sh).
"""

import json
import logging
import os
import secrets
import shutil
import string
import subprocess
import sys

import yaml

R = json.loads(os.environ["HARBOR_BED_RELEASE"])
VERSION = "v" + R["version"]
PG_UID = 999
HARBOR_UID = 10000
DEFAULT_CERT = "/your/certificate/path"
DRIVERS = ["filesystem", "azure", "gcs", "s3", "swift", "oss"]
LOG_LEVELS = ["debug", "info", "warning", "error", "fatal"]

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("prepare")


def parse_args(argv):
    """Harbor's prepare is a click command; an unknown option is click's usage error."""
    if not argv or argv[0] != "prepare":
        print("Usage: main.py [OPTIONS] COMMAND [ARGS]...", file=sys.stderr)
        sys.exit(2)
    flags = set()
    conf = "/input/harbor.yml"
    args = argv[1:]
    while args:
        arg = args.pop(0)
        if arg == "--conf" and args:
            conf = args.pop(0)
        elif arg in R["prepare_flags"]:
            flags.add(arg)
        else:
            print("Usage: main.py prepare [OPTIONS]\nTry 'main.py prepare --help' for help.\n\n"
                  f"Error: No such option: {arg}", file=sys.stderr)
            sys.exit(2)
    return conf, flags


def parse_yaml_config(path, flags):
    """Read harbor.yml like Harbor's parse_yaml_config: required keys with [...]."""
    with open(path, encoding="utf-8") as fh:
        configs = yaml.safe_load(fh)
    c = {"hostname": configs["hostname"]}
    http = configs.get("http") or {}
    c["http_port"] = http.get("port", 80)
    https = configs.get("https")
    c["protocol"] = "https" if https else "http"
    if https:
        c["https_port"] = https.get("port", 443)
        c["cert_path"] = https["certificate"]
        c["cert_key_path"] = https["private_key"]
    c["data_volume"] = configs["data_volume"]
    c["harbor_admin_password"] = configs["harbor_admin_password"]
    db = configs.get("database") or {}
    c["db_password"] = db.get("password") or ""
    storage = configs.get("storage_service") or {}
    c["storage_provider_name"] = next(
        (k for k in storage if k not in ("ca_bundle", "redirect")), "filesystem")
    if storage.get("redirect"):
        c["storage_redirect_disabled"] = storage["redirect"][R["redirect_key"]]
    jobservice = configs["jobservice"]
    c["max_job_workers"] = jobservice["max_job_workers"]
    for key in R["required"].get("jobservice", []):
        c[key] = jobservice[key]
    notification = configs["notification"]
    for key in R["required"].get("notification", []):
        c[key] = notification[key]
    log_configs = configs.get("log") or {}
    c["log_level"] = log_configs["level"]
    if c["log_level"] not in LOG_LEVELS:
        raise Exception("log level must be one of debug, info, warning, error, fatal")
    local = log_configs.get("local") or {}
    c["log_location"] = local.get("location") or "/var/log/harbor"
    ext = log_configs.get("external_endpoint")
    if ext:
        c["log_ep_protocol"] = ext["protocol"]
        c["log_ep_host"] = ext["host"]
        c["log_ep_port"] = ext["port"]
    ext_db = (configs.get("external_database") or {}).get("harbor")
    c["external_database"] = bool(ext_db)
    if ext_db:
        c["db_host"] = ext_db["host"]
        c["db_port"] = ext_db["port"]
        c["db_name"] = ext_db["db_name"]
        c["db_user"] = ext_db["username"]
        c["db_password"] = ext_db["password"]
        c["db_sslmode"] = ext_db["ssl_mode"]
    else:
        c.update(db_host="postgresql", db_port=5432, db_name="registry", db_user="postgres")
    c["external_url"] = configs.get("external_url") or (
        f"{c['protocol']}://{c['hostname']}")
    c["with_trivy"] = "--with-trivy" in flags
    c["with_notary"] = "--with-notary" in flags
    c["with_chartmuseum"] = "--with-chartmuseum" in flags
    c["with_clair"] = "--with-clair" in flags
    c["storage_config"] = storage.get(c["storage_provider_name"], {})
    return c


def validate(c):
    if c["hostname"] == "127.0.0.1":
        raise Exception("127.0.0.1 can not be the hostname")
    if c["hostname"] == "reg.mydomain.com":
        raise Exception("Please specify hostname")
    if c["protocol"] == "https":
        if not c["cert_path"] or c["cert_path"] == DEFAULT_CERT:
            raise Exception("Error: The protocol is https but attribute ssl_cert is not set")
        if not c["cert_key_path"] or c["cert_key_path"] == DEFAULT_CERT:
            raise Exception("Error: The protocol is https but attribute ssl_cert_key is not set")
    else:
        log.warning("WARNING: HTTP protocol is insecure. Harbor will deprecate http protocol in "
                    "the future. Please make sure to upgrade to https")
    if R["notary_https_check"] and c["protocol"] != "https" and c["with_notary"]:
        raise Exception("Error: the protocol must be https when Harbor is deployed with Notary")
    if "log_ep_protocol" in c:
        if not c["log_ep_host"]:
            raise Exception("Error: must set log endpoint host to enable external host")
        if not c["log_ep_port"]:
            raise Exception("Error: must set log endpoint port to enable external host")
        if c["log_ep_protocol"] not in ("udp", "tcp"):
            raise Exception("Protocol in external log endpoint must be one of 'udp' or 'tcp' ")
    driver = c["storage_provider_name"]
    if driver not in DRIVERS:
        raise Exception(f"Error: storage driver {driver} is not supported, only the following "
                        f"ones are supported: {','.join(DRIVERS)}")
    if driver != "filesystem" and c["storage_config"] == "":
        raise Exception(f"Error: no provider configurations are provided for provider {driver}")


def write(path, text, mode=0o644, uid=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    if uid is not None:
        os.chown(tmp, uid, uid)
    os.replace(tmp, path)
    log.info("Generated configuration file: %s", path)


def mkdir_owned(path, uid, mode):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def env_file(values):
    return "".join(f"{k}={v}\n" for k, v in values.items())


def nginx_conf(c):
    https = c["protocol"] == "https"
    http_server = (
        "    server {\n        listen 8080;\n        return 308 https://$host$request_uri;\n    }\n"
        if https else "")
    listen = "listen 8443 ssl;\n        ssl_certificate /etc/cert/server.crt;\n" \
             "        ssl_certificate_key /etc/cert/server.key;" if https else "listen 8080;"
    proto = "https" if https else "$scheme"
    return f"""# generated by the harborctl test-bed prepare for Harbor {VERSION}
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path /tmp/client_body_temp;
    proxy_temp_path /tmp/proxy_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    default_type application/octet-stream;
    types {{ application/json json; text/html html; }}
    access_log /dev/stdout;
    tcp_nodelay on;
    upstream core {{ server core:8080; }}
    upstream portal {{ server portal:8080; }}
    upstream registry {{ server registry:5000; }}
{http_server}    server {{
        {listen}
        server_tokens off;
        client_max_body_size 0;
        chunked_transfer_encoding on;
        location / {{ proxy_pass http://portal/; }}
        location /api/ {{
            proxy_pass http://core/api/;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto {proto};
            proxy_buffering off;
            proxy_request_buffering off;
        }}
        location /service/ {{
            proxy_pass http://core/service/;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto {proto};
        }}
        location /v2/ {{
            proxy_pass http://core/v2/;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto {proto};
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def registry_conf(c):
    return f"""# generated by the harborctl test-bed prepare for Harbor {VERSION}
version: 0.1
log:
  level: {c["log_level"] if c["log_level"] != "warning" else "warn"}
storage:
  filesystem:
    rootdirectory: /storage
  delete:
    enabled: true
  redirect:
    disable: {str(bool(c.get("storage_redirect_disabled", True))).lower()}
http:
  addr: :5000
  secret: {secrets.token_hex(16)}
auth:
  token:
    issuer: harbor-token-issuer
    realm: {c["external_url"]}/service/token
    rootcertbundle: /etc/registry/root.crt
    service: harbor-registry
"""


def compose(c):
    image = lambda name: f"goharbor/{name}:{VERSION}"  # noqa: E731
    dv = c["data_volume"]
    svc = {}

    def service(key, container, img, *, depends=("log",), volumes=(), **extra):
        body = {"image": image(img), "container_name": container, "restart": "always"}
        if volumes:
            body["volumes"] = list(volumes)
        if depends:
            body["depends_on"] = list(depends)
        body["networks"] = ["harbor"]
        body.update(extra)
        svc[key] = body

    service("log", "harbor-log", "harbor-log", depends=(),
            volumes=[f"{c['log_location']}/:/var/log/docker/:z"])
    faults = [f"{dv}/bed-faults:/harbor-bed-faults:ro"] if os.path.isdir("/data/bed-faults") else []
    service("registry", "registry", "registry-photon",
            volumes=[f"{dv}/registry:/storage:z", "./common/config/registry/:/etc/registry/:z",
                     f"{dv}/secret/registry/root.crt:/etc/registry/root.crt:z"])
    service("registryctl", "registryctl", "harbor-registryctl")
    core_deps = ["log", "registry"]
    if not c["external_database"]:
        service("postgresql", "harbor-db", "harbor-db",
                volumes=[f"{dv}/database:/var/lib/postgresql/data:z", *faults],
                env_file=["./common/config/db/env"], shm_size="1gb")
        core_deps.append("postgresql")
    core_deps.append("redis")
    service("core", "harbor-core", "harbor-core", depends=core_deps,
            env_file=["./common/config/core/env"],
            volumes=[f"{dv}/secret/keys/secretkey:/etc/core/key:z",
                     f"{dv}/secret/core/private_key.pem:/etc/core/private_key.pem:z", *faults])
    service("portal", "harbor-portal", "harbor-portal")
    service("jobservice", "harbor-jobservice", "harbor-jobservice", depends=("core",),
            volumes=[f"{dv}/job_logs:/var/log/jobs:z"])
    service("redis", "redis", R["redis_image"], volumes=[f"{dv}/redis:/var/lib/redis"])
    ports = [f"{c['http_port']}:8080"]
    proxy_volumes = ["./common/config/nginx:/etc/nginx:z"]
    if c["protocol"] == "https":
        ports.append(f"{c['https_port']}:8443")
        proxy_volumes.append(f"{dv}/secret/cert:/etc/cert:z")
    service("proxy", "nginx", "nginx-photon", depends=("registry", "core", "portal", "log"),
            volumes=proxy_volumes, ports=ports)
    if c["with_trivy"]:
        service("trivy-adapter", "trivy-adapter", "trivy-adapter-photon")
    if c["with_notary"]:
        service("notary-server", "notary-server", "notary-server-photon")
        service("notary-signer", "notary-signer", "notary-signer-photon")
    if c["with_chartmuseum"]:
        service("chartmuseum", "chartmuseum", "chartmuseum-photon")
    if c["with_clair"]:
        service("clair", "clair", "clair-photon")
        service("clair-adapter", "clair-adapter", "clair-adapter-photon")
    doc = {} if R["compose_versionless"] else {"version": "2.3"}
    doc["services"] = svc
    doc["networks"] = {"harbor": {"external": False}}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def health_targets(c):
    targets = {"jobservice": "jobservice:8080", "portal": "portal:8080", "redis": "redis:6379",
               "registryctl": "registryctl:8080"}
    if c["with_trivy"]:
        targets["trivy"] = "trivy-adapter:8080"
    if c["with_notary"]:
        targets["notary"] = "notary-server:4443"
    if c["with_chartmuseum"]:
        targets["chartmuseum"] = "chartmuseum:9999"
    if c["with_clair"]:
        targets["clair"] = "clair:6060"
    return ",".join(f"{k}={v}" for k, v in sorted(targets.items()))


def token_keys():
    """Harbor's prepare_registry_ca: an RSA key for core and its self-signed certificate for
    the registry, made once (an upgrade keeps them)."""
    key, crt = "/data/secret/core/private_key.pem", "/data/secret/registry/root.crt"
    if os.path.exists(key) and os.path.exists(crt):
        return
    mkdir_owned("/data/secret/core", HARBOR_UID, 0o700)
    mkdir_owned("/data/secret/registry", HARBOR_UID, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-days", "3650",
                    "-subj", "/CN=harbor-token-ca", "-keyout", key + ".tmp", "-out", crt + ".tmp"],
                   check=True, capture_output=True)
    for path, mode in ((key, 0o600), (crt, 0o644)):
        os.chown(path + ".tmp", HARBOR_UID, HARBOR_UID)
        os.chmod(path + ".tmp", mode)
        os.replace(path + ".tmp", path)
    log.info("Generated token key and certificate: %s, %s", key, crt)


def prepare(c):
    mkdir_owned("/data/secret", HARBOR_UID, 0o700)
    mkdir_owned("/data/secret/keys", HARBOR_UID, 0o700)
    key = "/data/secret/keys/secretkey"
    if not os.path.exists(key):
        alphabet = string.ascii_letters + string.digits
        write(key, "".join(secrets.choice(alphabet) for _ in range(16)), 0o600, HARBOR_UID)
    mkdir_owned("/data/registry", HARBOR_UID, 0o755)
    mkdir_owned("/data/job_logs", HARBOR_UID, 0o755)
    mkdir_owned("/data/redis", 999, 0o755)
    if not c["external_database"]:
        mkdir_owned("/data/database", PG_UID, 0o700)
    mkdir_owned("/hostfs" + c["log_location"], HARBOR_UID, 0o755)
    if c["protocol"] == "https":
        mkdir_owned("/data/secret/cert", HARBOR_UID, 0o755)
        shutil.copy2("/hostfs" + c["cert_path"], "/data/secret/cert/server.crt")
        shutil.copy2("/hostfs" + c["cert_key_path"], "/data/secret/cert/server.key")
        os.chown("/data/secret/cert/server.crt", HARBOR_UID, HARBOR_UID)
        os.chown("/data/secret/cert/server.key", HARBOR_UID, HARBOR_UID)
    write("/config/db/env", env_file({"POSTGRES_PASSWORD": c["db_password"]}), 0o600)
    write("/config/core/env", env_file({
        "CONFIG_PATH": "/etc/core/app.conf", "EXT_ENDPOINT": c["external_url"],
        "POSTGRESQL_HOST": c["db_host"], "POSTGRESQL_PORT": c["db_port"],
        "POSTGRESQL_USERNAME": c["db_user"], "POSTGRESQL_PASSWORD": c["db_password"],
        "POSTGRESQL_DATABASE": c["db_name"], "REGISTRY_URL": "http://registry:5000",
        "HARBOR_ADMIN_PASSWORD": c["harbor_admin_password"],
        "HARBOR_HEALTH_TARGETS": health_targets(c), "LOG_LEVEL": c["log_level"]}), 0o600)
    token_keys()
    write("/config/registry/config.yml", registry_conf(c), 0o644)
    write("/config/nginx/nginx.conf", nginx_conf(c), 0o644)
    write("/compose_location/docker-compose.yml", compose(c), 0o644)


def main():
    conf, flags = parse_args(sys.argv[1:])
    config = parse_yaml_config(conf, flags)  # outside try, like Harbor: KeyError = traceback
    try:
        validate(config)
    except Exception as exc:  # noqa: BLE001 - Harbor's behaviour
        print("Error happened in config validation...")
        logging.error(exc)
        sys.exit(-1)
    prepare(config)


if __name__ == "__main__":
    main()

"""Off-host backup copies: a real backup of a real PostgreSQL, pushed over real SSH to a
test-bed host, checked by the remote host's own SHA-256, with retention applied there."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup.engine import BackupResult
from harbor_ops.backup.manifest import PARTIAL_SUFFIX, write_sidecar
from harbor_ops.backup.remote import checksums_match, list_remote, prune_remote, push_backup
from harbor_ops.core.errors import RemoteError
from harbor_ops.site.model import Keep, Remote
from tests.bed.hosts import Host, TestBed
from tests.integration.pgfixture import Cluster, HarborHost, backed_up_host, make_harbor_host

pytestmark = pytest.mark.integration

REMOTE_DIR = "/var/backups/harbor-offsite"


def _remote(host: Host, folder: str = REMOTE_DIR, **kw: object) -> Remote:
    return Remote(host=host.name, path=folder, key_file=host.key, **kw)  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def harbor_host(tmp_path: Path) -> HarborHost:
    return make_harbor_host(tmp_path)


@pytest.fixture(scope="module")
def backup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> BackupResult:
    """One real backup (a Harbor-shaped database of ~2 MB), shared by the module."""
    return backed_up_host(cluster, tmp_path_factory.mktemp("remote-src"), "registry_remote",
                          artifacts=3000, pad=20, secret_key=b"0123456789abcdef",
                          parts=("data",))[1]


@pytest.fixture
def h1(testbed: TestBed) -> Iterator[Host]:
    host = testbed.hosts["h1"]
    yield host
    host.exec(f"rm -rf {REMOTE_DIR}", check=False)


@pytest.mark.parametrize(("output", "expected"), [
    ("a" * 64 + "  /x/y.partial\n", True),
    ("A" * 64 + " */x/y.partial\n", True),
    ("b" * 64 + "  /x/y.partial\n", False),
    ("a" * 63 + "  /x/y.partial\n", False),
    ("", False),
])
def test_checksums_match_table(output: str, expected: bool) -> None:
    assert checksums_match("a" * 64, output) is expected


def test_push_is_checked_on_the_remote_host(backup: BackupResult, h1: Host) -> None:
    result = push_backup(backup.path, _remote(h1), ssh_config=h1.ssh_config)
    assert result.sha256 == _sha(backup.path) and not result.already_there
    there = h1.exec(f"sha256sum {REMOTE_DIR}/{backup.name}").stdout.split()[0]
    assert there == result.sha256
    folder = h1.root_path / REMOTE_DIR.lstrip("/")
    assert sorted(p.name for p in folder.iterdir()) == [backup.name]
    assert (folder / backup.name).stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    assert [e.name for e in list_remote(_remote(h1), ssh_config=h1.ssh_config)] == [backup.name]
    again = push_backup(backup.path, _remote(h1), ssh_config=h1.ssh_config)
    assert again.already_there and again.sha256 == result.sha256


def test_a_copy_damaged_on_the_remote_disk_is_refused(backup: BackupResult,
                                                      testbed: TestBed) -> None:
    """A sha256sum on h2 that first flips one byte of the uploaded file, as a bad disk would:
    the push must fail, and neither the damaged copy nor a .partial may stay there."""
    h2 = testbed.hosts["h2"]
    wrapper = "/usr/local/bin/sha256sum"
    h2.exec(f"""cat > {wrapper} <<'EOF'
#!/bin/sh
for last; do :; done
printf '\\377' | dd of="$last" bs=1 seek=4096 conv=notrunc status=none
exec /usr/bin/sha256sum "$@"
EOF
chmod 755 {wrapper}""")
    try:
        with pytest.raises(RemoteError, match="checksum mismatch on root@h2") as exc:
            push_backup(backup.path, _remote(h2), ssh_config=h2.ssh_config)
        assert RemoteError.exit_code == 6 and "deleted" in str(exc.value)
        listing = h2.exec(f"ls -A {REMOTE_DIR}").stdout.split()
        assert listing == []
    finally:
        h2.exec(f"rm -f {wrapper}; rm -rf {REMOTE_DIR}", check=False)
    # the same push succeeds once the remote host stores bytes faithfully
    assert push_backup(backup.path, _remote(h2), ssh_config=h2.ssh_config).sha256 == \
        _sha(backup.path)
    h2.exec(f"rm -rf {REMOTE_DIR}", check=False)


def test_remote_retention_never_deletes_the_newest(backup: BackupResult, h1: Host,
                                                   tmp_path: Path) -> None:
    # Copies of the real backup under older names (names carry the date retention reads).
    stamps = ["20250101T020000Z", "20250201T020000Z", "20250301T020000Z", "20250302T020000Z"]
    paths = []
    for ts in stamps:
        p = tmp_path / f"harbor-hb-{ts}.hbk"
        shutil.copyfile(backup.path, p)
        paths.append(p)
    write_sidecar(paths[1], {"ok": True, "verified_at": "2025-02-02T00:00:00Z"})
    other_host = tmp_path / "harbor-otherhost-20240101T000000Z.hbk"
    shutil.copyfile(backup.path, other_host)
    for p in [*paths, other_host]:
        push_backup(p, _remote(h1), ssh_config=h1.ssh_config)
    listed = list_remote(_remote(h1), ssh_config=h1.ssh_config, hostname="hb")
    assert [e.name for e in listed] == [p.name for p in reversed(paths)]
    assert [e.verified for e in listed] == [None, None, True, None]

    nothing = Keep(daily=0, weekly=0, monthly=0)
    would = prune_remote(_remote(h1), nothing, ssh_config=h1.ssh_config, hostname="hb",
                         dry_run=True)
    assert sorted(would) == sorted([paths[0].name, paths[2].name])
    deleted = prune_remote(_remote(h1, keep=nothing), ssh_config=h1.ssh_config, hostname="hb")
    assert sorted(deleted) == sorted(would)
    left = sorted(p.name for p in (h1.root_path / REMOTE_DIR.lstrip("/")).iterdir())
    assert left == sorted([paths[3].name, paths[1].name, paths[1].name + ".verified.json",
                           other_host.name])


def test_site_backup_push_cli_and_unknown_host_key(cluster: Cluster, harbor_host: HarborHost,
                                                   h1: Host, tmp_path: Path) -> None:
    cluster.harbor_db("registry_site_remote", artifacts=50)
    extra_remote = f"""  remote:
    host: h1
    path: {REMOTE_DIR}
    key_file: {h1.key}
    keep:
      daily: 1
"""
    site = harbor_host.site_file(cluster, "registry_site_remote")
    site.write_text(site.read_text().replace("  jitter_minutes: 0\n",
                                             "  jitter_minutes: 0\n" + extra_remote))
    # `backup create` copies off-host itself when backup.remote is set.
    made = harbor_host.harborctl(site, "backup", "create", "-o", "json",
                                 HARBORCTL_SSH_CONFIG=str(h1.ssh_config))
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["name"]
    copied = h1.exec(f"sha256sum {REMOTE_DIR}/{name}").stdout.split()[0]
    assert copied == _sha(harbor_host.backups / name)

    # h1's key is in no known_hosts we read (empty HOME, a config without
    # UserKnownHostsFile): refused, never trusted on first use; exit 6, host named.
    bare = tmp_path / "ssh_config"
    bare.write_text(f"Host h1\n  HostName {h1.address}\n")
    refused = harbor_host.harborctl(site, "backup", "push", HOME=str(tmp_path),
                                    HARBORCTL_SSH_CONFIG=str(bare))
    assert refused.returncode == 6, refused.stderr
    assert "root@h1" in refused.stderr and "known_hosts" in refused.stderr
    assert "Traceback" not in refused.stderr

    pushed = harbor_host.harborctl(site, "backup", "push", "-o", "json",
                                   HARBORCTL_SSH_CONFIG=str(h1.ssh_config))
    assert pushed.returncode == 0, pushed.stderr
    doc = json.loads(pushed.stdout)
    assert doc["name"] == name and doc["sha256"] == _sha(harbor_host.backups / name)
    there = h1.exec(f"sha256sum {REMOTE_DIR}/{name}").stdout.split()[0]
    assert there == doc["sha256"]
    assert not h1.exec(f"ls {REMOTE_DIR}").stdout.count(PARTIAL_SUFFIX)

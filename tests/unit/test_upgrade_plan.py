"""`upgrade apply`'s plan and its refusals, from recorded host facts (nothing is touched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from harbor_ops.core.errors import UsageError
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.upgrade.apply import inspect_bundles
from harbor_ops.upgrade.plan import check_target, plan_host
from tests.unit.test_bundle_inspect import make_bundle
from tests.unit.test_preflight import make_site, ran
from tests.unit.test_upgrade_state import through

GIB = 1 << 30


def host_facts(installed: str = "2.14.4", layout: str = "pg15", *, schema: str = "171|f",
               free: int = 100 * GIB, db_size: int = GIB, **over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "disk": {"path": "/data", "free": free, "total": 200 * GIB},
        "database": {"path": "/data/database", "exists": True, "entries": [layout],
                     "pg_dirs": [layout] if layout != "9.6" else [],
                     "root_pg_version": layout == "9.6", "size": db_size, "readable": True},
        "data_sizes": {"redis": 1 << 20, "secret": 4096},
        "docker": ran("26.1.5"), "compose_v2": ran("2.24.6"), "compose_v1": ran(rc=127),
        "containers": f"harbor-core\tgoharbor/harbor-core:v{installed}\t",
        "schema": ran(schema), "install_entries": [f"harbor-{installed}", "harbor"],
        "install_active": f"harbor-{installed}",
    }
    f.update(over)
    return f


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[Version, bundle_mod.BundleInfo]:
    d = tmp_path_factory.mktemp("bundles")
    for v in ("2.12.4", "2.14.4", "2.15.2", "2.10.3"):
        make_bundle(d / f"harbor-offline-installer-v{v}.tgz", v)
    return inspect_bundles(d, {Version(v) for v in ("2.12.4", "2.14.4", "2.15.2", "2.10.3")})


def plan(facts: dict[str, Any], bundles: dict[Version, bundle_mod.BundleInfo],
         target: str = "2.15.2", **harbor: Any):  # type: ignore[no-untyped-def]
    site = make_site(target, **harbor)
    return plan_host(site, "h1", facts, bundles=bundles, harbor_values=site.harbor)


def checks(hp) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.check for r in hp.refusals]


def test_one_hop_reads_the_installed_release_from_the_host(bundles) -> None:  # type: ignore[no-untyped-def]
    hp = plan(host_facts(), bundles)
    assert hp.refusals == []
    assert (hp.installed, hp.data_layout) == ("2.14.4", "pg15")
    assert "harbor-core" in hp.installed_from
    assert [str(h.target) for h in hp.hops] == ["2.15.2"]
    d = hp.to_dict()
    assert d["hops"][0]["steps"][0]["name"] == "backup"
    assert d["disk"]["needed_bytes"] > GIB


def test_the_site_file_version_is_the_target_and_to_must_match() -> None:
    site = make_site("2.15.2")
    check_target(site, "2.15.2")
    check_target(site, None)
    with pytest.raises(UsageError, match="update|set harbor.version: 2.14.4"):
        check_target(site, "2.14.4")


def test_multi_hop_stops_list_keys_the_stop_lacks(bundles) -> None:  # type: ignore[no-untyped-def]
    hp = plan(host_facts("2.10.3", "pg14", schema="130|f"), bundles,
              trivy={"timeout": "5m0s"})
    assert [str(h.target) for h in hp.hops] == ["2.12.4", "2.14.4", "2.15.2"]
    assert hp.refusals == []
    # trivy.timeout is valid at the target (2.11+) and at both stops: nothing left out
    assert hp.left_out == {"2.12.4": [], "2.14.4": []}


def test_left_out_keys_are_listed_not_refused(bundles) -> None:  # type: ignore[no-untyped-def]
    hp = plan(host_facts("2.10.3", "pg14", schema="130|f"), bundles,
              jobservice={"max_job_duration_hours": 24})
    assert hp.refusals == []
    assert hp.left_out["2.12.4"] == ["jobservice.max_job_duration_hours"]
    assert hp.left_out["2.14.4"] == []


@pytest.mark.parametrize(("facts", "check", "words"), [
    (host_facts(schema="171|t"), "schema", "dirty"),
    (host_facts(free=GIB), "disk", "largest hop"),
    (host_facts(layout="pg14"), "path", "contradicts"),
    (host_facts(installed="2.7.4", layout="9.6"), "path", "contradicts"),
    (host_facts(docker=ran("17.3.0")), "docker", "older than"),
    (host_facts(compose_v2=ran(rc=127), compose_v1=ran(rc=127)), "compose", "neither"),
    (host_facts(containers="", install_entries=[], install_active=None), "installed",
     "harborctl install"),
    (host_facts(database={"path": "/data/database", "exists": True, "entries": ["pg14", "pg15"],
                          "pg_dirs": ["pg14", "pg15"], "root_pg_version": False, "size": 1,
                          "readable": True}), "data_layout", "several clusters"),
])
def test_refusals_name_the_fix(bundles, facts, check, words) -> None:  # type: ignore[no-untyped-def]
    hp = plan(facts, bundles)
    assert check in checks(hp), hp.refusals
    r = next(r for r in hp.refusals if r.check == check)
    assert words in f"{r.reason} {r.fix}"
    assert r.fix


def test_downgrade_is_refused(bundles) -> None:  # type: ignore[no-untyped-def]
    hp = plan(host_facts(), bundles, target="2.12.4")
    assert checks(hp) == ["path"] and "downgrade" in hp.refusals[0].reason


def test_bundle_missing_truncated_or_wrong(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "bundle" in checks(plan(host_facts(), {}))
    good = make_bundle(tmp_path / "harbor-offline-installer-v2.15.2.tgz", "2.15.2")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    cut = inspect_bundles(tmp_path, {Version("2.15.2")})
    r = plan(host_facts(), cut).refusals
    assert [x.check for x in r] == ["bundle"] and "truncated" in r[0].reason
    wrong = tmp_path / "w"
    wrong.mkdir()
    make_bundle(wrong / "harbor-offline-installer-v2.15.2.tgz", "2.15.1")
    r = plan(host_facts(), inspect_bundles(wrong, {Version("2.15.2")})).refusals
    assert [x.check for x in r] == ["bundle"] and "2.15.1" in r[0].reason


def test_an_unfinished_run_is_resumed_not_replanned(bundles) -> None:  # type: ignore[no-untyped-def]
    hp = plan(host_facts(upgrade_journal="\n".join(through("start", "begin"))), bundles)
    assert hp.decision.action == "rollback" and hp.plan is None
    assert hp.state.step == "start"


def test_hop_vars_set_every_required_option_of_the_upgrade_entry_point(tmp_path: Path) -> None:
    import yaml

    from harbor_ops.hosts.playbook import playbook_dir
    from harbor_ops.releases.versions import release
    from harbor_ops.upgrade import steps as st
    from harbor_ops.upgrade.apply import Options, hop_vars

    spec = yaml.safe_load((playbook_dir() / "roles/harbor/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["upgrade"]["options"]
    got = hop_vars(make_site("2.15.2"), number=1, src=release("2.14.4"), tgt=release("2.15.2"),
                   steps=["unpack"], run_id="0123456789abcdef", backup=None,
                   bundle=tmp_path / "b.tgz", bundle_sha256="0" * 64, staging=tmp_path,
                   opts=Options(None, None, tmp_path, tmp_path))
    missing = [k for k, o in options.items() if o.get("required") and k not in got]
    assert missing == []
    assert got["harbor_upgrade_rollback_table"]["gate"] == [s.name for s in st.ROLLBACK_STEPS]
    assert got["harbor_upgrade_rollback_table"]["backup"] == []
    assert (got["harbor_upgrade_schema_from"], got["harbor_upgrade_schema_to"]) == (171, 180)
    assert (got["harbor_upgrade_layout_from"], got["harbor_upgrade_layout_to"]) == ("pg15",
                                                                                  "pg18")
    assert "FROM artifact" in got["harbor_upgrade_count_sql"]

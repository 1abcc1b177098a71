"""The upgrade planner as a table of cases: every minor line as source, and the refusals."""

from __future__ import annotations

import itertools

import pytest

from harbor_ops.core.errors import UpgradePathError, UsageError
from harbor_ops.releases import planner
from harbor_ops.releases import versions as hv


def stops(current: str, target: str) -> list[str]:
    return [str(r) for r in planner.plan(current=current, target=target).stops]


# Expected paths to the newest release, from the first and the last patch of every minor
# line. Each hop moves at most two minors and every PostgreSQL step is taken by a release
# that converts it: 9.6 -> pg13 in 2.3-2.6, pg13 -> pg14 in 2.9/2.10, pg14 -> pg15 in
# 2.11-2.15.1, pg15 -> pg18 in 2.15.2.
TO_NEWEST = {
    "2.0": ["2.2.4", "2.4.3", "2.6.4", "2.8.6", "2.10.3", "2.12.4", "2.14.4", "2.15.2"],
    "2.1": ["2.3.5", "2.5.6", "2.7.4", "2.9.5", "2.11.2", "2.13.5", "2.15.2"],
    "2.2": ["2.4.3", "2.6.4", "2.8.6", "2.10.3", "2.12.4", "2.14.4", "2.15.2"],
    "2.3": ["2.5.6", "2.7.4", "2.9.5", "2.11.2", "2.13.5", "2.15.2"],
    "2.4": ["2.6.4", "2.8.6", "2.10.3", "2.12.4", "2.14.4", "2.15.2"],
    "2.5": ["2.7.4", "2.9.5", "2.11.2", "2.13.5", "2.15.2"],
    "2.6": ["2.8.6", "2.10.3", "2.12.4", "2.14.4", "2.15.2"],
    "2.7": ["2.9.5", "2.11.2", "2.13.5", "2.15.2"],
    "2.8": ["2.10.3", "2.12.4", "2.14.4", "2.15.2"],
    "2.9": ["2.11.2", "2.13.5", "2.15.2"],
    "2.10": ["2.12.4", "2.14.4", "2.15.2"],
    "2.11": ["2.13.5", "2.15.2"],
    "2.12": ["2.14.4", "2.15.2"],
    "2.13": ["2.15.2"],
    "2.14": ["2.15.2"],
    "2.15": ["2.15.2"],
}


def test_table_covers_every_minor_line() -> None:
    assert set(TO_NEWEST) == set(hv.minors())


@pytest.mark.parametrize("minor", list(TO_NEWEST))
@pytest.mark.parametrize("which", ["first", "latest"])
def test_every_minor_line_to_newest(minor: str, which: str) -> None:
    source = f"{minor}.0" if which == "first" else str(hv.latest_patch(minor))
    expected = [s for s in TO_NEWEST[minor] if s != source]
    assert stops(source, "2.15.2") == expected


CASES = [
    # (current, target, expected stops)
    ("2.0.6", "2.2.4", ["2.2.4"]),  # 9.6 used as is
    ("2.0.0", "2.0.6", ["2.0.6"]),  # patch releases of one minor
    ("2.1.6", "2.3.5", ["2.3.5"]),  # 2.3 converts 9.6 -> pg13
    ("2.2.4", "2.7.0", ["2.4.3", "2.6.4", "2.7.0"]),  # 9.6 must be converted by 2.3-2.6
    ("2.2.4", "2.7.4", ["2.4.3", "2.6.4", "2.7.4"]),
    ("2.3.0", "2.5.6", ["2.5.6"]),
    ("2.4.3", "2.6.4", ["2.6.4"]),
    ("2.5.0", "2.7.4", ["2.7.4"]),
    ("2.6.4", "2.8.6", ["2.8.6"]),
    ("2.7.4", "2.9.0", ["2.9.0"]),  # 2.9 converts pg13 -> pg14
    ("2.8.6", "2.12.4", ["2.10.3", "2.12.4"]),  # goharbor/harbor#21865: one hop = empty DB
    ("2.8.6", "2.11.0", ["2.10.3", "2.11.0"]),
    ("2.9.5", "2.11.2", ["2.11.2"]),
    ("2.10.3", "2.12.4", ["2.12.4"]),
    ("2.10.3", "2.15.1", ["2.12.4", "2.14.4", "2.15.1"]),
    ("2.11.2", "2.14.4", ["2.13.5", "2.14.4"]),  # 2.14's guide says n-3; the policy wins
    ("2.11.0", "2.13.5", ["2.13.5"]),
    ("2.12.4", "2.15.1", ["2.14.4", "2.15.1"]),
    ("2.13.5", "2.15.0", ["2.15.0"]),
    ("2.15.0", "2.15.2", ["2.15.2"]),  # a patch that converts pg15 -> pg18
    ("2.15.1", "2.15.2", ["2.15.2"]),
]


@pytest.mark.parametrize(("current", "target", "expected"), CASES)
def test_paths(current: str, target: str, expected: list[str]) -> None:
    assert stops(current, target) == expected


def test_path_from_pg14_passes_through_a_pg15_release() -> None:
    p = planner.plan(current="2.10.3", target="2.15.2")
    layouts = [h.layout_after for h in p.hops]
    assert "pg15" in layouts and layouts[-1] == "pg18"
    assert [h.db_outcome for h in p.hops] == ["convert", "use", "convert"]


@pytest.mark.parametrize(("a", "b", "trap"), [
    ("2.8.6", "2.12.4", "EMPTY"),  # pg13 on a pg15 image
    ("2.10.3", "2.15.2", "EMPTY"),  # pg14 on a pg18 image (a patch release!)
    ("2.2.4", "2.7.4", "refuses"),  # 9.6 on a 2.7+ image
])
def test_single_hop_that_loses_the_database_is_refused(a: str, b: str, trap: str) -> None:
    problems = planner.hop_problems(hv.release(a), hv.release(b))
    assert any(trap in p for p in problems), problems


def test_pg14_data_cannot_jump_to_2_15_2_even_within_the_minor_rules() -> None:
    assert not planner.hop_allowed(hv.release("2.14.4"), hv.release("2.15.2"), "pg14")
    assert planner.hop_allowed(hv.release("2.14.4"), hv.release("2.15.1"), "pg14")


def test_stricter_of_policy_and_guide_wins() -> None:
    problems = planner.hop_problems(hv.release("2.11.2"), hv.release("2.14.4"))
    assert problems and "at most 2" in problems[0]
    assert str(planner.oldest_from(hv.release("2.14.4"))) == "2.12.0"
    assert str(planner.oldest_from(hv.release("2.15.2"))) == "2.13.0"
    assert str(planner.oldest_from(hv.release("2.0.6"))) == "1.9.0"


def test_same_version_is_an_empty_plan() -> None:
    p = planner.plan(current="2.12.4", target="2.12.4")
    assert p.hops == () and p.stops == () and p.next_command is None
    assert p.to_dict()["stops"] == []


def test_downgrade_refused() -> None:
    with pytest.raises(UpgradePathError, match="downgrade") as exc:
        planner.plan(current="2.12.4", target="2.10.3")
    assert exc.value.exit_code == 3


def test_patch_downgrade_refused() -> None:
    with pytest.raises(UpgradePathError, match="downgrade"):
        planner.plan(current="2.15.2", target="2.15.1")


@pytest.mark.parametrize(("current", "target"), [
    ("2.16.0", "2.15.2"), ("2.12.4", "3.0.0"), ("1.10.3", "2.2.4"),
])
def test_unknown_version_lists_the_known_range(current: str, target: str) -> None:
    with pytest.raises(UsageError, match=r"2\.0\.0 … 2\.15\.2") as exc:
        planner.plan(current=current, target=target)
    assert exc.value.exit_code == 2


def test_unknown_patch_names_its_line() -> None:
    with pytest.raises(UsageError, match=r"2\.15\.0 … 2\.15\.2"):
        planner.plan(current="2.12.4", target="2.15.9")


def test_not_a_version() -> None:
    with pytest.raises(UsageError, match="not a version"):
        planner.plan(current="latest", target="2.15.2")


@pytest.mark.parametrize(("current", "layout", "written_by"), [
    ("2.8.6", "pg14", "2.9.0 … 2.10.3"),  # a newer Harbor already ran on the data
    ("2.3.5", "9.6", "2.0.0 … 2.2.4"),  # 2.3+ converts 9.6 at first start
    ("2.11.2", "pg13", "2.3.0 … 2.8.6"),  # the empty-database trap already sprung
    ("2.15.2", "pg15", "2.11.0 … 2.15.1"),
    ("2.2.4", "pg13", "2.3.0 … 2.8.6"),
])
def test_data_layout_contradicting_from_is_refused(current: str, layout: str,
                                                   written_by: str) -> None:
    with pytest.raises(UpgradePathError) as exc:
        planner.plan(current=current, target="2.15.2", data_layout=layout)
    msg = str(exc.value)
    assert f"data layout {layout}" in msg and written_by in msg and f"--from {current}" in msg
    assert "/data/database" in msg


def test_data_layout_matching_from_is_accepted() -> None:
    p = planner.plan(current="2.2.4", target="2.4.3", data_layout="9.6")
    assert p.data_layout == "9.6" and p.hops[0].db_outcome == "convert"


def test_unknown_layout_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="9.6, pg13, pg14, pg15, pg18"):
        planner.plan(current="2.8.6", target="2.10.3", data_layout="pg16")


def test_hop_details_2_7_to_2_8() -> None:
    (hop,) = planner.plan(current="2.7.4", target="2.8.6").hops
    assert hop.postgresql.startswith("none")
    assert hop.yml.from_version == "2.7.0" and hop.yml.to_version == "2.8.0"
    assert ("storage_service.redirect.disabled", "storage_service.redirect.disable",
            "2.8.0") in hop.yml.renamed
    assert "chart.absolute_url" in hop.yml.removed
    assert ("notification.webhook_job_max_retry", 10, 3) in hop.yml.defaults_changed
    assert hop.removed_components == ("chartmuseum",)
    assert hop.flags_stop_working == ("--with-chartmuseum",)
    assert hop.command == (
        "harborctl backup create && harborctl install --bundle "
        "harbor-offline-installer-v2.8.6.tgz --harbor-version 2.8.6")


def test_hop_details_conversion_and_disk() -> None:
    size = 10 << 30
    p = planner.plan(current="2.8.6", target="2.12.4", db_size_bytes=size)
    first, second = p.hops
    assert first.postgresql.startswith("pg13 -> pg14 by pg_upgrade in harbor-db")
    assert second.postgresql.startswith("pg14 -> pg15 by pg_upgrade in harbor-db")
    assert first.disk_db_factor == 1.0
    assert first.disk_needed_bytes == size + planner.IMAGE_TARBALL_BYTES
    assert first.removed_components == ("notary",) and first.flags_stop_working == (
        "--with-notary",)
    assert p.next_command == "harborctl upgrade apply --to 2.12.4"
    assert first.command == (
        "harborctl backup create && harborctl install --bundle "
        "harbor-offline-installer-v2.10.3.tgz --harbor-version 2.10.3")
    req = second.requirements
    assert req["docker_documented_min"] == "20.10.10" and req["docker_enforced_min"] == "17.6.0"
    assert req["compose_v1_effective_min"] == "1.27.0"  # 2.12's compose file has no version:


def test_no_conversion_needs_no_database_copy() -> None:
    (hop,) = planner.plan(current="2.12.4", target="2.14.4", db_size_bytes=5 << 30).hops
    assert hop.db_outcome == "use" and hop.disk_db_factor == 0.0
    assert hop.disk_needed_bytes == planner.IMAGE_TARBALL_BYTES


def test_2_15_2_is_a_postgresql_change_inside_a_patch_release() -> None:
    (hop,) = planner.plan(current="2.15.0", target="2.15.2").hops
    assert hop.db_outcome == "convert" and hop.postgresql.startswith("pg15 -> pg18")
    assert hop.yml.from_version == hop.yml.to_version == "2.15.0"


def test_support_window() -> None:
    p = planner.plan(current="2.8.6", target="2.15.2")
    assert p.supported_minors == hv.supported_minors()
    assert not p.current_supported and p.target_supported


def test_bundles_mark_hops_and_missing_stops() -> None:
    p = planner.plan(current="2.10.3", target="2.15.2", bundles=[
        "/opt/harbor-bundles/harbor-offline-installer-v2.12.4.tgz",
        "harbor-offline-installer-v2.15.2.tgz"])
    assert p.hops[0].bundle == "/opt/harbor-bundles/harbor-offline-installer-v2.12.4.tgz"
    assert p.missing_bundles == ("2.14.4",)
    assert planner.bundle_versions(["harbor-offline-installer-v2.8.6-rc1.tgz", "2.9.5",
                                    "notes.txt"]) == {hv.parse_version("2.9.5"): "2.9.5"}


def test_to_dict_shape() -> None:
    d = planner.plan(current="2.0.6", target="2.15.2").to_dict()
    assert d["stops"] == TO_NEWEST["2.0"] and d["stops"][-1] == d["target"] == "2.15.2"
    assert d["current"] == "2.0.6" and d["data_layout"] == "9.6"
    assert [h["to"] for h in d["hops"]] == d["stops"]
    assert [h["from"] for h in d["hops"]] == ["2.0.6", *d["stops"][:-1]]
    hop = d["hops"][0]
    assert {"postgresql", "harbor_yml", "removed_components", "requirements", "disk",
            "command", "install_flags_stop_working", "data_layout"} <= set(hop)


LATEST = [hv.latest_patch(m) for m in hv.minors()]
# Also the releases where the data layout changes inside a minor (2.15.1 / 2.15.2).
SOURCES = [*LATEST, hv.release("2.15.1"), hv.release("2.3.0"), hv.release("2.9.0")]


@pytest.mark.parametrize(("a", "b"), [
    (a, b) for a, b in itertools.product(SOURCES, SOURCES) if a.version < b.version],
    ids=lambda r: str(r))
def test_every_hop_of_every_plan_is_safe(a: hv.Release, b: hv.Release) -> None:
    p = planner.plan(current=str(a), target=str(b))
    assert p.stops and p.stops[-1] == b
    prev, layout = a, a.data_layout
    for hop in p.hops:
        assert hop.source == prev and hop.layout_before == layout
        assert hv.minor_index(hop.target) - hv.minor_index(prev) <= 2
        assert prev.version >= hop.target.guide_oldest_from
        assert hop.target.db_outcome(layout) == hop.db_outcome
        assert hop.db_outcome in {"use", "convert"}
        assert planner.hop_allowed(prev, hop.target, layout)
        prev, layout = hop.target, hop.target.data_layout
    # intermediate stops are latest patches (no layout rule needs another one today)
    latest = {r.version for r in LATEST}
    assert all(s.version in latest for s in p.stops[:-1])
    # fewest hops: no minor line is visited twice and no hop could be merged with the next
    for x, y in itertools.pairwise([a, *p.stops]):
        assert x.version < y.version
    for x, z in zip([a, *p.stops], p.stops[1:], strict=False):
        assert not planner.hop_allowed(x, z, x.data_layout)

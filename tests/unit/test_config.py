"""The site file: every bad file in the corpus is refused with its field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ops.core.errors import ConfigError
from harbor_ops.site import load as config

CORPUS = sorted((Path(__file__).parent / "bad_sites").glob("*.yml"))


def _expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_site_is_refused_with_its_field(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load_site(path)
    expected = _expectation(path)
    assert any(expected in problem for problem in info.value.problems), (
        f"expected {expected!r} among:\n" + "\n".join(info.value.problems))
    assert info.value.exit_code == 2


def test_example_site_is_valid() -> None:
    site = config.load_site_text(config.example_text())
    assert site.release.version.public == "2.15.2"
    assert site.front is not None and site.front.tls is None
    assert site.hosts[0].connection == "local"


def test_all_problems_are_reported_at_once() -> None:
    text = (CORPUS[0].parent / "log-level.yml").read_text().replace(
        "hostname: harbor.test", "hostname: localhost")
    with pytest.raises(ConfigError) as info:
        config.load_site_text(text)
    fields = {p.split(":")[0] for p in info.value.problems}
    assert {"harbor.log.level", "harbor.hostname"} <= fields


def test_secrets_come_from_files_and_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "admin.txt").write_text("s3cret-admin\n")
    monkeypatch.setenv("DB_PW", "s3cret-db")
    text = ("harbor:\n  version: 2.9.5\n  hostname: harbor.test\n"
            "  harbor_admin_password_file: admin.txt\n  database:\n    password_env: DB_PW\n")
    (tmp_path / "site.yml").write_text(text)
    site = config.load_site(tmp_path / "site.yml")
    resolved = config.resolve_secrets(site)
    assert resolved["harbor_admin_password"] == "s3cret-admin"
    assert resolved["database"]["password"] == "s3cret-db"
    assert "harbor_admin_password_file" not in resolved
    assert "s3cret" not in repr(site)


def test_unset_secret_env_names_the_field_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    text = ("harbor:\n  version: 2.15.2\n  hostname: harbor.test\n"
            "  harbor_admin_password_env: NOPE_NOT_SET\n"
            "  database:\n    password_env: NOPE_NOT_SET\n")
    site = config.load_site_text(text)
    with pytest.raises(ConfigError) as info:
        config.resolve_secrets(site)
    assert "harbor.harbor_admin_password_env: environment variable NOPE_NOT_SET is not set" in str(
        info.value)


def test_inline_password_is_accepted_with_a_warning() -> None:
    text = ("harbor:\n  version: 2.15.2\n  hostname: 10.1.2.3\n"
            "  harbor_admin_password: inline-one\n  database:\n    password: inline-two\n")
    site = config.load_site_text(text)
    assert any("inline secret" in w for w in site.warnings)
    assert all("inline-one" not in w for w in site.warnings)


@pytest.mark.parametrize("version", ["2.0.6", "2.7.4", "2.8.0", "2.15.2"])
def test_version_override_revalidates(version: str) -> None:
    site = config.load_site_text(config.example_text(), version=version)
    assert str(site.release.version) == version


@pytest.mark.parametrize(("text", "expected"), [
    ("harbor:\n  version: [2.15.2\n", "not valid YAML: line 3, column 1: "),
    ("harbor:\n  hostname: 'a\n", "not valid YAML: line 3, column 1: "),
    ("harbor:\n\tversion: 2.15.2\n", "not valid YAML: line 2, column 1: found character "
     "'\\t' that cannot start any token"),
    ("harbor:\n  version: 2.15.2\n  hostname: a: b\n", "not valid YAML: line 3, column 14: "
     "mapping values are not allowed here"),
])
def test_a_file_that_is_not_yaml_says_so_with_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load_site_text(text, source="harborctl.yml")
    assert info.value.problems[0].startswith(expected), info.value.problems
    assert str(info.value).startswith("harborctl.yml: 1 problem(s)\n  - not valid YAML: line")


@pytest.mark.parametrize("value", ["Sup3r-Secret!pw", "9LIVES", "has space"])
def test_a_bad_env_value_is_never_echoed(value: str) -> None:
    text = config.example_text().replace("password_env: HARBOR_DB_PASSWORD",
                                         f"password_env: '{value}'")
    assert value in text
    with pytest.raises(ConfigError) as info:
        config.load_site_text(text)
    assert "harbor.database.password_env: must name an environment variable" in str(info.value)
    assert value not in str(info.value)

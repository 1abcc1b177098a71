"""harbor_host_files, run by Ansible on this machine (connection local): the role's one round
trip for its small host files writes only what differs, with the wanted mode, and a file its
validator refuses never replaces the installed one (nor leaves a temporary file behind)."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

from tests.unit.adhoc import run_role_module

OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run_module(tmp_path: Path, files: list[dict[str, Any]], check: bool = False,
               diff: bool = False) -> dict[str, Any]:
    return run_role_module("harbor_host_files", {"files": files}, tmp_path, check, diff)


def entry(path: Path, content: str, mode: str = "0644", **more: Any) -> dict[str, Any]:
    return {"path": str(path), "content": content, "mode": mode, "owner": OWNER,
            "group": GROUP, **more}


def test_writes_what_differs_and_leaves_the_rest(tmp_path: Path) -> None:
    same, edited = tmp_path / "same", tmp_path / "edited"
    same.write_text("kept\n")
    same.chmod(0o644)
    same_inode = same.stat().st_ino
    edited.write_text("by hand\n")
    edited.chmod(0o600)
    new = tmp_path / "new"
    files = [entry(same, "kept\n"), entry(edited, "wanted\n"), entry(new, "fresh\n", "0755")]

    checked = run_module(tmp_path, files, check=True)
    assert checked["changed"] and checked["written"] == [str(edited), str(new)]
    assert edited.read_text() == "by hand\n" and not new.exists()

    done = run_module(tmp_path, files)
    assert done["changed"] and done["written"] == [str(edited), str(new)], done
    assert edited.read_text() == "wanted\n" and edited.stat().st_mode & 0o777 == 0o644
    assert new.read_text() == "fresh\n" and new.stat().st_mode & 0o777 == 0o755
    assert same.stat().st_ino == same_inode  # not rewritten
    again = run_module(tmp_path, files)
    assert not again["changed"] and again["written"] == []


def test_a_file_its_validator_refuses_is_not_installed(tmp_path: Path) -> None:
    installed = tmp_path / "harbor.conf"
    installed.write_text("good\n")
    refuse = "/bin/sh -c 'grep -q good \"$0\" || { echo no good >&2; exit 1; }' %s"
    result = run_module(tmp_path, [entry(installed, "bad\n", validate=refuse)])
    assert result.get("failed"), result
    assert "failed to validate" in result["msg"] and "no good" in result["msg"]
    assert installed.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ansible-tmp", "harbor.conf"]
    passed = run_module(tmp_path, [entry(installed, "good too\n", validate=refuse)])
    assert passed["changed"] and installed.read_text() == "good too\n"


def test_folders_and_a_diff_of_each_change(tmp_path: Path) -> None:
    """Folders (missing parents too) in the same round trip, before their files; with --diff
    the content that changes, or the mode where only that changed, as Ansible's diff."""
    folder, edited, moded = tmp_path / "a" / "b", tmp_path / "edited", tmp_path / "moded"
    edited.write_text("by hand\n")
    edited.chmod(0o644)
    moded.write_text("same\n")
    moded.chmod(0o600)
    files = [{"path": str(folder), "state": "directory", "mode": "0750", "owner": OWNER,
              "group": GROUP},
             entry(folder / "inside", "new\n"), entry(edited, "wanted\n"),
             entry(moded, "same\n")]

    checked = run_module(tmp_path, files, check=True, diff=True)
    assert checked["written"] == [str(folder), str(folder / "inside"), str(edited), str(moded)]
    assert not folder.exists()
    by_path = {d["after_header"]: d for d in checked["diff"]}
    assert by_path[str(edited)]["before"] == "by hand\n"
    assert by_path[str(edited)]["after"] == "wanted\n"
    assert by_path[str(folder / "inside")]["before"] == ""
    assert "mode 0600" in by_path[str(moded)]["before"]
    assert "mode 0644" in by_path[str(moded)]["after"]
    assert "absent" in by_path[str(folder)]["before"]

    done = run_module(tmp_path, files)
    assert done["changed"] and not done.get("diff"), done
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o750
    assert (folder / "inside").read_text() == "new\n"
    assert moded.stat().st_mode & 0o777 == 0o644
    assert not run_module(tmp_path, files)["changed"]


def test_the_release_symlink_is_switched_atomically_and_never_over_a_folder(
        tmp_path: Path) -> None:
    (tmp_path / "harbor-1").mkdir()
    (tmp_path / "harbor-2").mkdir()
    link = tmp_path / "harbor"
    link.symlink_to("harbor-1")
    wanted = [{"path": str(link), "state": "link", "target": "harbor-2"}]

    checked = run_module(tmp_path, wanted, check=True, diff=True)
    assert checked["written"] == [str(link)] and str(link.readlink()) == "harbor-1"
    assert checked["diff"][0]["before"] == "-> harbor-1\n"
    assert checked["diff"][0]["after"] == "-> harbor-2\n"
    assert run_module(tmp_path, wanted)["written"] == [str(link)]
    assert str(link.readlink()) == "harbor-2"
    assert not run_module(tmp_path, wanted)["changed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ansible-tmp", "harbor", "harbor-1", "harbor-2"]  # no temporary link left

    link.unlink()
    link.mkdir()  # a release unpacked by hand where the link belongs: refused, left alone
    refused = run_module(tmp_path, wanted)
    assert refused.get("failed") and "not a symlink" in refused["msg"], refused
    assert link.is_dir() and not link.is_symlink()

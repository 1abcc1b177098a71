"""harbor_host_run, the controller half of the role's host modules: the host runs the module
with nothing of Ansible's module runtime (that runtime's import of module_utils.basic was
most of each run's CPU on the host), the arguments are checked and defaulted on the
controller against the module's ARGUMENT_SPEC before anything reaches the host, and what
Ansible gives any module still holds: check mode, the answer parsed past noise, a failure
with the module's message, pipelining off."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harbor_ops.hosts.playbook import playbook_dir
from tests.bed.fixtures import unavailable
from tests.unit.adhoc import run_role_module
from tests.unit.scriptload import load_script

common = load_script(playbook_dir() / "roles/harbor/module_utils/harbor_host_common.py",
                     "harbor_host_common_for_run")


def state_args(tmp_path: Path, **more: object) -> dict[str, object]:
    return {"bundle": str(tmp_path / "harbor.tgz"), "unpacked_marker": str(tmp_path / "m"),
            "install_stamp": str(tmp_path / "stamp"), "uid": os.getuid(),
            "active_link": str(tmp_path / "harbor"), **more}


def traced_python(tmp_path: Path, noise: str = "") -> tuple[str, Path]:
    """An interpreter that records every import of the run (and prints ``noise`` first, as
    a login banner or a profile script would)."""
    imports = tmp_path / "imports.log"
    wrapper = tmp_path / "python"
    wrapper.write_text("#!/bin/sh\n" + (f"echo '{noise}'\n" if noise else "")
                       + f'exec "{sys.executable}" -X importtime "$@" 2>>"{imports}"\n')
    wrapper.chmod(0o755)
    return str(wrapper), imports


def one_file(tmp_path: Path, **more: object) -> dict[str, object]:
    return {"files": [{"path": str(tmp_path / "file"), "content": "x\n", "mode": "0644",
                       **more}]}


def test_the_host_runs_the_module_without_ansibles_module_runtime(tmp_path: Path) -> None:
    python, imports = traced_python(tmp_path, noise="Welcome to the host")
    result = run_role_module("harbor_host_files", one_file(tmp_path), tmp_path,
                             interpreter=python)
    assert result["changed"] and result["written"] == [str(tmp_path / "file")], result
    assert (tmp_path / "file").read_text() == "x\n"
    log = imports.read_text()
    assert "harbor_host_common" in log  # the run was traced
    assert "ansible.module_utils.basic" not in log and "_ansiballz" not in log


def test_arguments_are_checked_on_the_controller_and_nothing_runs_on_the_host(
        tmp_path: Path) -> None:
    python, imports = traced_python(tmp_path)
    bad_type = run_role_module("harbor_host_state", state_args(tmp_path, uid="ten thousand"),
                               tmp_path, interpreter=python)
    assert bad_type["failed"] and "uid" in bad_type["msg"] and "int" in bad_type["msg"]
    missing = {k: v for k, v in state_args(tmp_path).items() if k != "install_stamp"}
    no_stamp = run_role_module("harbor_host_state", missing, tmp_path, interpreter=python)
    assert no_stamp["failed"] and "install_stamp" in no_stamp["msg"]
    unknown = run_role_module("harbor_host_files", {"filez": []}, tmp_path,
                              interpreter=python)
    assert unknown["failed"] and "Unsupported parameters" in unknown["msg"]
    assert "filez" in unknown["msg"] and "files" in unknown["msg"]
    assert not imports.exists()


def test_the_modules_defaults_are_filled_in_on_the_controller(tmp_path: Path) -> None:
    # harbor_host_files reads files and account without a fallback of its own.
    result = run_role_module("harbor_host_files", {"start": []}, tmp_path)
    assert result == {**result, "changed": False, "written": [], "account": [], "started": []}


def test_check_mode_reaches_the_module(tmp_path: Path) -> None:
    path = tmp_path / "file"
    files = [{"path": str(path), "content": "x\n", "mode": "0644"}]
    checked = run_role_module("harbor_host_files", {"files": files}, tmp_path, check=True)
    assert checked["changed"] and checked["written"] == [str(path)] and not path.exists()


def test_a_failure_on_the_host_comes_back_with_the_modules_message(tmp_path: Path) -> None:
    result = run_role_module("harbor_host_files", one_file(tmp_path, validate="/bin/false %s"),
                             tmp_path)
    assert result["failed"] and result["msg"] == f"{tmp_path / 'file'}: failed to validate: "
    assert result["path"] == str(tmp_path / "file")  # the module's fields come too
    assert not (tmp_path / "file").exists()


def test_with_pipelining_off_the_payload_goes_through_a_removed_temporary_file(
        tmp_path: Path) -> None:
    remote_tmp = tmp_path / "remote-tmp"
    result = run_role_module("harbor_host_files", one_file(tmp_path), tmp_path,
                             env={"ANSIBLE_PIPELINING": "false",
                                  "ANSIBLE_REMOTE_TMP": str(remote_tmp)})
    assert result["written"] == [str(tmp_path / "file")], result
    assert remote_tmp.is_dir() and not list(remote_tmp.iterdir())


def test_atomic_move_across_file_systems_leaves_no_partial_file(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        unavailable("no second file system (/dev/shm) to move across")
    src = Path(tempfile.mkdtemp(dir=other)) / "bundle"
    try:
        src.write_bytes(b"bundle\n" * 1000)
        try:
            os.rename(src, tmp_path / "probe")
        except OSError as exc:
            assert exc.errno == errno.EXDEV
        dest = tmp_path / "kept" / "harbor.tgz"
        dest.parent.mkdir()
        dest.write_bytes(b"the old bundle\n")
        common.HostModule.atomic_move(str(src), str(dest))
        assert dest.read_bytes() == b"bundle\n" * 1000 and not src.exists()
        assert sorted(p.name for p in dest.parent.iterdir()) == ["harbor.tgz"]
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)


def test_harbor_command_runs_an_argv_in_its_folder_and_reports_like_command(
        tmp_path: Path) -> None:
    """install.sh's task: the exit code and output come back; a non-zero one fails the task
    as with ansible.builtin.command (the role's task judges it with failed_when); a program
    that cannot start is rc 127, the reason on stderr; check mode runs nothing."""
    script = tmp_path / "install.sh"
    script.write_text("#!/bin/sh\necho \"in $(pwd)\"\necho 'prepare: bad hostname' >&2\n"
                      "touch ran\nexit 3\n")
    script.chmod(0o755)
    args = {"argv": ["./install.sh", "--with-trivy"], "chdir": str(tmp_path)}
    checked = run_role_module("harbor_command", args, tmp_path, check=True)
    assert checked.get("skipped") and not (tmp_path / "ran").exists()
    done = run_role_module("harbor_command", args, tmp_path)
    assert done["rc"] == 3 and done["changed"] and (tmp_path / "ran").exists()
    assert done["stdout"] == f"in {tmp_path}\n" and done["stderr"] == "prepare: bad hostname\n"
    assert done["failed"]  # Ansible's verdict on rc 3 without a failed_when, as for command
    missing = run_role_module("harbor_command", {**args, "argv": ["./no-such-script"]},
                              tmp_path)
    assert missing["failed"] and missing["rc"] == 127 and "no-such-script" in missing["stderr"]

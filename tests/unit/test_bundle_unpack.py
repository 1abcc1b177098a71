"""harbor_bundle on a real (local) host: the bundle is unpacked beside the release folder
while it is hashed, and renamed into place only when its SHA-256 is the controller's; a
wrong digest leaves nothing unpacked (no release folder, no partial one). A real
ansible-playbook on localhost with the role's action plugin, module and module_utils."""

from __future__ import annotations

import hashlib
import io
import tarfile
import textwrap
from pathlib import Path

from harbor_ops.hosts import playbook as runner
from harbor_ops.site.model import HostEntry

ROLE = runner.playbook_dir() / "roles" / "harbor"
HANG_GUARD = 600  # a bound for a hung run, not for speed

BOOK = textwrap.dedent("""\
    - name: Unpack a bundle
      hosts: all
      gather_facts: false
      tasks:
        - name: Copy the bundle to the host and unpack it
          harbor_bundle:
            src: "{{ src }}"
            dest: "{{ dest }}"
            sha256: "{{ sha256 }}"
            release_dir: "{{ release }}"
            marker: "{{ release }}/.unpacked"
    """)


def _bundle(path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("harbor/install.sh", "#!/bin/sh\n"),
                           ("harbor/harbor.yml.tmpl", "hostname: x\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(tmp_path: Path, sha256: str) -> tuple[str, Path]:
    src = tmp_path / "harbor-offline-installer.tgz"
    real = _bundle(src)
    release = tmp_path / "opt" / "harbor-2.15.2"
    book = tmp_path / "book.yml"
    book.write_text(BOOK)
    argv, env = runner.build_command(
        playbook=book, work_dir=tmp_path / "run", log_path=tmp_path / "ansible.log",
        extra_vars={"src": str(src), "dest": str(tmp_path / "kept" / src.name),
                    "sha256": sha256 or real, "release": str(release)},
        hosts=(HostEntry(name="localhost", connection="local"),))
    env |= {"ANSIBLE_ACTION_PLUGINS": str(ROLE / "action_plugins"),
            "ANSIBLE_LIBRARY": str(ROLE / "library"),
            "ANSIBLE_MODULE_UTILS": str(ROLE / "module_utils")}
    run = runner.run_playbook(argv, env, output_path=tmp_path / "out.log", timeout=HANG_GUARD)
    return "\n".join(run), release


def test_the_right_bundle_is_unpacked_into_place(tmp_path: Path) -> None:
    text, release = _run(tmp_path, "")
    assert "... changed" in text, text
    assert (release / "install.sh").read_text() == "#!/bin/sh\n"
    assert (release / ".unpacked").is_file()
    assert not Path(f"{release}.partial").exists()
    assert (release.stat().st_mode & 0o777) == 0o755


def test_a_wrong_digest_leaves_nothing_unpacked(tmp_path: Path) -> None:
    text, release = _run(tmp_path, "0" * 64)
    assert "... failed" in text and "nothing was unpacked" in text, text
    assert not release.exists()
    assert not Path(f"{release}.partial").exists()

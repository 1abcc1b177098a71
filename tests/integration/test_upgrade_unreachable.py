"""The host stays unreachable mid-hop: `upgrade apply` ends with exit 15 (outcome
``unreachable``: no rollback ran, not ``rollback_failed``), naming the state and the next
command; once the host answers again, the next `apply` finishes from the
journal.

Harbor 2.14.4 is installed once with rows and kept as a bed snapshot. `upgrade apply` to
2.15.2 runs as a user runs it; when the window's ``stop`` began (Harbor's downtime), the
host stops taking new SSH connections (a netfilter rule in the host's network namespace
drops every SYN to port 22, as a cut link does: each try waits for its ConnectTimeout) and
the SSH session running the window helper is cut. The reconnect window is shortened through
``HARBORCTL_RECONNECT_SECONDS`` (the default, 300 s, would only make the test longer).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.bed._run import wait_for
from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"
LABEL = "unreachable-2.14.4-with-rows"
UNREACHABLE = 15  # HostUnreachable's exit code: run again once the host answers
# Tries 1 s apart, none begun 15 s after the drop: with the bed's ConnectTimeout of 10 s,
# two tries that each time out.
RECONNECT = "1,15"
DROP_SSH_SYN = "INPUT -p tcp --dport 22 --syn -j DROP"

bundles, snapshot = up.one_hop_fixtures(OLD, NEW, LABEL)


def _iptables(host: Host, action: str) -> subprocess.CompletedProcess[str]:
    """This machine's iptables in ``host``'s network namespace (nothing of ours changes)."""
    return subprocess.run(["ip", "netns", "exec", host.netns, "iptables", action,
                           *DROP_SSH_SYN.split()], capture_output=True, text=True,
                          timeout=60, check=False)


def _cut_off(host: Host) -> str:
    """New SSH connections to ``host`` dropped, then the window helper's session cut; the
    pids of that session's sshd processes."""
    got = _iptables(host, "-I")
    assert got.returncode == 0, got.stderr
    return up.drop_window_session(host)


def test_a_host_that_stays_unreachable_ends_with_exit_15_and_the_next_apply_finishes(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path) -> None:
    """exit 15 after the bounded tries, outcome ``unreachable``; the output names the hop,
    what was lost, the journal and the next command, and says the release is not known; on
    the host the helper finished ``stop`` and began nothing more (Harbor down, the journal's
    last line ``stop end``). Once SSH answers again, the same command continues at ``snapshot`` and
    ends on 2.15.2 with every row (exit 0)."""
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, "--health-retries", "12")
    env = {**os.environ, "HARBORCTL_RECONNECT_SECONDS": RECONNECT}
    err = site_dir / "unreachable.err"
    try:
        with open(err, "wb") as out:
            proc = subprocess.Popen([*argv, "-o", "json"], stdout=subprocess.PIPE, stderr=out,
                                    env=env)
            try:
                cut = up.at_step(host, "stop", proc, _cut_off)
                stdout, _ = proc.communicate(timeout=900)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = err.read_text()
        assert cut, text[-3000:]
        assert proc.returncode == UNREACHABLE, text[-3000:]
        assert "h1: not reachable yet (try 1 of at most 30" in text, text[-3000:]
        assert "reachable again" not in text
        result = json.loads(stdout)
        assert result["exit_code"] == UNREACHABLE
        (out_host,) = result["hosts"]
        assert (out_host["outcome"], out_host["on_release"]) == ("unreachable", None)
        message = out_host["message"]
        for words in (f"hop 1 ({OLD} -> {NEW}): the connection to h1 dropped",
                      "no answer in 2 tries", f"may be down on {OLD} or {NEW}",
                      up.JOURNAL, "once the host answers over SSH, run "
                      "`harborctl upgrade apply` again"):
            assert words in message, message
        (lost,) = out_host["reconnects"]
        assert lost["hop"] == 1 and lost["seconds"] >= 15, lost
        # On the host: the helper finished the step in flight and began nothing more.
        wait_for(lambda: host.exec("pgrep -f '[u]pgrade-window'", check=False).returncode != 0,
                 what="the window helper to end", timeout=300, interval=0.5)
        events = [(e["step"], e["event"]) for e in up.journal(host)]
        assert events[-1] == ("stop", "end") and ("snapshot", "begin") not in events, events
        assert "harbor-core" not in host.exec("docker ps --format '{{.Names}}'").stdout
    finally:
        _iptables(host, "-D")  # the host answers again (a no-op when it was never cut)
    with open(err, "wb") as out:
        again = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=out, env=env,
                               timeout=1800, check=False).returncode
    text = err.read_text()
    assert again == 0, text[-3000:]
    assert "stopped at snapshot before the data could change: resume" in text, text[-3000:]
    up.healthy_with_every_row(host, NEW, counts, snapshot_dropped=True)

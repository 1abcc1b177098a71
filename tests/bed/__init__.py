"""Test bed for harborctl: real Docker engines and real test hosts, built by the tests.

Modules:

* :mod:`tests.bed.dockerd`  -- a private Docker engine on the controller (``DockerEngine``).
* :mod:`tests.bed.golden`   -- the cached Debian root filesystem every test host boots from.
* :mod:`tests.bed.hosts`    -- test hosts: network namespace + own rootfs + sshd (+ dockerd),
  an ``ssh_config`` and an Ansible inventory (``TestBed``).
* :mod:`tests.bed.fixtures` -- pytest fixtures (``docker_engine``, ``testbed``, ``fresh_host``).
* ``python -m tests.bed up|down|status`` -- the same bed for humans.

Everything here needs root, and touches only what it created itself: bridge ``hctl0``,
network namespaces ``hctl-*``, addresses in 10.200.0.0/16, and mounts under its own directories.
"""

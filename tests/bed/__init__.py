"""Test bed for harborctl: real Docker engines and real test hosts, built by the tests.

Modules:

* :mod:`tests.bed.dockerd`     -- a private Docker engine on the controller (``DockerEngine``).
* :mod:`tests.bed.debootstrap` -- the one builder of cached Debian roots.
* :mod:`tests.bed.golden`      -- the cached Debian root filesystem every test host boots from.
* :mod:`tests.bed.hosts`       -- the facade: ``TestBed`` (up, reset, snapshot, restore, down)
  and ``Host``; built from
  :mod:`tests.bed.network` (bridge, network namespaces), :mod:`tests.bed.hostfs` (overlay
  root, Docker data, snapshots), :mod:`tests.bed.hostinit` (boot with pivot_root, halt) and
  :mod:`tests.bed.inventory` (ssh_config, known_hosts, Ansible inventories).
* :mod:`tests.bed.fixtures`    -- pytest fixtures (``docker_engine``, ``testbed``, ``fresh_host``).
* :mod:`tests.bed.bundle`      -- the Harbor-shaped offline installer (the one test double).
* ``python -m tests.bed up|down|status`` -- the same bed for humans (``down --dir DIR``: one bed).

Everything here needs root, and touches only what it created itself: bridges ``hctl<n>``,
network namespaces ``hctl<n>-*``, addresses in 10.200.0.0/16, and mounts under its own
directories.
"""

"""Harbor backups: create, list, verify (restore drill), restore, prune, off-host copy.

Entry points (keyword arguments only, no site file needed):
:func:`engine.create_backup`, :func:`catalog.list_backups`, :func:`restore.verify_backup`,
:func:`restore.restore_backup`, :func:`catalog.prune_backups`; :mod:`settings` adapts a
site file to them. The job lock in :mod:`lock` is shared with install and upgrade.
"""

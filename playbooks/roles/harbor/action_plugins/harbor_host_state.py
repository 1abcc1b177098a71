"""The controller half of harbor_host_state: harbor_host_run validates its arguments and runs the
module on the host without Ansible's module runtime (see harbor_host_run)."""

from __future__ import annotations

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.action.harbor_host_run import (
        ActionModule,
    )
except ImportError:  # the role from playbooks/ (the role's action_plugins/)
    from ansible.plugins.loader import action_loader

    ActionModule = action_loader.get("harbor_host_run", class_only=True)

__all__ = ["ActionModule"]

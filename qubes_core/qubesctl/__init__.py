"""``qubesctl``: Salt for a whole installation, dom0 first, then each VM from a management DispVM.

dom0's states run with ``salt-call --local`` on the installation's Salt tree
(:mod:`qubes_core.qubesctl.dom0`). Each targeted VM is configured from a fresh
DispVM of its ``management_dispvm`` that receives only the Salt tree and that
VM's own rendered pillar, and applies the states with salt-ssh over qrexec
(:mod:`qubes_core.qubesctl.dispvm`). The exit status is non-zero whenever a
state failed, did not render or matched nothing, in dom0 or in any target
(:mod:`qubes_core.qubesctl.report`).
"""

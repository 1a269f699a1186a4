"""The in-VM side of the sandbox runtime: init, qrexec agent, QubesDB and qrexec tools.

Invariant: this package imports nothing of ``qubes_core`` outside itself and only
the standard library, with relative imports, because it is copied into templates
(as the top-level package ``qubes_agent``) and runs there on the template's own
Python (3.11 on bookworm, 3.13 on trixie). qubesd imports :mod:`.wire` from here
so that both ends speak one framing.
"""

# Where the VM sees its channel to qubesd (a directory bind-mounted from the host).
CHANNEL_DIR = "/run/qubes-sandbox"
QUBESD_SOCKET = CHANNEL_DIR + "/qubesd.sock"
AGENT_SOCKET = CHANNEL_DIR + "/agent.sock"
# Where the template builder installs this package inside the VM.
INSTALL_DIR = "/usr/lib/qubes-sandbox"

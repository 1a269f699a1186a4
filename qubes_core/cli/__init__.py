"""Command-line tools: thin fronts on ``qubes_core.client``, one module per tool."""

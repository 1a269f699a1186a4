"""Firewall of VMs: rules, per-VM firewall.xml, expiry, export to the netvm.

- :mod:`.rules`: one rule, its validation and text forms;
- :mod:`.xmlfile`: firewall.xml, read and written atomically;
- :mod:`.vmfirewall`: a VM's rules in force (``vm.firewall``);
- :mod:`.expiry`: qubesd's schedule that removes rules when they expire;
- :mod:`.export`: the rules in the netvm's QubesDB;
- :mod:`.clock`: the (injectable) clock that decides expiry.
"""

from qubes_core.firewall.clock import ManualClock, SystemClock, clock_of, set_clock
from qubes_core.firewall.rules import POLICY, Rule, RuleError, default_rules, parse_api_rules
from qubes_core.firewall.vmfirewall import MAX_RULES, Firewall, firewall_of
from qubes_core.firewall.xmlfile import FirewallFileError

__all__ = [
    "MAX_RULES", "POLICY", "Firewall", "FirewallFileError", "ManualClock", "Rule", "RuleError",
    "SystemClock", "clock_of", "default_rules", "firewall_of", "parse_api_rules", "set_clock",
]

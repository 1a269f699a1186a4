"""Per-VM ``firewall.xml`` (format version 2 of Qubes R4), read and written atomically.

::

    <firewall version="2">
      <rules>
        <rule>
          <properties>
            <property name="action">accept</property>
            <property name="dsthost">10.0.0.0/8</property>
          </properties>
        </rule>
      </rules>
    </firewall>
"""

from __future__ import annotations

from pathlib import Path

import lxml.etree

from qubes_core import exc, fsutil
from qubes_core.firewall.rules import FIELDS, Rule, RuleError

FILE_NAME = "firewall.xml"
VERSION = "2"


class FirewallFileError(exc.QubesException):
    """firewall.xml cannot be read or holds a rule that is not valid."""


def serialize(rules: list[Rule]) -> bytes:
    """The firewall.xml bytes for ``rules`` (format version 2, as Qubes R4 reads it)."""
    root = lxml.etree.Element("firewall", version=VERSION)
    rules_element = lxml.etree.SubElement(root, "rules")
    for rule in rules:
        properties = lxml.etree.SubElement(lxml.etree.SubElement(rules_element, "rule"),
                                           "properties")
        for name in FIELDS:
            text = rule.field_text(name)
            if text is not None:
                lxml.etree.SubElement(properties, "property", name=name).text = text
    return lxml.etree.tostring(root, encoding="UTF-8", xml_declaration=True,
                               pretty_print=True)


def parse(data: bytes, where: str = FILE_NAME) -> list[Rule]:
    """Every rule of a firewall.xml, expired ones included; errors name the rule."""
    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = lxml.etree.fromstring(data, parser)
    except lxml.etree.XMLSyntaxError as err:
        raise FirewallFileError(f"{where}: not well-formed XML: {err}") from None
    if root.tag != "firewall" or root.get("version") != VERSION:
        raise FirewallFileError(
            f"{where}: not a version {VERSION} firewall file (root <{root.tag}> "
            f"version={root.get('version')!r})"
        )
    rules = []
    for number, element in enumerate(root.findall("rules/rule"), start=1):
        fields: dict[str, str] = {}
        for prop in element.findall("properties/property"):
            name = prop.get("name") or ""
            if name in fields:
                raise FirewallFileError(f"{where}: rule {number}: {name}: given more than once")
            fields[name] = prop.text or ""
        try:
            rules.append(Rule.from_fields(fields))
        except RuleError as err:
            raise FirewallFileError(f"{where}: {err.located(f'rule {number}')}") from None
    return rules


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves the old or the new file, never a mix."""
    fsutil.write_atomic(path, data, mode=0o664)

"""Methods VMs call: features requests, update notifications, the date."""

from __future__ import annotations

import datetime

import pytest

from qubes_core import exc


async def test_features_request_from_template(api):
    template = api.app.domains["debian-12"]
    template.qdb.write("/features-request/qrexec", "1")
    template.qdb.write("/features-request/os-distribution", "debian")
    template.qdb.write("/features-request/os-version", "12")
    assert await api.call("qubes.FeaturesRequest", src="debian-12", kind="misc") == ""
    assert template.features["qrexec"] == "1"
    assert template.features["os-distribution"] == "debian"
    from qubes_core.app import Qubes

    reloaded = Qubes(api.app.store.path, lock=False)
    assert reloaded.domains["debian-12"].features["os-version"] == "12"
    reloaded.close()


async def test_features_request_cannot_override_user_choice(api):
    template = api.app.domains["debian-12"]
    template.features["gui"] = ""
    template.qdb.write("/features-request/gui", "1")
    await api.call("qubes.FeaturesRequest", src="debian-12", kind="misc")
    assert template.features["gui"] == ""


async def test_features_request_invalid_changes_nothing(api):
    template = api.app.domains["debian-12"]
    template.qdb.write("/features-request/os-version", "12; rm -rf /")
    before = api.app.store.path.read_bytes()
    with pytest.raises(exc.QubesValueError, match="os-version"):
        await api.call("qubes.FeaturesRequest", src="debian-12", kind="misc")
    assert "os-version" not in template.features
    assert api.app.store.path.read_bytes() == before


async def test_features_request_from_appvm_ignored(api):
    work = api.app.domains["work"]
    work.qdb.write("/features-request/qrexec", "1")
    await api.call("qubes.FeaturesRequest", src="work", kind="misc")
    assert "qrexec" not in work.features


async def test_notify_tools(api):
    template = api.app.domains["debian-12"]
    template.qdb.write("/qubes-tools/qrexec", "1")
    template.qdb.write("/qubes-tools/gui", "1")
    await api.call("qubes.NotifyTools", src="debian-12", kind="misc")
    assert template.features["qrexec"] == "1" and template.features["gui"] == "1"


async def test_notify_updates(api):
    await api.call("qubes.NotifyUpdates", payload="3\n", src="debian-12", kind="misc")
    assert api.app.domains["debian-12"].features["updates-available"] == "1"
    await api.call("qubes.NotifyUpdates", payload="0\n", src="debian-12", kind="misc")
    assert api.app.domains["debian-12"].features["updates-available"] == ""
    # A template-based VM hints at its (halted) template's updates.
    await api.call("qubes.NotifyUpdates", payload="2", src="work", kind="misc")
    assert api.app.domains["debian-12"].features["updates-available"] == "1"
    assert "updates-available" not in api.app.domains["work"].features
    with pytest.raises(exc.ProtocolError, match="decimal"):
        await api.call("qubes.NotifyUpdates", payload="many", src="work", kind="misc")


async def test_get_date(api):
    text = (await api.call("qubes.GetDate", src="work", kind="misc")).strip()
    when = datetime.datetime.fromisoformat(text)
    assert when.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60

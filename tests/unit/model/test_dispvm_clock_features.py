"""DispVMs, clockvm, features and tags, and the two built-in extensions."""

import pytest

from qubes_core import exc
from qubes_core.devices import DeviceAssignment
from qubes_core.ext.core_features import parse_features_request
from qubes_core.vm.dispvm import DispVM


@pytest.fixture
def dvm_app(basic_app):
    dvm = basic_app.add_new_vm("AppVM", name="dvm", label="red", template_for_dispvms=True,
                               memory=555)
    dvm.features["service.cups"] = True
    dvm.tags.add("disposable-source")
    dvm.devices["pci"].assign(DeviceAssignment("dom0", "00_1f.2"))
    return basic_app


def test_dispvm_inherits_properties_features_tags_not_devices(dvm_app):
    disp = DispVM.from_appvm(dvm_app.domains["dvm"], auto_cleanup=True)
    assert disp.name == f"disp{disp.dispid}"
    assert disp.memory == 555
    assert disp.features["service.cups"] == "1"
    assert "disposable-source" in disp.tags
    assert not disp.devices["pci"]
    assert disp.auto_cleanup is True
    assert disp.ip.startswith("10.138.")
    assert disp.volume_config["root"]["source"] == "vm-templates/debian-12/root"
    assert disp.volume_config["private"]["source"] == "appvms/dvm/private"


def test_dispvm_only_from_template_for_dispvms(basic_app):
    with pytest.raises(exc.QubesPropertyValueError, match="template_for_dispvms"):
        DispVM.from_appvm(basic_app.domains["work"])
    assert not [vm for vm in basic_app.domains if isinstance(vm, DispVM)]


def test_template_for_dispvms_cannot_be_cleared_while_dispvms_exist(dvm_app):
    dvm = dvm_app.domains["dvm"]
    DispVM.from_appvm(dvm)
    with pytest.raises(exc.QubesValueError, match="disp"):
        dvm.template_for_dispvms = False
    with pytest.raises(exc.QubesValueError, match="disp"):  # nor back to its default
        dvm.property_reset("template_for_dispvms")
    assert dvm.template_for_dispvms is True


def test_dispids_are_unique(dvm_app):
    dvm = dvm_app.domains["dvm"]
    ids = {DispVM.from_appvm(dvm).dispid for _ in range(30)}
    assert len(ids) == 30


def test_clockvm_moves_clocksync(basic_app):
    net, firewall = basic_app.domains["sys-net"], basic_app.domains["sys-firewall"]
    basic_app.clockvm = net
    assert net.features["service.clocksync"] == "1"
    basic_app.clockvm = firewall
    assert "service.clocksync" not in net.features
    assert firewall.features["service.clocksync"] == "1"
    del basic_app.clockvm
    assert "service.clocksync" not in firewall.features


def test_features_values_and_chains(basic_app):
    work, template = basic_app.domains["work"], basic_app.domains["debian-12"]
    work.features["a"] = True
    work.features["b"] = False
    assert work.features["a"] == "1" and work.features["b"] == ""
    template.features["gui"] = "1"
    assert work.features.check_with_template("gui") == "1"
    assert work.features.check_with_template("nope", "dflt") == "dflt"
    basic_app.domains["sys-net"].features["net-thing"] = "x"
    assert work.features.check_with_netvm("net-thing") == "x"
    with pytest.raises(exc.QubesFeatureNotFoundError):
        work.features.check_with_netvm("absent")
    with pytest.raises(exc.QubesValueError):
        work.features["bad name"] = "1"
    with pytest.raises(exc.QubesValueError):
        work.features["x"] = 1.5
    with pytest.raises(exc.QubesFeatureNotFoundError):
        del work.features["never-set"]


def test_feature_and_tag_events(basic_app):
    work = basic_app.domains["work"]
    seen = []
    for event in ("domain-feature-set:k", "domain-feature-delete:k", "domain-tag-add:t",
                  "domain-tag-delete:t"):
        work.add_handler(event, lambda vm, event, **kw: seen.append(event))
    work.features["k"] = "v"
    del work.features["k"]
    work.tags.add("t")
    work.tags.remove("t")
    assert seen == ["domain-feature-set:k", "domain-feature-delete:k", "domain-tag-add:t",
                    "domain-tag-delete:t"]
    with pytest.raises(exc.QubesTagNotFoundError):
        work.tags.remove("t")
    with pytest.raises(exc.QubesValueError):
        work.tags.add("bad tag")


def test_services_exported_live_to_qubesdb(basic_app):
    work = basic_app.domains["work"]
    work.features["service.cups"] = True
    work.features["service.crond"] = False
    assert work.qdb.read("/qubes-service/cups") == b"1"
    assert work.qdb.read("/qubes-service/crond") == b"0"
    del work.features["service.cups"]
    assert work.qdb.read("/qubes-service/cups") is None
    work.qdb.rm("/qubes-service/")
    work.fire_event("domain-qdb-create")
    assert work.qdb.list("/qubes-service/") == ["/qubes-service/crond"]


@pytest.mark.parametrize("name", ["a/b", "x" * 49, "sp ace"])
def test_invalid_service_names_refused(basic_app, name):
    work = basic_app.domains["work"]
    with pytest.raises(exc.QubesValueError, match="invalid (feature|service) name"):
        work.features["service." + name] = True
    assert not work.qdb.list()


def test_features_request_from_template(basic_app):
    template = basic_app.domains["debian-12"]
    template.features["gui"] = ""  # the user turned GUI off
    postinstall = []
    template.add_handler("template-postinstall", lambda vm, event, **kw: postinstall.append(vm))
    template.fire_event("features-request", untrusted_features={
        "qrexec": "1", "gui": "1", "os-distribution": "debian", "os-version": "12",
        "os-eol": "2028-06-30", "qubes-agent-version": "4.2", "supported-service.cups": "1",
    })
    assert template.features["qrexec"] == "1"
    assert template.features["gui"] == ""  # not overridden
    assert template.features["os-version"] == "12"
    assert template.features["supported-service.cups"] == "1"
    assert postinstall == [template]
    template.fire_event("features-request", untrusted_features={"qrexec": "1"})
    assert postinstall == [template]  # only the first appearance


def test_features_request_from_template_based_vm_ignored(basic_app):
    work = basic_app.domains["work"]
    work.fire_event("features-request", untrusted_features={"qrexec": "1"})
    assert "qrexec" not in work.features


@pytest.mark.parametrize("untrusted", [
    {"qrexec": "yes"}, {"os-eol": "tomorrow"}, {"bad key!": "1"}, {"os-version": "12; rm"},
    {"x": "\x00"}, {b"\xff": b"1"}, {"y": "a" * 200},
    {f"k{i}": "1" for i in range(300)},
])
def test_features_request_bad_input_refused_whole(basic_app, untrusted):
    template = basic_app.domains["debian-12"]
    before = dict(template.features)
    with pytest.raises(exc.QubesValueError, match="features request"):
        template.fire_event("features-request", untrusted_features={"gui": "1", **untrusted})
    assert dict(template.features) == before


def test_parse_features_request_accepts_bytes():
    assert parse_features_request({b"qrexec": b"1"}) == {"qrexec": "1"}

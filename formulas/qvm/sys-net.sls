{#- sys-net: the network VM, given the host's network controllers (grain pci_net_devs). -#}
{%- from "qvm/map.jinja" import qvm with context %}
{%- set vm = qvm['sys-net'] %}
{{ vm.name }}:
  qvm.vm:
    - present:
      - template: {{ vm.template }}
      - label: {{ vm.label }}
    - prefs:
      - netvm: ''
      - provides-network: true
      - memory: {{ vm.memory }}
      - autostart: {{ vm.autostart }}
      - virt-mode: {{ vm['virt-mode'] }}
      - pcidevs: {{ vm.pcidevs | json }}
      - pci-strictreset: {{ vm['pci-strictreset'] }}
    - actions: [present, prefs]
{%- if vm.clockvm %}

{{ vm.name }}-clockvm:
  qvm.global_prefs:
    - clockvm: {{ vm.name }}
    - require:
      - qvm: {{ vm.name }}
{%- endif %}

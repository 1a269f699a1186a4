{#- sys-firewall: the firewall between the AppVMs and sys-net; the default netvm. -#}
{%- from "qvm/map.jinja" import qvm with context %}
{%- set vm = qvm['sys-firewall'] %}
include:
  - qvm.sys-net

{{ vm.name }}:
  qvm.vm:
    - present:
      - template: {{ vm.template }}
      - label: {{ vm.label }}
    - prefs:
      - netvm: {{ qvm['sys-net'].name }}
      - provides-network: true
      - memory: {{ vm.memory }}
      - autostart: {{ vm.autostart }}
    - actions: [present, prefs]
    - require:
      - qvm: {{ qvm['sys-net'].name }}
{%- if vm['default-netvm'] %}

{{ vm.name }}-default-netvm:
  qvm.global_prefs:
    - default_netvm: {{ vm.name }}
    - require:
      - qvm: {{ vm.name }}
{%- endif %}

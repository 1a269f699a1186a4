{#- The untrusted AppVM (pillar qvm:untrusted overrides name, label, template, netvm). -#}
{%- from "qvm/map.jinja" import qvm with context %}
{%- set vm = qvm['untrusted'] %}
{%- if vm.netvm %}
include:
  - qvm.sys-firewall
{%- endif %}

{{ vm.name }}:
  qvm.vm:
    - present:
      - template: {{ vm.template }}
      - label: {{ vm.label }}
    - prefs:
      - netvm: '{{ vm.netvm }}'
    - actions: [present, prefs]
{%- if vm.netvm %}
    - require:
      - qvm: {{ qvm['sys-firewall'].name }}
{%- endif %}

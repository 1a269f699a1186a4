{#- default-mgmt-dvm: the AppVM management DispVMs (qubesctl) are made from; no network,
    hidden from menus (feature internal), and the system's management_dispvm. -#}
{%- from "qvm/map.jinja" import qvm with context %}
{%- set vm = qvm['default-mgmt-dvm'] %}
{{ vm.name }}:
  qvm.vm:
    - present:
      - template: {{ vm.template }}
      - label: {{ vm.label }}
    - prefs:
      - template-for-dispvms: true
      - netvm: ''
      - memory: {{ vm.memory }}
    - features:
      - set:
        - internal: '1'
    - actions: [present, prefs, features]
{%- if vm['management-dispvm'] %}

{{ vm.name }}-management-dispvm:
  qvm.global_prefs:
    - management_dispvm: {{ vm.name }}
    - require:
      - qvm: {{ vm.name }}
{%- endif %}

{#- default-dvm: the AppVM DispVMs are made from, and the system's default_dispvm. -#}
{%- from "qvm/map.jinja" import qvm with context %}
{%- set vm = qvm['default-dispvm'] %}
{{ vm.name }}:
  qvm.vm:
    - present:
      - template: {{ vm.template }}
      - label: {{ vm.label }}
    - prefs:
      - template-for-dispvms: true
    - features:
      - enable:
        - appmenus-dispvm
    - actions: [present, prefs, features]
{%- if vm['default-dispvm'] %}

{{ vm.name }}-default-dispvm:
  qvm.global_prefs:
    - default_dispvm: {{ vm.name }}
    - require:
      - qvm: {{ vm.name }}
{%- endif %}

{#- Configuration applied inside each TemplateVM (by qubesctl, through a management
    DispVM): packages, a user, and a file in /rw/config. Pillar: qvm:template-config. -#}
{%- set cfg = salt['pillar.get']('qvm:template-config', {}) %}
{%- set user = cfg.get('user', {'name': 'user', 'shell': '/bin/bash'}) %}
{%- set rw_file = cfg.get('rw-config-file', {
      'path': '/rw/config/rc.local.d/50-qubes-core.rc',
      'contents': '# managed by the qvm.template-config formula\n'}) %}
template-config-packages:
  pkg.installed:
    - pkgs: {{ cfg.get('packages', ['vim-tiny']) | json }}

template-config-user:
  user.present:
    - name: {{ user.name }}
    - shell: {{ user.get('shell', '/bin/bash') }}
    - createhome: true

template-config-rw-config:
  file.managed:
    - name: {{ rw_file.path }}
    - contents: {{ rw_file.contents | json }}
    - makedirs: true
    - mode: '0755'

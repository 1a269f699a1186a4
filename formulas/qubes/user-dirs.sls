{#- The user area: srv/user_salt (saltenv user) with a top.sls, srv/user_pillar,
    srv/user_formulas. Apply with `state.sls qubes.user-dirs`. -#}
{%- set tree = salt['top.tree']() %}
{%- for key in ('user_salt', 'user_pillar', 'user_formulas') %}
{{ tree[key] }}:
  file.directory:
    - makedirs: true
    - mode: '0755'
{%- endfor %}
{%- for key in ('user_salt', 'user_pillar') %}

{{ tree[key] }}/top.sls:
  file.managed:
    - replace: false
    - contents: |
        user:
          dom0: []
    - require:
      - file: {{ tree[key] }}
{%- endfor %}

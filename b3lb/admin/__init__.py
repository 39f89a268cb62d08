"""The operator's side of b3lb: the `b3lb` CLI and the operations behind it.

common.py (errors, look-ups), fleet.py (clusters, groups, nodes), tenants.py (tenants, secrets,
parameter rules, assets, record profiles), meetings.py, recordings.py, profiles.py (render profile
links); cli.py parses the command line, output.py prints tables and JSON.
"""

"""How the `b3lb` command prints its results: aligned tables, or JSON with --json."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def show_rows(rows: Any, as_json: bool) -> None:
    print_json(rows) if as_json else print_table(rows)


def show_tenant(tenant: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(tenant)
        return
    fields = {k: v for k, v in tenant.items() if k != "secrets"}
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {_cell(value)}")
    for secret in tenant["secrets"]:
        print()
        print(f"secret {secret['label']} (sub-id {secret['sub_id']})")
        for key in ("host_endpoint", "path_endpoint", "secret", "secret2"):
            print(f"  {key.ljust(13)}  {secret[key] or '-'}")
    if not tenant["secrets"]:
        print(f"\nno secrets yet: create one with 'b3lb secret add {tenant['slug']} --sub-id 0'")


def show_new_secret(rows: Any, as_json: bool) -> None:
    print_json(rows) if as_json else print(rows[0]["secret"])

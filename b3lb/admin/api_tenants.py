"""Admin API: tenants, their secrets, parameter rules and assets.

A tenant-scoped token sees and changes its own tenant only; another tenant's resources answer 404
exactly like missing ones. Creating and removing tenants, moving one to another cluster group and
setting attendee and meeting limits (of the tenant or of a secret) are fleet decisions: 403 for
tenant-scoped tokens, naming the field. Secret values and the stats token are shown to tokens with
write scope only (read tokens, e.g. a dashboard's, get null): write scope can rotate them anyway.
"""

from __future__ import annotations

from typing import Any

from b3lb import validation as V
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.api_core import Call, Endpoint, Field, Operation, parse_field
from b3lb.admin.common import NotFound, Row
from b3lb.admin.tenants import ParameterRule, SecretSettings, TenantSettings
from b3lb.models import secret_label

HIDDEN = ("secret", "secret2", "stats_token")
ASSET_KIND = V.Choice(admin_tenant.ASSET_KINDS, upper=False)


def _visible(call: Call, row: Row) -> Row:
    """A row with secret values hidden from tokens that may not change them."""
    if call.principal.allows("write"):
        return row
    return {k: (None if k in HIDDEN else v) for k, v in row.items()}


# Tenants -------------------------------------------------------------------------------------

TENANT_SETTINGS = (
    Field("cluster_group", "string", "cluster group whose clusters host the tenant's meetings", fleet=True),
    Field("attendee_limit", "integer", "max attendees, 0..10000000 (0: unlimited)", fleet=True),
    Field("meeting_limit", "integer", "max meetings, 0..10000000 (0: unlimited)", fleet=True),
    Field("record_by_default", "boolean", "record meetings by default"),
    Field("hold_time_days", "integer", "days recordings are kept, 0..36500 (default 14)"),
)


def _tenant_settings(body: dict[str, Any]) -> TenantSettings:
    return TenantSettings(**{f.name: body.get(f.name) for f in TENANT_SETTINGS})


async def tenant_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        rows = await admin_tenant.tenant_list(conn)
    return [row for row in rows if call.principal.sees_tenant(row["slug"])]


async def tenant_add(call: Call) -> list[Row]:
    slug = parse_field("slug", V.parse_tenant_slug, call.body["slug"])
    async with call.write("tenant.add", slug, slug) as conn:
        return await admin_tenant.tenant_add(conn, slug, _tenant_settings(call.body))


async def tenant_show(call: Call) -> Row:
    slug = call.tenant(call.path["slug"], "slug")
    server = call.runtime.config.server
    async with call.read() as conn:
        shown = await admin_tenant.tenant_show(conn, slug, server.public_scheme, server.api_base_domain)
    return _visible(call, {**shown, "secrets": [_visible(call, s) for s in shown["secrets"]]})


async def tenant_set(call: Call) -> list[Row]:
    slug = call.tenant(call.path["slug"], "slug")
    async with call.write("tenant.set", slug, slug) as conn:
        return await admin_tenant.tenant_set(conn, slug, _tenant_settings(call.body))


async def tenant_remove(call: Call) -> list[Row]:
    slug = call.tenant(call.path["slug"], "slug")
    force = call.query_flag("force")
    async with call.write("tenant.remove", slug, slug, {"force": force}) as conn:
        return await admin_tenant.tenant_remove(conn, slug, force)


# Secrets -------------------------------------------------------------------------------------

DESCRIPTION = Field("description", "string", "what the secret is for, up to 200 characters without control "
                    "characters ('' clears it)")
SECRET_SETTINGS = (
    Field("attendee_limit", ("integer", "null"), "max attendees, 0..10000000 (0: unlimited; null: the tenant's)",
          fleet=True),
    Field("meeting_limit", ("integer", "null"), "max meetings, 0..10000000 (0: unlimited; null: the tenant's)",
          fleet=True),
    Field("record_by_default", ("boolean", "null"), "record meetings by default (null: the tenant's choice)"),
    Field("hold_time_days", "integer", "days recordings are kept, 0..36500; with the tenant's: the larger if "
          "either is 0, else the smaller"),
    DESCRIPTION,
)
NEW_SECRET = (
    Field("tenant", "string", "tenant slug", required=True),
    Field("sub_id", ("integer", "string"), "0..999, or a range 'N-M' (all or nothing); default 0"),
    Field("attendee_limit", "integer", "override the tenant's limit", fleet=True),
    Field("meeting_limit", "integer", "override the tenant's limit", fleet=True),
    Field("record_by_default", "boolean", "override the tenant's choice"),
    Field("hold_time_days", "integer", "days recordings are kept (default 14)"),
    DESCRIPTION,
)


def _sub_ids(value: Any) -> range:
    if value is None:
        return range(1)
    if isinstance(value, int):
        return range(V.check_value("sub_id", V.SUB_ID, value), value + 1)
    sub_ids: range = parse_field("sub_id", V.parse_sub_ids, value)
    return sub_ids


async def secret_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        rows = await admin_tenant.secret_list(conn, call.listed_tenant())
    return [_visible(call, row) for row in rows]


async def secret_add(call: Call) -> list[Row]:
    body = call.body
    slug = call.tenant(body["tenant"])
    sub_ids = _sub_ids(body.get("sub_id"))
    settings = SecretSettings(**{name: body.get(name) for name in admin_tenant.SECRET_FIELDS})
    first, last = secret_label(slug, sub_ids.start), secret_label(slug, sub_ids.stop - 1)
    async with call.write("secret.add", first if first == last else f"{first}..{last}", slug) as conn:
        return await admin_tenant.secret_add(conn, slug, sub_ids, settings)


async def secret_set(call: Call) -> list[Row]:
    slug, sub_id = call.secret(call.path["label"], "label")
    body = call.body
    inherit = [name for name in admin_tenant.INHERITABLE if name in body and body[name] is None]
    settings = SecretSettings(**{name: body.get(name) for name in admin_tenant.SECRET_FIELDS})
    async with call.write("secret.set", secret_label(slug, sub_id), slug) as conn:
        return await admin_tenant.secret_set(conn, slug, sub_id, settings, inherit)


async def secret_rotate(call: Call) -> list[Row]:
    slug, sub_id = call.secret(call.path["label"], "label")
    async with call.write("secret.rotate", secret_label(slug, sub_id), slug) as conn:
        return await admin_tenant.secret_rotate(conn, slug, sub_id)


async def secret_remove(call: Call) -> list[Row]:
    slug, sub_id = call.secret(call.path["label"], "label")
    force = call.query_flag("force")
    async with call.write("secret.remove", secret_label(slug, sub_id), slug, {"force": force}) as conn:
        return await admin_tenant.secret_remove(conn, slug, sub_id, force=force)


# Parameter rules -----------------------------------------------------------------------------

RULE = (
    Field("tenant", "string", "rule for all the tenant's secrets (exactly one of tenant and secret)"),
    Field("secret", "string", "rule for one secret, TENANT-NNN"),
    Field("for", "string", "the calls it applies to", required=True, choices=admin_tenant.CREATE_JOIN),
    Field("mode", "string", "BLOCK drops the parameter, SET adds it when absent, OVERRIDE replaces it",
          required=True, choices=admin_tenant.MODES),
    Field("name", "string", "BBB parameter name", required=True),
    Field("value", "string", "value, required for SET and OVERRIDE (up to 200 characters)"),
)


async def parameter_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await admin_tenant.parameter_list(conn, call.listed_tenant())


async def parameter_add(call: Call) -> list[Row]:
    """The rule's checks (exactly one owner, `for`, `mode`, name and value) are tenants.parameter_add's."""
    body = call.body
    tenant = call.tenant(body["tenant"]) if body.get("tenant") is not None else None
    secret = call.secret(body["secret"]) if body.get("secret") is not None else None
    rule = ParameterRule(body["for"], body["mode"], body["name"], body.get("value"))
    slug = secret[0] if secret is not None else tenant
    owner = secret_label(*secret) if secret is not None else str(tenant)
    async with call.write("parameter.add", f"{owner} {str(rule.create_join).upper()} {rule.name}", slug) as conn:
        return await admin_tenant.parameter_add(conn, tenant, secret, rule)


async def parameter_remove(call: Call) -> list[Row]:
    rule_id = parse_field("id", V.ROW_ID.parse, call.path["id"])
    async with call.read() as conn:
        rules = [r for r in await admin_tenant.parameter_list(conn, call.principal.tenant) if r["id"] == rule_id]
    if not rules:
        raise NotFound(f"no parameter rule with id {rule_id}")
    tenant = rules[0]["owner"].partition("-")[0]
    async with call.write("parameter.remove", str(rule_id), tenant, rules[0]) as conn:
        return await admin_tenant.parameter_remove(conn, rule_id)


# Assets --------------------------------------------------------------------------------------


async def asset_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await admin_tenant.asset_list(conn, call.listed_tenant())


def _asset_path(call: Call) -> tuple[str, str]:
    return call.tenant(call.path["tenant"]), V.check_value("kind", ASSET_KIND, call.path["kind"])


async def asset_set(call: Call) -> list[Row]:
    slug, kind = _asset_path(call)
    name = call.query("name")
    if name is None:
        raise ValueError("name: required: the file's name (its extension gives the MIME type)")
    data = call.raw_body
    async with call.write("asset.set", f"{slug}/{kind}", slug, {"name": name[:200], "size": len(data)}) as conn:
        return await admin_tenant.asset_store(conn, slug, kind, name, data)


async def asset_clear(call: Call) -> list[Row]:
    slug, kind = _asset_path(call)
    async with call.write("asset.clear", f"{slug}/{kind}", slug) as conn:
        return await admin_tenant.asset_clear(conn, slug, kind)


# The table -----------------------------------------------------------------------------------

TENANT_QUERY = (Field("tenant", "string", "only this tenant's (a tenant-scoped token: always its own)"),)
FORCE = (Field("force", "boolean", "even while it has meetings"),)
SLUG = {"slug": "tenant slug"}
LABEL = {"label": "secret: TENANT for sub-id 0, else TENANT-NNN"}

ENDPOINTS = (
    Endpoint("/tenants", (
        Operation("GET", "List tenants with limits, secrets and meetings", tenant_list),
        Operation("POST", "Add a tenant (then add its secret)", tenant_add, "write", True,
                  (Field("slug", "string", "2 to 10 letters, stored upper-case", required=True),
                   Field("cluster_group", "string", "cluster group", required=True), *TENANT_SETTINGS[1:]),
                  status=201, refresh=True),
    )),
    Endpoint("/tenants/{slug}", (
        Operation("GET", "A tenant with its stats token, secrets and API endpoints", tenant_show),
        Operation("PATCH", "Change a tenant's settings", tenant_set, "write", body=TENANT_SETTINGS, refresh=True),
        Operation("DELETE", "Remove a tenant with its secrets, rules and assets", tenant_remove, "write", True,
                  query=FORCE, refresh=True),
    ), SLUG),
    Endpoint("/secrets", (
        Operation("GET", "List secrets", secret_list, query=TENANT_QUERY),
        Operation("POST", "Create secrets with random values", secret_add, "write", body=NEW_SECRET, status=201,
                  refresh=True),
    )),
    Endpoint("/secrets/{label}", (
        Operation("PATCH", "Change a secret's limits, recording choice, hold time (null: the tenant's) and "
                  "description",
                  secret_set, "write", body=SECRET_SETTINGS, refresh=True),
        Operation("DELETE", "Remove a secret", secret_remove, "write", query=FORCE, refresh=True),
    ), LABEL),
    Endpoint("/secrets/{label}/rotate", (
        Operation("POST", "New secret value; the old one stays valid as secret2", secret_rotate, "write",
                  refresh=True),
    ), LABEL),
    Endpoint("/parameters", (
        Operation("GET", "List parameter rules", parameter_list, query=TENANT_QUERY),
        Operation("POST", "Add a parameter rule", parameter_add, "write", body=RULE, status=201, refresh=True),
    )),
    Endpoint("/parameters/{id}", (
        Operation("DELETE", "Remove a parameter rule", parameter_remove, "write", refresh=True),
    ), {"id": "rule id"}),
    Endpoint("/assets", (
        Operation("GET", "List stored assets", asset_list, query=TENANT_QUERY),
    )),
    Endpoint("/assets/{tenant}/{kind}", (
        Operation("PUT", "Store the request body (at most server.max_body_size and 16 MiB) as the asset",
                  asset_set, "write", query=(Field("name", "string", "file name; its extension gives the MIME "
                                                   "type (css: text/css)", required=True),),
                  raw_body="application/octet-stream", refresh=True),
        Operation("DELETE", "Remove the asset", asset_clear, "write", refresh=True),
    ), {"tenant": "tenant slug", "kind": "logo, slide or css"}),
)

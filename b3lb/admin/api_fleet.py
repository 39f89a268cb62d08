"""Admin API: clusters, cluster groups, nodes (drain and panic included) and recording profiles.

Fleet resources: tenant-scoped tokens get 403 for all of them. Each operation calls the function
the CLI calls (b3lb/admin/fleet.py, tenants.py, profiles.py, lifecycle.py) inside `Call.write`,
which adds the audit row to the same transaction.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

from b3lb.admin import fleet, lifecycle, profiles
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.api_core import PREFIX, Call, Endpoint, Field, Operation
from b3lb.admin.common import NotFound, Row
from b3lb.admin.fleet import ClusterSettings, NodeSettings
from b3lb.admin.tenants import ProfileSettings

# Clusters ------------------------------------------------------------------------------------

CLUSTER_SETTINGS = (
    Field("a_factor", "number", "load per attendee, 0..1000000 (default 1.0)"),
    Field("m_factor", "number", "load per meeting, 0..1000000 (default 10.0)"),
    Field("cpu_iterations", "integer", "CPU polynomial terms, 0..100 (0: no CPU term; default 6)"),
    Field("cpu_maximum", "integer", "load of a full CPU, 0..1000000 (default 5000)"),
    Field("sha", "string", "checksum algorithm towards nodes", choices=("SHA256", "SHA384", "SHA512")),
)


def _cluster_settings(body: dict[str, Any]) -> ClusterSettings:
    return ClusterSettings(**{f.name: body.get(f.name) for f in CLUSTER_SETTINGS})


async def cluster_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await fleet.cluster_list(conn)


async def cluster_add(call: Call) -> list[Row]:
    name = call.body["name"]
    async with call.write("cluster.add", name) as conn:
        return await fleet.cluster_add(conn, name, _cluster_settings(call.body))


async def cluster_set(call: Call) -> list[Row]:
    name = call.path["name"]
    async with call.write("cluster.set", name) as conn:
        return await fleet.cluster_set(conn, name, _cluster_settings(call.body))


async def cluster_remove(call: Call) -> list[Row]:
    name = call.path["name"]
    async with call.write("cluster.remove", name) as conn:
        return await fleet.cluster_remove(conn, name)


async def cluster_maintenance(call: Call) -> Any:
    async with call.transaction() as conn:
        return await lifecycle.cluster_maintenance(conn, call.path["name"], call.body["on"], call.principal.actor)


# Cluster groups ------------------------------------------------------------------------------


async def group_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await fleet.cluster_group_list(conn)


async def group_add(call: Call) -> list[Row]:
    name = call.body["name"]
    async with call.write("clustergroup.add", name) as conn:
        return await fleet.cluster_group_add(conn, name)


async def group_remove(call: Call) -> list[Row]:
    name = call.path["name"]
    async with call.write("clustergroup.remove", name) as conn:
        return await fleet.cluster_group_remove(conn, name)


async def group_link(call: Call) -> list[Row]:
    group, cluster = call.path["name"], call.path["cluster"]
    async with call.write("clustergroup.link", f"{group}/{cluster}") as conn:
        return await fleet.cluster_group_link(conn, group, cluster)


async def group_unlink(call: Call) -> list[Row]:
    group, cluster = call.path["name"], call.path["cluster"]
    async with call.write("clustergroup.unlink", f"{group}/{cluster}") as conn:
        return await fleet.cluster_group_unlink(conn, group, cluster)


# Nodes ---------------------------------------------------------------------------------------

NODE_SETTINGS = (
    Field("domain", "string", "DNS name or IP address of the node (no scheme, port or path)"),
    Field("secret", "string", "the node's BBB API secret (never shown again, not in the audit log)"),
    Field("protocol", "string", "http or https (default: node_defaults.protocol)", choices=("http", "https")),
    Field("port", "integer", "1..65535 (default: node_defaults.port)"),
    Field("bbb_endpoint", "string", "BBB API path (default: node_defaults.bbb_endpoint)"),
    Field("load_endpoint", "string", "load report path (default: node_defaults.load_endpoint)"),
    Field("maintenance", "boolean", "maintenance mode: no new meetings"),
)


def _node_settings(body: dict[str, Any]) -> NodeSettings:
    return NodeSettings(**{f.name: body.get(f.name) for f in NODE_SETTINGS})


def _node_detail(body: dict[str, Any]) -> dict[str, Any]:
    """The audit row's copy of a node body: the node's secret is never logged."""
    return {k: ("(changed)" if k == "secret" else v) for k, v in body.items()}


def _ref(call: Call) -> str:
    return f"{call.path['cluster']}/{call.path['slug']}"


async def node_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await fleet.node_list(conn, call.query("cluster"))


async def node_show(call: Call) -> list[Row]:
    cluster, slug = call.path["cluster"], call.path["slug"]
    async with call.read() as conn:
        rows = [row for row in await fleet.node_list(conn, cluster) if row["slug"] == slug]
    if not rows:
        raise NotFound(f"no node {slug!r} in cluster {cluster!r}")
    return rows


async def node_add(call: Call) -> list[Row]:
    body = call.body
    settings = fleet.with_node_defaults(_node_settings(body), call.runtime.config.node_defaults)
    target = f"{body['cluster']}/{body['slug']}"
    async with call.write("node.add", target, detail=_node_detail(body)) as conn:
        return await fleet.node_add(conn, body["cluster"], body["slug"], settings)


async def node_set(call: Call) -> list[Row]:
    async with call.write("node.set", _ref(call), detail=_node_detail(call.body)) as conn:
        return await fleet.node_set(conn, _ref(call), _node_settings(call.body))


async def node_remove(call: Call) -> list[Row]:
    force = call.query_flag("force")
    async with call.write("node.remove", _ref(call), detail={"force": force}) as conn:
        return await fleet.node_remove(conn, _ref(call), force)


async def node_maintenance(call: Call) -> Any:
    async with call.write("node.maintenance", _ref(call)) as conn:
        return await fleet.node_maintenance(conn, _ref(call), call.body["on"])


async def node_drain(call: Call) -> Any:
    async with call.transaction() as conn:
        return await lifecycle.node_drain(conn, _ref(call), call.principal.actor)


async def node_drain_status(call: Call) -> Any:
    async with call.read() as conn:
        return await lifecycle.node_drain_status(conn, _ref(call))


async def node_panic(call: Call) -> Any:
    """202: maintenance on and the panic lock taken (committed); the rest (routing rows out, the
    frontends' end callbacks, `end` on the node, each step waiting one api.cache_refresh_interval for
    other processes, as the CLI does) runs in a background task of this process
    (b3lb/admin/lifecycle.py node_panic_start). The answer is the node's drain status with
    `panic_state` "running" and `status_url`, the GET that reports the outcome."""
    runtime = call.runtime
    rows = await lifecycle.node_panic_start(runtime, _ref(call), call.principal.actor,
                                            settle=runtime.config.api.cache_refresh_interval)
    call.wrote = True
    status_url = f"{PREFIX}/nodes/{quote(call.path['cluster'], safe='')}/{quote(call.path['slug'], safe='')}/drain"
    return [{**row, "status_url": status_url} for row in rows]


# Recording profiles --------------------------------------------------------------------------

PROFILE_SETTINGS = (
    Field("width", "integer", "video width in pixels, 1..8192 (default 1920)"),
    Field("height", "integer", "video height in pixels, 1..8192 (default 1080)"),
    Field("webcam_width", "integer", "webcam width in pixels, 1..8192 (default 320)"),
    Field("webcam_height", "integer", "webcam height in pixels, 1..8192 (default 180)"),
    Field("webcam_stretch", "boolean", "stretch webcams (default false)"),
    Field("webcam_crop", "boolean", "crop webcams (default false)"),
    Field("format", "string", "video format (default MP4)", choices=admin_tenant.RECORD_FORMATS),
    Field("annotate", "boolean", "draw whiteboard annotations (default true)"),
    Field("backdrop", "boolean", "neutral backdrop behind slides (default true)"),
)
PROFILE_OWNER = (
    Field("tenant", "string", "every secret of this tenant (exactly one of tenant and secret)"),
    Field("secret", "string", "one secret, TENANT-NNN"),
)


async def profile_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await profiles.profile_list(conn)


async def profile_add(call: Call) -> list[Row]:
    name = call.body["name"]
    settings = ProfileSettings(**{f.name: call.body.get(f.name) for f in PROFILE_SETTINGS})
    async with call.write("recordprofile.add", name) as conn:
        return await admin_tenant.record_profile_add(conn, name, settings)


async def profile_remove(call: Call) -> list[Row]:
    name = call.path["name"]
    async with call.write("recordprofile.remove", name) as conn:
        return await admin_tenant.record_profile_remove(conn, name)


async def _profile_relink(call: Call, verb: str) -> list[Row]:
    name, body = call.path["name"], call.body
    tenant = call.tenant(body["tenant"]) if body.get("tenant") is not None else None
    secret = call.secret(body["secret"]) if body.get("secret") is not None else None
    func = profiles.profile_link if verb == "link" else profiles.profile_unlink
    async with call.write(f"recordprofile.{verb}", name, tenant or (secret[0] if secret else None)) as conn:
        await admin_tenant.record_profile_by_name(conn, name)  # a missing profile: 404
        return await func(conn, name, tenant, secret)


async def profile_link(call: Call) -> list[Row]:
    return await _profile_relink(call, "link")


async def profile_unlink(call: Call) -> list[Row]:
    return await _profile_relink(call, "unlink")


# The table -----------------------------------------------------------------------------------

NAME = Field("name", "string", "name (1..200 characters)", required=True)
ON = (Field("on", "boolean", "true: maintenance on; false: off", required=True),)
FORCE = (Field("force", "boolean", "also when it still hosts meetings (they are forgotten)"),)
NODE_PATH = {"cluster": "cluster name", "slug": "node slug"}

ENDPOINTS = (
    Endpoint("/clusters", (
        Operation("GET", "List clusters with their load formula", cluster_list, fleet=True),
        Operation("POST", "Add a cluster", cluster_add, "write", True, (NAME, *CLUSTER_SETTINGS), status=201,
                  refresh=True),
    )),
    Endpoint("/clusters/{name}", (
        Operation("PATCH", "Change a cluster's load formula", cluster_set, "write", True, CLUSTER_SETTINGS,
                  refresh=True),
        Operation("DELETE", "Remove a cluster without nodes", cluster_remove, "write", True, refresh=True),
    ), {"name": "cluster name"}),
    Endpoint("/clusters/{name}/maintenance", (
        Operation("POST", "The cluster's own maintenance on or off (off: each node as it is on its own)",
                  cluster_maintenance, "write", True, ON, refresh=True),
    ), {"name": "cluster name"}),
    Endpoint("/clustergroups", (
        Operation("GET", "List cluster groups with their clusters", group_list, fleet=True),
        Operation("POST", "Add a cluster group", group_add, "write", True, (NAME,), status=201, refresh=True),
    )),
    Endpoint("/clustergroups/{name}", (
        Operation("DELETE", "Remove a cluster group no tenant uses", group_remove, "write", True, refresh=True),
    ), {"name": "cluster group name"}),
    Endpoint("/clustergroups/{name}/clusters/{cluster}", (
        Operation("POST", "Link a cluster to the group", group_link, "write", True, refresh=True),
        Operation("DELETE", "Unlink a cluster from the group", group_unlink, "write", True, refresh=True),
    ), {"name": "cluster group name", "cluster": "cluster name"}),
    Endpoint("/nodes", (
        Operation("GET", "List nodes: state, load, CPU, attendees, meetings, last good poll", node_list,
                  fleet=True, query=(Field("cluster", "string", "only this cluster's nodes"),)),
        Operation("POST", "Add a node (protocol, port and paths default to [node_defaults])", node_add, "write",
                  True, (Field("cluster", "string", "cluster name", required=True),
                         Field("slug", "string", "node slug: letters, digits, - and _", required=True),
                         *(dataclasses.replace(f, required=f.name in ("domain", "secret")) for f in NODE_SETTINGS)),
                  status=201, refresh=True),
    )),
    Endpoint("/nodes/{cluster}/{slug}", (
        Operation("GET", "One node", node_show, fleet=True),
        Operation("PATCH", "Change a node", node_set, "write", True, NODE_SETTINGS, refresh=True),
        Operation("DELETE", "Remove a node (refused while it hosts meetings, unless force=true)", node_remove,
                  "write", True, query=FORCE, refresh=True),
    ), NODE_PATH),
    Endpoint("/nodes/{cluster}/{slug}/maintenance", (
        Operation("POST", "Maintenance mode on or off", node_maintenance, "write", True, ON, refresh=True),
    ), NODE_PATH),
    Endpoint("/nodes/{cluster}/{slug}/drain", (
        Operation("GET", "Drain progress: the meetings still running, and the node's last panic", node_drain_status,
                  fleet=True),
        Operation("POST", "Drain: no new meetings, running ones go on", node_drain, "write", True, refresh=True),
    ), NODE_PATH),
    Endpoint("/nodes/{cluster}/{slug}/panic", (
        Operation("POST", "Panic: end the node's meetings after telling their frontends (202: it goes on in the "
                  "background; GET .../drain, the answer's status_url, reports it as panic_state)", node_panic,
                  "write", True, refresh=True, status=202),
    ), NODE_PATH),
    Endpoint("/recordprofiles", (
        Operation("GET", "List recording profiles with their links", profile_list, fleet=True),
        Operation("POST", "Add a recording profile", profile_add, "write", True, (NAME, *PROFILE_SETTINGS),
                  status=201),
    )),
    Endpoint("/recordprofiles/{name}", (
        Operation("DELETE", "Remove an unused recording profile", profile_remove, "write", True),
    ), {"name": "profile name"}),
    Endpoint("/recordprofiles/{name}/link", (
        Operation("POST", "Render a tenant's or secret's recordings with this profile", profile_link, "write",
                  True, PROFILE_OWNER),
    ), {"name": "profile name"}),
    Endpoint("/recordprofiles/{name}/unlink", (
        Operation("POST", "Remove a link", profile_unlink, "write", True, PROFILE_OWNER),
    ), {"name": "profile name"}),
)

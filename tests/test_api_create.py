"""End-to-end `create`: validation, duplicates, node errors passed back, and the rewriting of
the forwarded call (spec 2.3, 5.3, 5.5, 7.10-7.14, 7.19)."""

from __future__ import annotations

import base64
import random
import uuid
from urllib.parse import quote

import pytest
from api_helpers import (
    END_PREFIX,
    add_rule,
    all_sent,
    children,
    create,
    create_ok,
    meeting_rows,
    node_id,
    owner,
    pairs,
    q,
    sent,
    xml,
)
from lxml import etree

from b3lb.meetings import MeetingRef
from b3lb.testing.harness import Harness

MEETING_ID_SIZE = [("returncode", "FAILED"), ("message", "Meeting id must be between 2 and 100 characters")]
NAME_SIZE = [
    ("returncode", "FAILED"),
    ("messageKey", "sizeError"),
    ("message", "Meeting name must be between 2 and 256 characters"),
]


@pytest.mark.gen_test(timeout=30)
async def test_create_validates_meeting_id_and_name_lengths(db_url):
    async with Harness(db_url, nodes=1) as h:
        r = await h.call("create", "name=Room")
        assert children(r) == [
            ("returncode", "FAILED"),
            ("messageKey", "missingParamMeetingID"),
            ("message", "You must specify a meeting ID for the meeting."),
        ]
        r = await h.call("create", "meetingID=&name=Room")
        assert xml(r).findtext("messageKey") == "missingParamMeetingID"
        for bad in ("a", "x" * 101, "y" * 256, "z" * 257):
            r = await create(h, bad)
            assert r.code == 200 and children(r) == MEETING_ID_SIZE, (len(bad), r.body)
        for bad_name in (None, "", "n", "n" * 257):
            query = q(meetingID="good-id") + ("" if bad_name is None else "&" + q(name=bad_name))
            r = await h.call("create", query)
            assert children(r) == NAME_SIZE, (bad_name, r.body)
        # Nothing above reached a node or the database.
        assert all_sent(h, "create") == []
        assert await meeting_rows(h) == []
        for good_id, good_name in (("ab", "xy"), ("m" * 100, "n" * 256), ("emoji", "🎉🎉"), ("emoji2", "Ü" * 256)):
            doc = await create_ok(h, good_id, good_name)
            assert doc.findtext("meetingID") == good_id
        names = {m.meeting_id: m.name for m in h.fleet.nodes[0].meetings.values()}
        assert names["emoji"] == "🎉🎉" and names["m" * 100] == "n" * 256 and names["emoji2"] == "Ü" * 256
        assert {r["meeting_name"] for r in await meeting_rows(h)} == {"xy", "n" * 256, "🎉🎉", "Ü" * 256}


@pytest.mark.gen_test(timeout=30)
async def test_duplicate_create_is_idempotent_on_the_same_node(db_url):
    async with Harness(db_url, nodes=3) as h:
        first = await create_ok(h, "dup", extra="attendeePW=ap&moderatorPW=mp")
        node = owner(h, "dup")
        entry = h.runtime.loads.nodes[node_id(h, node)]
        assert entry.pending_meetings == 1
        load_after_first = entry.load
        for extra in ("attendeePW=ap&moderatorPW=mp", ""):  # same passwords, or none at all
            again = await create_ok(h, "dup", extra=extra)
            assert again.findtext("messageKey") == "duplicateWarning"
            assert again.findtext("internalMeetingID") == first.findtext("internalMeetingID")
            assert again.findtext("createTime") == first.findtext("createTime")
        assert first.findtext("messageKey") in (None, "")
        assert len(sent(node, "create")) == 3 and len(all_sent(h, "create")) == 3
        assert len(await meeting_rows(h, "dup")) == 1
        assert entry.pending_meetings == 1 and entry.load == load_after_first
        assert sum(e.pending_meetings for e in h.runtime.loads.nodes.values()) == 1


@pytest.mark.gen_test(timeout=30)
async def test_create_with_other_password_gets_id_not_unique_and_keeps_the_meeting(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "pw", extra="attendeePW=ap&moderatorPW=mp")
        node = owner(h, "pw")
        r = await create(h, "pw", extra="attendeePW=other&moderatorPW=mp")
        assert children(r) == [
            ("returncode", "FAILED"),
            ("messageKey", "idNotUnique"),
            ("message", "A meeting already exists with that meeting ID.  Please use a different meeting ID."),
        ]
        assert len(sent(node, "create")) == 2
        # The running meeting is untouched: still routed, still joinable.
        assert len(await meeting_rows(h, "pw")) == 1
        r = await h.call("join", "meetingID=pw&fullName=Ann&role=VIEWER")
        assert r.code == 302 and node.domain in r.headers["Location"]


@pytest.mark.gen_test(timeout=30)
async def test_node_validation_error_forgets_the_record(db_url):
    async with Harness(db_url, nodes=2) as h:
        for attempt in (1, 2):
            r = await create(h, "a,b")
            assert children(r) == [
                ("returncode", "FAILED"),
                ("messageKey", "validationError"),
                ("message", "Meeting ID cannot contain ','"),
            ]
            assert len(all_sent(h, "create")) == attempt  # each retry is placed and forwarded again
            assert await meeting_rows(h, "a,b") == []
            assert h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "a,b") is None
            assert all(e.pending_meetings == 0 for e in h.runtime.loads.nodes.values())
        r = await h.call("getMeetingInfo", q(meetingID="a,b"))
        assert xml(r).findtext("messageKey") == "notFound"


@pytest.mark.gen_test(timeout=30)
async def test_post_body_is_forwarded_byte_identical_with_its_content_type(db_url):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<modules>\n  <module name="presentation">'
        '<document url="https://files.example.org/intro.pdf" filename="intro.pdf"/></module>'
        '<module name="clientSettingsOverride"><![CDATA[{"a":"ä & <b>"}]]></module></modules>\r\n'
    ).encode()
    async with Harness(db_url, nodes=1) as h:
        # Even with a tenant slide, a client's own body is never replaced.
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, slide, slide_mime, slide_data) VALUES ($1, 'x.pdf', 'application/pdf', $2)",
            h.tenants["ABC"].tenant_id, b"%PDF-1.4",
        )
        await h.reload()
        r = await create(h, "posted", method="POST", body=body, content_type="text/xml; charset=utf-8")
        assert xml(r).findtext("returncode") == "SUCCESS", r.body
        (request,) = all_sent(h, "create")
        assert request.method == "POST"
        assert request.body == body
        assert request.content_type == "text/xml; charset=utf-8"


@pytest.mark.gen_test(timeout=30)
async def test_get_create_with_tenant_slide_becomes_post_with_modules(db_url):
    slide = bytes(range(256)) * 4
    async with Harness(db_url, nodes=1, tenants=("ABC", "XYZ")) as h:
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, slide, slide_mime, slide_data) VALUES ($1, $2, 'application/pdf', $3)",
            h.tenants["ABC"].tenant_id, 'intro "1" & <more>.pdf', slide,
        )
        await h.reload()
        await create_ok(h, "slides", extra="preUploadedPresentationOverrideDefault=true")
        (request,) = all_sent(h, "create")
        assert request.method == "POST"
        assert request.content_type == "application/xml"
        modules = etree.fromstring(request.body)
        assert modules.tag == "modules" and [m.get("name") for m in modules] == ["presentation"]
        (document,) = modules.find("module")
        assert document.tag == "document" and document.get("name") == 'intro "1" & <more>.pdf'
        assert base64.b64decode(document.text) == slide
        assert ("meetingID", "slides") in pairs(request)
        # Another tenant without a slide still creates with GET.
        await create_ok(h, "plain", slug="XYZ")
        assert [r.method for r in all_sent(h, "create")] == ["POST", "GET"]
        assert all_sent(h, "create")[1].body == b""


@pytest.mark.gen_test(timeout=30)
async def test_large_tenant_slide_is_sent_by_url(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, slide, slide_mime, slide_data) "
            "VALUES ($1, 'big.pdf', 'application/pdf', $2)",
            h.tenants["ABC"].tenant_id, b"x" * 768_001,
        )
        await h.reload()
        await create_ok(h, "big")
        (request,) = all_sent(h, "create")
        assert request.method == "POST" and request.content_type == "application/xml"
        assert request.body == (
            b'<modules><module name="presentation"><document url="https://lb.test/b3lb/t/abc/slide" '
            b'filename="big.pdf"></document></module></modules>'
        )


@pytest.mark.gen_test(timeout=30)
async def test_logo_asset_is_injected_unless_given_and_voice_params_are_dropped(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, logo, logo_mime, logo_data) VALUES ($1, 'logo.png', 'image/png', $2)",
            h.tenants["ABC"].tenant_id, b"\x89PNG",
        )
        await add_rule(h, "CREATE", "BLOCK", "logo")  # the injection wins over a BLOCK rule (spec 5.3)
        await h.reload()
        await create_ok(h, "l1", extra="voiceBridge=71234&dialNumber=613-555-1234&welcome=hi")
        await create_ok(h, "l2", extra=q(logo="https://client.example/own.png"))
        first, second = all_sent(h, "create")
        assert pairs(first)[:3] == [("meetingID", "l1"), ("name", "Room"), ("welcome", "hi")]
        keys = [k for k, _ in pairs(first)]
        assert "voiceBridge" not in keys and "dialNumber" not in keys
        assert ("logo", "https://lb.test/b3lb/t/abc/logo") in pairs(first)
        # The client's logo was blocked by the rule, then the tenant logo injected.
        assert [v for k, v in pairs(second) if k == "logo"] == ["https://lb.test/b3lb/t/abc/logo"]
        # The node assigned its own voice bridge.
        assert h.fleet.nodes[0].meetings["l1"].voice_bridge != "71234"


@pytest.mark.gen_test(timeout=30)
async def test_client_logo_is_kept(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, logo, logo_mime, logo_data) VALUES ($1, 'logo.png', 'image/png', $2)",
            h.tenants["ABC"].tenant_id, b"\x89PNG",
        )
        await h.reload()
        await create_ok(h, "own", extra=q(logo="https://client.example/own.png"))
        (request,) = all_sent(h, "create")
        assert [v for k, v in pairs(request) if k == "logo"] == ["https://client.example/own.png"]


@pytest.mark.gen_test(timeout=30)
async def test_recording_disabled_forces_recording_flags_off(db_url):
    async with Harness(db_url, nodes=1) as h:
        await add_rule(h, "CREATE", "OVERRIDE", "autoStartRecording", "true")  # the injection beats the rule
        await h.reload()
        ready = "https://gl.example/recording_ready"
        await create_ok(h, "norec", extra=q(record="true", **{"meta_bbb-recording-ready-url": ready}))
        (request,) = all_sent(h, "create")
        params = pairs(request)
        assert params[2] == ("record", "false")  # replaced in place
        assert ("autoStartRecording", "false") in params and ("allowStartStopRecording", "false") in params
        assert [k for k, _ in params].count("record") == 1
        assert ("meta_bbb-recording-ready-url", ready) in params  # untouched without recording
        assert "meta_b3lb-recordset" not in dict(params)
        assert h.fleet.nodes[0].meetings["norec"].record is False


@pytest.mark.gen_test(timeout=30)
async def test_recording_enabled_moves_ready_url_and_tags_the_recordset(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        ready = "https://gl.example/recording_ready"
        await create_ok(h, "rec", extra=q(record="true", **{"meta_bbb-recording-ready-url": ready}))
        (row,) = await meeting_rows(h, "rec")
        (request,) = all_sent(h, "create")
        params = pairs(request)
        assert ("record", "true") in params
        assert "meta_bbb-recording-ready-url" not in dict(params)
        assert params[-2:][0] == ("meta_b3lb-recordset", str(row["nonce"]))
        assert row["recording_ready_url"] == ready
        metadata = h.fleet.nodes[0].meetings["rec"].metadata
        assert metadata["b3lb-recordset"] == str(row["nonce"]) and "bbb-recording-ready-url" not in metadata


@pytest.mark.gen_test(timeout=30)
async def test_secret_recording_switch_overrides_the_tenant(db_url):
    from b3lb.testing.harness import add_secret

    async with Harness(db_url, nodes=1) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1, record_by_default=True)
        await h.reload()
        await create_ok(h, "s1", extra="record=true", sub_id=1)
        await create_ok(h, "s0", extra="record=true")
        by_id = {dict(pairs(r))["meetingID"]: dict(pairs(r)) for r in all_sent(h, "create")}
        assert by_id["s1"]["record"] == "true" and "meta_b3lb-recordset" in by_id["s1"]
        assert by_id["s0"]["record"] == "false" and "meta_b3lb-recordset" not in by_id["s0"]


@pytest.mark.gen_test(timeout=30)
async def test_end_callback_is_replaced_in_place_and_stored(db_url):
    async with Harness(db_url, nodes=1) as h:
        original = "https://gl.example/meeting_ended?room=1&x=%C3%BC"
        extra = q(("META_ENDCALLBACKURL", original), ("welcome", "w"))
        await create_ok(h, "cb", extra=extra)
        await create_ok(h, "nocb")
        rows = {r["meeting_id"]: r for r in await meeting_rows(h)}
        first, second = all_sent(h, "create")
        assert pairs(first)[2] == ("META_ENDCALLBACKURL", f"{END_PREFIX}{rows['cb']['nonce']}")
        assert pairs(first)[3] == ("welcome", "w")
        assert [k.lower() for k, _ in pairs(first)].count("meta_endcallbackurl") == 1
        assert rows["cb"]["end_callback_url"] == original
        # Without a client callback ours is appended anyway.
        assert ("meta_endCallbackUrl", f"{END_PREFIX}{rows['nocb']['nonce']}") in pairs(second)
        assert rows["nocb"]["end_callback_url"] == ""
        assert h.fleet.nodes[0].meetings["cb"].metadata["endcallbackurl"] == f"{END_PREFIX}{rows['cb']['nonce']}"
        # b3lb's own callback carries the meeting's nonce: the tenant's getMeetingInfo never shows it
        info = await h.call("getMeetingInfo", "meetingID=cb")
        assert xml(info).find("metadata") is not None and xml(info).find("metadata/endcallbackurl") is None


@pytest.mark.gen_test(timeout=30)
async def test_create_rules_from_tenant_and_secret(db_url):
    from b3lb.testing.harness import add_secret

    async with Harness(db_url, nodes=1) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await add_rule(h, "CREATE", "BLOCK", "muteOnStart")
        await add_rule(h, "CREATE", "SET", "welcome", "Tenant welcome")
        await add_rule(h, "CREATE", "OVERRIDE", "duration", "60")
        await add_rule(h, "BOTH", "SET", "logoutURL", "https://tenant.example/out")
        await add_rule(h, "JOIN", "OVERRIDE", "userdata-bbb_auto_join_audio", "true")
        # Secret 1 replaces the tenant's rules of the same name.
        await add_rule(h, "CREATE", "OVERRIDE", "duration", "90", sub_id=1)
        await add_rule(h, "CREATE", "OVERRIDE", "welcome", "Secret welcome", sub_id=1)
        await h.reload()
        extra = q(muteOnStart="true", duration="5", bannerText="b")
        await create_ok(h, "r0", extra=extra)
        await create_ok(h, "r0b", extra=q(welcome="Mine"))
        await create_ok(h, "r1", extra=extra + "&" + q(welcome="Mine"), sub_id=1)
        r0, r0b, r1 = (dict(pairs(r)) for r in all_sent(h, "create"))
        assert "muteOnStart" not in r0
        assert r0["duration"] == "60" and r0["welcome"] == "Tenant welcome" and r0["bannerText"] == "b"
        assert r0["logoutURL"] == "https://tenant.example/out"
        assert "userdata-bbb_auto_join_audio" not in r0
        assert r0b["welcome"] == "Mine"  # SET keeps the client's value
        assert "muteOnStart" not in r1  # tenant rule still applies to the secret
        assert r1["duration"] == "90" and r1["welcome"] == "Secret welcome"
        assert [k for k, _ in pairs(all_sent(h, "create")[2])].count("duration") == 1


@pytest.mark.gen_test(timeout=30)
async def test_non_ascii_and_special_characters_survive_the_round_trip(db_url):
    async with Harness(db_url, nodes=1) as h:
        name = 'Jürgen & <Müller> "quoted" a*b'
        await create_ok(h, "spécial&id", name=name, extra=q(**{"meta_note": "x<&>\"y"}))
        meeting = h.fleet.nodes[0].meetings["spécial&id"]
        assert meeting.name == name and meeting.metadata["note"] == 'x<&>"y'
        r = await h.call("getMeetingInfo", "meetingID=" + quote("spécial&id", safe=""))
        assert xml(r).findtext("meetingName") == name


@pytest.mark.gen_test(timeout=30)
async def test_a_meeting_known_only_from_an_event_is_still_written(db_url):
    """Issue 9.7: a Redis event (here one from another deployment) must never stand in for the
    database row: the create writes its own routing record."""
    async with Harness(db_url, nodes=2) as h:
        secret_id = h.tenants["ABC"].secrets[0][0]
        node = h.fleet.nodes[1]
        foreign = MeetingRef(id=999_999, secret_id=secret_id, meeting_id="ghost", node_id=node_id(h, node),
                             nonce=uuid.uuid4(), via_event=True)
        h.runtime.meetings.add(foreign)
        await create_ok(h, "ghost")
        (row,) = await meeting_rows(h, "ghost")
        ref = h.runtime.meetings.get(secret_id, "ghost")
        assert ref is not None and ref.id == row["id"] and not ref.via_event
        host = next(n for n in h.fleet.nodes if "ghost" in n.meetings)
        assert row["node_id"] == node_id(h, host)


def test_rewrite_in_one_pass_equals_the_edits_one_by_one() -> None:
    """create's rewrite (one pass over the parameters) against the spec 5.3 edits applied one
    after the other with the parameter helpers: the same parameters in the same order."""
    from types import SimpleNamespace

    from b3lb.api import create as create_module
    from b3lb.api import params as p
    from b3lb.tenancy import AssetFlags, Rule

    def reference(ctx: SimpleNamespace, params: p.Params, nonce: uuid.UUID) -> p.Params:
        base = "https://lb.test"
        params = p.remove(p.apply_rules(params, ctx.create_rules), "dialNumber", "voiceBridge")
        if ctx.assets.logo:
            params = p.set_default(params, "logo", f"{base}/b3lb/t/abc/logo")
        if ctx.recording_enabled:
            params = [(k, v) for k, v in params if k.lower() != "meta_bbb-recording-ready-url"]
            params = p.set_value(params, "meta_b3lb-recordset", str(nonce))
        else:
            for flag in ("record", "autoStartRecording", "allowStartStopRecording"):
                params = p.set_value(params, flag, "false")
        return p.set_value(params, "meta_endCallbackUrl", f"{base}/b3lb/b/meeting/end?nonce={nonce}", casefold=True)

    keys = ["name", "meetingID", "record", "RECORD", "autoStartRecording", "allowStartStopRecording", "logo",
            "dialNumber", "voiceBridge", "meta_endCallbackUrl", "META_ENDCALLBACKURL", "meta_b3lb-recordset",
            "META_B3LB-RECORDSET", "meta_bbb-recording-ready-url", "Meta_BBB-Recording-Ready-Url", "welcome"]
    runtime = SimpleNamespace(config=SimpleNamespace(public_base_url="https://lb.test"))
    rng = random.Random(7)
    for _ in range(20000):
        params = [(rng.choice(keys), rng.choice(["a", "", "true"])) for _ in range(rng.randint(0, 9))]
        rules = tuple(Rule(rng.choice(["BLOCK", "SET", "OVERRIDE"]), rng.choice(keys), rng.choice(["r1", "r2"]))
                      for _ in range(rng.randint(0, 2)))
        ctx = SimpleNamespace(create_rules=rules, recording_enabled=rng.random() < 0.5,
                              assets=AssetFlags(logo=rng.random() < 0.5), tenant=SimpleNamespace(slug="ABC"))
        ref = SimpleNamespace(nonce=uuid.UUID(int=rng.getrandbits(128)))
        rewritten = create_module._rewrite(runtime, ctx, params, ref)  # type: ignore[arg-type]
        assert rewritten == reference(ctx, params, ref.nonce), (params, rules, ctx)

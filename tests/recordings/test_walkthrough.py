"""Issue 10's "done means", on both storage backends: a recorded meeting travels from the fake node
through b3lb to the frontend, and after its hold time nothing of it is left."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from lxml import etree
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.recordings import callbacks, retention
from b3lb.recordings.records import store_video
from b3lb.recordings.storage import set_prefix
from b3lb.testing.harness import LOOPBACK_CALLBACKS, Harness

ADMIN_TOKEN = "walkthrough-admin-token-0123"
VIDEO = bytes(range(256)) * 4096  # 1 MiB that is not all one byte, so ranges can be told apart


class ReadyReceiver(RequestHandler):
    """The frontend's recording-ready endpoint."""

    def initialize(self, received: list[dict[str, list[str]]]) -> None:
        self.received = received

    def post(self) -> None:
        assert self.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        self.received.append(parse_qs(self.request.body.decode()))
        self.set_status(200)


def start_receiver(received: list[dict[str, list[str]]]) -> tuple[HTTPServer, str]:
    sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
    server = HTTPServer(Application([(r"/recording_ready", ReadyReceiver, {"received": received})]))
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}/recording_ready?room=42"


def recordings_of(body: bytes) -> list[etree._Element]:
    doc = etree.fromstring(body)
    assert doc.findtext("returncode") == "SUCCESS", body
    return doc.findall("recordings/recording")


async def stored_files(h: Harness, recordings_config: dict[str, object]) -> list[str]:
    """Every object left in the storage: files under the local root, or the S3 bucket's keys."""
    if recordings_config["storage"] == "local":
        root = Path(str(recordings_config["local_path"]))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    import boto3

    client = boto3.client("s3", endpoint_url=recordings_config["s3_endpoint"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = client.list_objects_v2(Bucket=recordings_config["s3_bucket"])
    uploads = client.list_multipart_uploads(Bucket=recordings_config["s3_bucket"])
    return sorted(o["Key"] for o in listed.get("Contents", [])) + [u["Key"] for u in uploads.get("Uploads", [])]


@pytest.mark.gen_test(timeout=60)
async def test_a_recorded_meeting_from_node_to_frontend_and_away(db_url, recordings_config):
    received: list[dict[str, list[str]]] = []
    receiver, ready_url = start_receiver(received)
    h = Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS, recordings=recordings_config)
    h.config = dataclasses.replace(h.config, metrics=dataclasses.replace(h.config.metrics, admin_token=ADMIN_TOKEN))
    async with h:
        assert h.pool is not None and h.runtime is not None
        h.fleet.recorder.enabled = True
        h.fleet.recorder.upload_base = f"http://127.0.0.1:{h.port}/"
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        secret = h.secret()

        # create with record=true and a ready URL, join, end: the node uploads its archive.
        query = urlencode({"meetingID": "room-42", "name": "Weekly Sync", "record": "true",
                           "meta_bbb-recording-ready-url": ready_url})
        assert b"SUCCESS" in (await h.call("create", query)).body
        join = await h.call("join", "meetingID=room-42&fullName=Ann&role=MODERATOR")
        assert join.code == 302
        nonce = await h.pool.fetchval("SELECT id FROM record_set")
        assert b"SUCCESS" in (await h.call("end", "meetingID=room-42")).body
        await h.fleet.settle()
        rs = await h.pool.fetchrow("SELECT * FROM record_set WHERE id = $1", nonce)
        assert rs["status"] == "UPLOADED" and rs["ready_url"] == ready_url
        assert rs["archive_key"].startswith(set_prefix(nonce) + "/")
        assert await h.runtime.storage.stat(rs["archive_key"]) is not None
        assert await h.pool.fetchval("SELECT state FROM render_job WHERE recordset_id = $1", nonce) == "QUEUED"

        # Uploaded but not rendered: only state=processing shows it, without a playback format.
        assert recordings_of((await h.call("getRecordings", "meetingID=room-42")).body) == []
        (processing,) = recordings_of((await h.call("getRecordings", "meetingID=room-42&state=processing")).body)
        assert processing.findtext("state") == "processing" and processing.find("playback/format") is None
        # Its recordID is not the nonce (the node's upload credential), which no answer shows.
        assert processing.findtext("recordID") == str(rs["public_id"])
        assert nonce.encode() not in (await h.call("getRecordings", "state=any")).body

        # Rendering is issue 11: the test stores the video and adds its Record as the renderer will.
        profile_id = await h.pool.fetchval("INSERT INTO record_profile (name) VALUES ('Full HD') RETURNING id")
        record = await store_video(h.pool, h.runtime.storage, nonce, profile_id, VIDEO)
        (listed,) = recordings_of((await h.call("getRecordings", "meetingID=room-42")).body)
        assert listed.findtext("recordID") == record.record_id and listed.findtext("name") == "Weekly Sync (Full HD)"
        assert nonce.encode() not in (await h.call("getRecordings", "state=any")).body
        url = listed.findtext("playback/format/url")
        assert url == f"https://lb.test/b3lb/r/{record.nonce}"

        # The ready callback reaches the frontend once, with a JWT signed by the tenant's secret.
        assert await callbacks.deliver_due(h.runtime) == 1
        assert await callbacks.deliver_due(h.runtime) == 0
        (form,) = received
        claims = jwt.decode(form["signed_parameters"][0], secret, algorithms=["HS256"])
        assert claims == {"meeting_id": "room-42", "record_id": record.record_id}

        # Prometheus shows the upload, the bytes and the callback.
        scraped = (await h.request("/b3lb/metrics", headers={"Authorization": ADMIN_TOKEN})).body.decode()
        for name in ('b3lb_recording_uploads_total{result="stored"}', "b3lb_recording_upload_bytes_total",
                     'b3lb_recording_callbacks_total{result="sent"}'):
            (line,) = [x for x in scraped.splitlines() if x.startswith(name + " ")]
            assert float(line.split()[-1]) >= 1, line
        assert "b3lb_recording_callback_outbox 0.0" in scraped

        # The video plays with Range requests, as a browser's player seeks.
        path = urlsplit(url).path
        whole = await h.request(path)
        assert whole.code == 200 and whole.body == VIDEO and whole.headers["Content-Length"] == str(len(VIDEO))
        pieces = []
        for start, end in ((0, 99), (100, 500_000), (500_001, len(VIDEO) - 1)):
            part = await h.request(path, headers={"Range": f"bytes={start}-{end}"})
            assert part.code == 206 and part.headers["Content-Range"] == f"bytes {start}-{end}/{len(VIDEO)}"
            pieces.append(part.body)
        assert b"".join(pieces) == VIDEO

        # publish / unpublish / update / delete.
        rid = record.record_id
        answer = await h.call("publishRecordings", f"recordID={rid}&publish=false")
        assert b"<published>false</published>" in answer.body
        (hidden,) = recordings_of((await h.call("getRecordings", "meetingID=room-42&state=unpublished")).body)
        assert hidden.findtext("published") == "false"
        answer = await h.call("publishRecordings", f"recordID={rid}&publish=TRUE")
        assert b"<published>true</published>" in answer.body
        answer = await h.call("updateRecordings", f"recordID={rid}&meta_name=Renamed")
        assert b"<updated>true</updated>" in answer.body
        (renamed,) = recordings_of((await h.call("getRecordings", f"recordID={rid}")).body)
        assert renamed.findtext("name") == "Renamed"
        assert b"<deleted>true</deleted>" in (await h.call("deleteRecordings", f"recordID={rid}")).body
        assert b"notFound" in (await h.call("deleteRecordings", f"recordID={rid}")).body
        assert (await h.request(path)).code == 404

        # After the hold time nothing is left, neither in storage nor in the tables.
        await h.pool.execute("UPDATE tenant SET hold_time_days = 0")
        await h.pool.execute("UPDATE secret SET hold_time_days = 0")
        await retention.housekeep(h.runtime)
        for table in ("record_set", "record", "render_job", "callback_outbox"):
            assert await h.pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        assert await stored_files(h, recordings_config) == []
    receiver.stop()

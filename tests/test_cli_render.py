"""`b3lb recordprofile link|unlink|list`, `b3lb render`, and the render job in `b3lb recording list|show|
rerender`, against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from db_support import execute_sql, run
from test_cli import Cli, b3lb, count, fetch

from b3lb.recordings.storage import archive_key

SET = "66666666-6666-4666-8666-666666666666"  # nonces: the sets' row keys, never shown
OTHER = "77777777-7777-4777-8777-777777777777"
P_SET, P_OTHER = "a6666666-6666-4666-8666-666666666666", "a7777777-7777-4777-8777-777777777777"  # their public IDs


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Cli:
    cli = Cli(cli_env, monkeypatch, capsys)
    cli.ok("clustergroup", "add", "prod")
    for slug in ("abc", "xyz"):
        cli.ok("tenant", "add", slug, "--clustergroup", "prod")
    cli.ok("secret", "add", "ABC", "--sub-id", "0-1")
    cli.ok("recordprofile", "add", "hd")
    cli.ok("recordprofile", "add", "web", "--format", "webm")
    return cli


def links(cli: Cli) -> dict[str, list[str]]:
    return {row["name"]: row["links"] for row in cli.json("recordprofile", "list")}


# recordprofile link / unlink / list -----------------------------------------------------------


def test_link_and_unlink_profiles(cli: Cli) -> None:
    assert links(cli) == {"hd": [], "web": []}
    (row,) = cli.json("recordprofile", "link", "hd", "--tenant", "abc")
    assert (row["name"], row["format"], row["links"]) == ("hd", "MP4", ["tenant:ABC"])
    cli.ok("recordprofile", "link", "web", "--secret", "ABC-001")
    cli.ok("recordprofile", "link", "web", "--secret", "abc")  # the tenant's main secret (sub-id 0)
    cli.ok("recordprofile", "link", "web", "--tenant", "XYZ")
    assert links(cli) == {"hd": ["tenant:ABC"], "web": ["secret:ABC", "secret:ABC-001", "tenant:XYZ"]}
    table = cli.ok("recordprofile", "list")
    assert table.splitlines()[0].split()[-1] == "LINKS" and "secret:ABC, secret:ABC-001, tenant:XYZ" in table
    assert "already linked to secret ABC-001" in cli.fails(1, "recordprofile", "link", "web", "--secret", "ABC-1")
    (row,) = cli.json("recordprofile", "unlink", "web", "--secret", "ABC-001")
    assert row["links"] == ["secret:ABC", "tenant:XYZ"]
    assert "not linked to secret ABC-001" in cli.fails(1, "recordprofile", "unlink", "web", "--secret", "ABC-001")
    assert "not linked to tenant XYZ" in cli.fails(1, "recordprofile", "unlink", "hd", "--tenant", "XYZ")
    # A tenant's link and its main secret's are different links.
    assert "not linked to secret ABC" in cli.fails(1, "recordprofile", "unlink", "hd", "--secret", "ABC")
    assert count(cli.env, "record_profile_link") == 3
    # Removing a profile removes its links.
    cli.ok("recordprofile", "remove", "hd")
    assert links(cli) == {"web": ["secret:ABC", "tenant:XYZ"]} and count(cli.env, "record_profile_link") == 2


def test_link_refuses_bad_input(cli: Cli) -> None:
    assert "one of the arguments --tenant --secret is required" in cli.fails(2, "recordprofile", "link", "hd")
    assert "not allowed with" in cli.fails(2, "recordprofile", "link", "hd", "--tenant", "ABC", "--secret", "ABC")
    assert "no recording profile named '4k'" in cli.fails(1, "recordprofile", "link", "4k", "--tenant", "ABC")
    assert "no tenant 'QQQ'" in cli.fails(1, "recordprofile", "link", "hd", "--tenant", "QQQ")
    assert "no secret ABC-005" in cli.fails(1, "recordprofile", "link", "hd", "--secret", "ABC-005")
    assert "no secret XYZ" in cli.fails(1, "recordprofile", "link", "hd", "--secret", "XYZ")  # XYZ has none
    assert "invalid secret" in cli.fails(2, "recordprofile", "link", "hd", "--secret", "A-1")
    assert "invalid tenant slug" in cli.fails(2, "recordprofile", "unlink", "hd", "--tenant", "A1")
    assert "arguments are required" in cli.fails(2, "recordprofile", "unlink", "--tenant", "ABC")
    assert count(cli.env, "record_profile_link") == 0
    for command in ("list", "link", "unlink"):
        status, out, _ = cli("recordprofile", command, "--help")
        assert status == 0 and out.startswith("usage: b3lb recordprofile"), command


# recording list / show / rerender -------------------------------------------------------------


def add_set(cli: Cli, nonce: str, job: str | None = None) -> None:
    execute_sql(cli.env["DATABASE_URL"], f"""
        INSERT INTO record_set (id, nonce, public_id, secret_id, meeting_id, tenant_slug, status, archive_key,
                                archive_sha256, raw_size)
        SELECT '{nonce}', '{nonce}', '{"a" + nonce[1:]}', s.id, 'room', 'ABC', 'UPLOADED', 'aa/bb/{nonce}/raw.tar',
               '{'ab' * 32}', 10
        FROM secret s WHERE s.sub_id = 0;
    """)
    if job:
        execute_sql(cli.env["DATABASE_URL"], f"INSERT INTO render_job (recordset_id) VALUES ('{nonce}'); {job}")


def test_list_shows_the_render_job_and_its_progress(cli: Cli) -> None:
    add_set(cli, SET, f"""UPDATE render_job SET state = 'RUNNING', progress = 0.424, worker = 'box:1/render',
                          attempts = 1, lease_id = gen_random_uuid(), locked_until = now() + interval '1 minute'
                          WHERE recordset_id = '{SET}'""")
    add_set(cli, OTHER)
    rows = {row["id"]: row for row in cli.json("recording", "list")}
    assert (rows[P_SET]["render"], rows[P_SET]["progress"]) == ("RUNNING", 42)
    assert (rows[P_OTHER]["render"], rows[P_OTHER]["progress"]) == (None, None)
    table = cli.ok("recording", "list")
    assert table.splitlines()[0].split()[-1] == "RENDER" and "PROGRESS" not in table
    assert "RUNNING 42%" in table
    execute_sql(cli.env["DATABASE_URL"], "UPDATE render_job SET state = 'QUEUED'")
    rows = {row["id"]: row for row in cli.json("recording", "list")}
    assert (rows[P_SET]["render"], rows[P_SET]["progress"]) == ("QUEUED", None)


def test_show_gives_the_failure_and_ffmpeg_s_last_lines_and_rerender_resets_it(cli: Cli) -> None:
    tail = "frame=  100 fps=50\\nError while decoding \\x1b[31mstream\\nConversion failed!"
    add_set(cli, SET, f"""UPDATE render_job SET state = 'FAILED', attempts = 3, worker = 'box:1/render',
                          last_error = 'ffmpeg exited with status 1', ffmpeg_tail = E'{tail}'""")
    job = cli.json("recording", "show", P_SET)["render_job"]
    assert (job["state"], job["attempts"], job["worker"]) == ("FAILED", 3, "box:1/render")
    assert job["last_error"] == "ffmpeg exited with status 1" and job["progress"] is None
    assert job["ffmpeg_tail"].splitlines() == ["frame=  100 fps=50", "Error while decoding ?[31mstream",
                                               "Conversion failed!"]  # fmt: skip
    text = cli.ok("recording", "show", P_SET)
    assert "ffmpeg exited with status 1" in text and "ffmpeg's last lines:" in text
    assert "  Conversion failed!" in text and "\x1b" not in text
    (row,) = cli.json("recording", "rerender", P_SET)
    assert (row["job"], row["attempts"]) == ("QUEUED", 0)
    (stored,) = fetch(cli.env, "SELECT * FROM render_job")
    assert (stored["state"], stored["last_error"], stored["ffmpeg_tail"], stored["worker"]) == ("QUEUED", "", "", "")
    job = cli.json("recording", "show", P_SET)["render_job"]
    assert (job["state"], job["last_error"], job["ffmpeg_tail"], job["worker"]) == ("QUEUED", "", None, None)
    assert "ffmpeg's last lines" not in cli.ok("recording", "show", P_SET)


# b3lb render ----------------------------------------------------------------------------------


def test_render_refuses_bad_options(cli: Cli) -> None:
    for bad in ("0", "65", "two", "-1"):
        assert "--concurrency" in cli.fails(2, "render", "--concurrency", bad)
    assert "--metrics-port" in cli.fails(2, "render", "--metrics-port", "0")
    assert "--name" in cli.fails(2, "render", "--name", "two words")
    assert "--name" in cli.fails(2, "render", "--name", "x" * 101)
    status, out, _ = cli("render", "--help")
    assert status == 0 and out.startswith("usage: b3lb render")


def test_render_refuses_a_bad_render_configuration(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B3LB_RENDER_CONCURRENCY", "0")
    assert "render.concurrency" in cli.fails(2, "render", "--once")
    monkeypatch.setenv("B3LB_RENDER_CONCURRENCY", "1")
    monkeypatch.setenv("B3LB_RENDER_FFMPEG", "/no/such/ffmpeg")
    assert "render.ffmpeg" in cli.fails(2, "render", "--once")


def test_render_once_with_nothing_due(cli: Cli) -> None:
    pytest.importorskip("b3lb.render.pipeline")
    result = b3lb(cli.env, "render", "--once", "--name", "once")
    assert result.returncode == 0, result.stderr
    assert "0 render jobs processed" in result.stderr


def test_render_stops_on_sigterm(cli: Cli) -> None:
    pytest.importorskip("b3lb.render.pipeline")
    name = f"sig-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen([sys.executable, "-m", "b3lb.admin.cli", "render", "--name", name], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the worker's first log line: it runs
        assert f"render worker {name} started" in line, line
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err
    assert f"render worker {name} stopped" in out


def test_render_without_a_pipeline_fails_cleanly(cli: Cli, tmp_path) -> None:
    """A machine that cannot load the render pipeline: one error line, status 1 (not a traceback)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['b3lb.render.pipeline'] = None  # import fails like a missing library\n")
    env = {**cli.env, "PYTHONPATH": str(blocker) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = b3lb(env, "render", "--once")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: cannot render on this machine: the render pipeline cannot be loaded")
    assert result.stderr.count("\n") == 1


def test_render_once_renders_with_the_linked_profile(cli: Cli, tmp_path) -> None:
    """The console script end to end: a synthetic upload, a profile linked to the tenant, `b3lb render
    --once` with the real pipeline, then `b3lb recording show` lists the video."""
    pytest.importorskip("b3lb.render.pipeline")
    from b3lb.testing import synthetic as syn
    from b3lb.testing.fakerecording import tar_folder

    if syn.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg to make the synthetic recording")
    syn.make_presentation(tmp_path / "published", duration_s=4.0, slides=2, size=(640, 360), deskshare=None,
                          annotations=False)  # fmt: skip
    tar_folder(tmp_path / "published", tmp_path / "raw.tar", 1_700_000_000)
    stored = run(_put(archive_key(SET), (tmp_path / "raw.tar").read_bytes()))
    add_set(cli, SET, f"""UPDATE record_set SET archive_key = '{stored.key}', archive_sha256 = '{stored.sha256}',
                          raw_size = {stored.size} WHERE id = '{SET}'""")
    cli.ok("recordprofile", "add", "tiny", "--width", "320", "--height", "180", "--webcam-width", "80",
           "--webcam-height", "45")  # fmt: skip
    cli.ok("recordprofile", "link", "tiny", "--tenant", "ABC")  # ABC's sets get tiny only (not hd, web)
    result = b3lb(cli.env, "render", "--once", "--name", "cli-once", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "1 render jobs processed" in result.stderr
    assert '"render job' in result.stdout and "RENDERED" in result.stdout  # JSON log lines
    assert SET not in result.stdout  # logs name the set by its public_id, never by its nonce
    shown = cli.json("recording", "show", P_SET)
    assert shown["status"] == "RENDERED" and shown["render_job"] is None
    (record,) = shown["records"]
    assert (record["profile"], record["format"]) == ("tiny", "MP4") and record["size"] > 0
    assert count(cli.env, "render_job") == 0


async def _put(key: str, data: bytes):  # noqa: ANN202
    from b3lb.config import load_config
    from b3lb.recordings.storage import make_storage

    store = make_storage(load_config())  # the environment Cli set: the CLI's own storage
    try:
        return await store.put_bytes(key, data)
    finally:
        await store.close()

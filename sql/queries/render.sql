-- Queries of the render workers (b3lb/render/worker.py, jobs.py), of the records they add
-- (b3lb/recordings/records.py) and of `b3lb recordprofile link|unlink|list` and the render job
-- parts of `b3lb recording list|show|rerender` (b3lb/admin_render.py, b3lb/admin_recording.py).
--
-- Every write of a worker after its claim names the claim's lease_id (a UUID made per claim):
-- a worker whose job was requeued (upload, rerender) or taken over after its lease ran out
-- changes nothing. Lock order is the upload's: record_set row first, then the render_job row.

-- Claiming -------------------------------------------------------------------------------------

-- name: render_fail_abandoned
-- Jobs whose worker died (lease expired) on the last allowed attempt ($1): FAILED, not taken again.
-- (Logs name a set by its public_id: its id is its nonce, the upload credential.)
UPDATE render_job j
SET state = 'FAILED', locked_until = NULL,
    last_error = 'the worker ' || CASE WHEN j.worker = '' THEN '' ELSE j.worker || ' ' END
                 || 'stopped without finishing (its lease expired), attempt ' || j.attempts || ' of ' || $1::int
FROM record_set s
WHERE s.id = j.recordset_id AND j.state = 'RUNNING' AND j.locked_until < now() AND j.attempts >= $1::int
RETURNING s.public_id::text AS public_id, j.worker, j.attempts

-- name: render_claim
-- Take one due job: QUEUED and due, or RUNNING with an expired lease (its worker died). Rows
-- another worker holds are skipped. The set's archive comes along; $1 worker name, $2 lease seconds.
WITH due AS (
    SELECT j.recordset_id, j.state AS previous_state, j.worker AS previous_worker
    FROM render_job j
    WHERE ((j.state = 'QUEUED' AND j.not_before <= now()) OR (j.state = 'RUNNING' AND j.locked_until < now()))
      AND NOT EXISTS (SELECT 1 FROM record_set s WHERE s.id = j.recordset_id AND s.status = 'DELETING')
    ORDER BY j.not_before, j.queued_at
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE render_job j
SET state = 'RUNNING', worker = $1, lease_id = gen_random_uuid(), attempts = j.attempts + 1,
    locked_until = now() + make_interval(secs => $2::float8), started_at = now(), heartbeat_at = now(),
    progress = 0
FROM due, record_set s
WHERE j.recordset_id = due.recordset_id AND s.id = j.recordset_id
RETURNING j.recordset_id, j.attempts, j.lease_id, due.previous_state, due.previous_worker,
          s.nonce::text AS set_nonce, s.public_id::text AS public_id, s.archive_key, s.archive_sha256,
          CASE WHEN j.done_sha256 = s.archive_sha256 THEN j.done_profiles ELSE '{}' END AS done_profiles

-- name: render_extend
-- Heartbeat (and fence): the lease runs $3 seconds from now; progress $4 (NULL: unchanged).
-- No row: the job is no longer this claim's.
UPDATE render_job
SET locked_until = now() + make_interval(secs => $3::float8), heartbeat_at = now(),
    progress = COALESCE($4::real, progress)
WHERE recordset_id = $1 AND lease_id = $2 AND state = 'RUNNING'
RETURNING recordset_id

-- name: render_mark_done
-- A profile's record is stored from the claimed archive ($3): an attempt after a crash skips it.
UPDATE render_job
SET done_profiles = CASE WHEN done_sha256 = $3 THEN array_append(array_remove(done_profiles, $4::int), $4::int)
                         ELSE ARRAY[$4::int] END,
    done_sha256 = $3
WHERE recordset_id = $1 AND lease_id = $2 AND state = 'RUNNING'

-- name: render_lock_set
-- Held while a stored video is made the record's (a short transaction; the upload itself runs
-- before it, outside any transaction): the set can neither become DELETING (so housekeeping cannot
-- list its files before the new one is named) nor get another archive. NULL: deleting, or archive changed.
SELECT nonce::text AS set_nonce FROM record_set
WHERE id = $1 AND status <> 'DELETING' AND archive_sha256 = $2
FOR SHARE

-- name: render_lock_set_final
SELECT nonce::text AS set_nonce FROM record_set
WHERE id = $1 AND status <> 'DELETING' AND archive_sha256 = $2
FOR NO KEY UPDATE

-- name: render_profiles
-- The profiles to render for set $1: those linked to its secret, else to its tenant, else all.
WITH owner AS (
    SELECT rs.secret_id, COALESCE(k.tenant_id, t.id) AS tenant_id
    FROM record_set rs
    LEFT JOIN secret k ON k.id = rs.secret_id
    LEFT JOIN tenant t ON t.slug = rs.tenant_slug
    WHERE rs.id = $1
), by_secret AS (
    SELECT l.profile_id FROM record_profile_link l JOIN owner o ON l.secret_id = o.secret_id
), by_tenant AS (
    SELECT l.profile_id FROM record_profile_link l JOIN owner o ON l.tenant_id = o.tenant_id
)
SELECT p.* FROM record_profile p
WHERE CASE WHEN EXISTS (SELECT 1 FROM by_secret) THEN p.id IN (SELECT profile_id FROM by_secret)
           WHEN EXISTS (SELECT 1 FROM by_tenant) THEN p.id IN (SELECT profile_id FROM by_tenant)
           ELSE true END
ORDER BY p.name, p.id

-- Ending a job ---------------------------------------------------------------------------------

-- name: render_done
DELETE FROM render_job WHERE recordset_id = $1 AND lease_id = $2 AND state = 'RUNNING'
RETURNING attempts

-- name: render_unfinished_records
-- Records of the set still without a file (size 0) of profiles this job did not render ($2):
-- left by an earlier attempt whose profiles changed since. Their files go, then the rows.
SELECT id, file FROM record
WHERE recordset_id = $1 AND size = 0 AND NOT (profile_id = ANY($2::int[]))

-- name: render_delete_unfinished
DELETE FROM record WHERE id = ANY($1::int[]) AND size = 0

-- name: render_set_rendered
UPDATE record_set SET status = 'RENDERED' WHERE id = $1 AND status IN ('UPLOADED', 'RENDERED')

-- name: render_retry
-- A failed attempt: QUEUED again after $4 seconds, or FAILED when it was the last one ($3) or
-- cannot succeed ($7); $5 the reason, $6 ffmpeg's last lines.
UPDATE render_job
SET state = CASE WHEN $7::bool OR attempts >= $3::int THEN 'FAILED' ELSE 'QUEUED' END,
    not_before = now() + make_interval(secs => $4::float8), locked_until = NULL,
    last_error = left($5, 2000), ffmpeg_tail = left($6, 8000)
WHERE recordset_id = $1 AND lease_id = $2 AND state = 'RUNNING'
RETURNING state, attempts

-- name: render_release
-- A worker stopping (SIGTERM) gives its job back at once; the attempt does not count.
UPDATE render_job
SET state = 'QUEUED', not_before = now(), locked_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE recordset_id = $1 AND lease_id = $2 AND state = 'RUNNING'
RETURNING recordset_id

-- Records (b3lb/recordings/records.py) ---------------------------------------------------------

-- name: render_record_find
SELECT id, record_id, nonce::text AS nonce, file, size, published, deleting
FROM record WHERE recordset_id = $1 AND profile_id = $2

-- name: render_record_insert
-- A record without its file yet (size 0: invisible to the API and to playback, no callback),
-- its fields copied from the set like rec_add_record's. Nothing when the set is gone or deleting.
INSERT INTO record (recordset_id, record_id, profile_id, published, listed, file, meeting_id, nonce,
                    tenant_slug, meta_name, start_time, end_time, participants, format_type, size,
                    metadata, processing_ms)
SELECT rs.id, $3, p.id, $6, coalesce(lower(rs.metadata ->> 'gl-listed') = 'true', false), $5,
       rs.meeting_id, $4, rs.tenant_slug,
       left(CASE WHEN rs.meta_name = '' THEN p.name ELSE rs.meta_name || ' (' || p.name || ')' END, 256),
       rs.start_time, rs.end_time, rs.participants, rs.format_type, 0,
       rs.metadata - ARRAY['b3lb-recordset', 'endcallbackurl', 'bbb-recording-ready-url'], 0
FROM record_set rs, record_profile p
WHERE rs.id = $1 AND rs.status <> 'DELETING' AND p.id = $2
RETURNING id, record_id, nonce::text AS nonce, file, size, published, deleting

-- name: render_record_complete
-- The file is stored: its size makes the record visible, and a record that becomes visible now
-- (it had no file before) and is published gets its ready callback, in the same statement.
WITH old AS (
    SELECT id, size FROM record WHERE id = $1 AND NOT deleting FOR UPDATE
), done AS (
    UPDATE record r SET size = $2, processing_ms = $3
    FROM old WHERE r.id = old.id
    RETURNING r.id, r.record_id, r.nonce, r.file, r.size, r.published, r.recordset_id, old.size AS old_size
), outbox AS (
    INSERT INTO callback_outbox (record_id, url)
    SELECT done.id, rs.ready_url FROM done JOIN record_set rs ON rs.id = done.recordset_id
    WHERE done.old_size = 0 AND done.published AND rs.ready_url <> ''
    ON CONFLICT (record_id) DO NOTHING
    RETURNING id
)
SELECT done.id, done.record_id, done.nonce::text AS nonce, done.file, done.size, done.published,
       (SELECT id FROM outbox) AS outbox_id
FROM done

-- name: render_record_swap
-- A rendered video stored under key $4 becomes record $1's (size $2, processing_ms $3), if the row
-- still names file $5 and is not being deleted; its old file (old_file, deleted after the commit
-- when it differs) stays visible until this statement. A record that becomes visible now (it had
-- no file before) and is published gets its ready callback, in the same statement.
WITH old AS (
    SELECT id, size, file FROM record WHERE id = $1 AND file = $5 AND NOT deleting FOR UPDATE
), done AS (
    UPDATE record r SET size = $2, processing_ms = $3, file = $4
    FROM old WHERE r.id = old.id
    RETURNING r.id, r.record_id, r.nonce, r.file, r.size, r.published, r.recordset_id, old.size AS old_size,
              old.file AS old_file
), outbox AS (
    INSERT INTO callback_outbox (record_id, url)
    SELECT done.id, rs.ready_url FROM done JOIN record_set rs ON rs.id = done.recordset_id
    WHERE done.old_size = 0 AND done.published AND rs.ready_url <> ''
    ON CONFLICT (record_id) DO NOTHING
    RETURNING id
)
SELECT done.id, done.record_id, done.nonce::text AS nonce, done.file, done.size, done.published, done.old_file,
       (SELECT id FROM outbox) AS outbox_id
FROM done

-- name: render_record_drop
-- store_video's clean-up when its file could not be stored (the file is deleted first).
DELETE FROM record WHERE id = $1 AND size = 0

-- Admin: profile links, job details, rerender ----------------------------------------------------

-- name: render_link_add
INSERT INTO record_profile_link (profile_id, tenant_id, secret_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING id

-- name: render_link_remove
DELETE FROM record_profile_link
WHERE profile_id = $1 AND tenant_id IS NOT DISTINCT FROM $2::int AND secret_id IS NOT DISTINCT FROM $3::int
RETURNING id

-- name: render_link_list
-- Every link with the tenant slug and (for a secret's) sub-id, for labels like ABC or ABC-001.
SELECT p.name AS profile, t.slug, k.sub_id
FROM record_profile_link l
JOIN record_profile p ON p.id = l.profile_id
LEFT JOIN secret k ON k.id = l.secret_id
JOIN tenant t ON t.id = COALESCE(l.tenant_id, k.tenant_id)
ORDER BY p.name, t.slug, k.sub_id NULLS FIRST

-- name: render_adm_jobs
-- `b3lb recording list`: the render jobs of the listed sets ($1).
SELECT recordset_id, state, attempts, progress FROM render_job WHERE recordset_id = ANY($1::text[])

-- name: render_adm_job
SELECT state, attempts, worker, started_at, heartbeat_at, locked_until, progress, last_error, ffmpeg_tail
FROM render_job WHERE recordset_id = $1

-- name: render_rerender
-- `b3lb recording rerender`: the set's job queued afresh and due now (a FAILED, RUNNING or missing
-- one too), every profile rendered again. A running worker's lease is gone with its lease_id: it
-- stops at its next heartbeat.
INSERT INTO render_job (recordset_id) VALUES ($1)
ON CONFLICT (recordset_id) DO UPDATE SET
    state = 'QUEUED', attempts = 0, not_before = now(), locked_until = NULL, last_error = '', queued_at = now(),
    worker = '', lease_id = NULL, started_at = NULL, heartbeat_at = NULL, progress = 0, ffmpeg_tail = '',
    done_profiles = '{}', done_sha256 = ''
RETURNING recordset_id AS id, state, attempts, queued_at

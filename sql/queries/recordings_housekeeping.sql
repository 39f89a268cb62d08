-- Recording-ready callback outbox (b3lb/recordings/callbacks.py) and retention
-- (b3lb/recordings/retention.py).

-- Outbox ---------------------------------------------------------------------------------------

-- name: outbox_claim
-- Up to $1 due callbacks, locked until the round's transaction ends: rows another process's round
-- holds are skipped (never waited for), and only the outbox rows are locked (OF o), not the
-- records, sets or secrets. The record's meeting and the set's secrets come along (read now, not
-- when the row was queued).
SELECT o.id, o.url, o.attempts, r.record_id,
       COALESCE(NULLIF(r.meeting_id, ''), s.meeting_id) AS meeting_id,
       (r.deleting OR s.status = 'DELETING') AS gone,
       k.secret, k.secret2
FROM callback_outbox o
JOIN record r ON r.id = o.record_id
JOIN record_set s ON s.id = r.recordset_id
LEFT JOIN secret k ON k.id = s.secret_id
WHERE o.next_attempt <= now()
ORDER BY o.next_attempt
LIMIT $1
FOR UPDATE OF o SKIP LOCKED

-- name: outbox_round_timeout
-- For the rest of the round's transaction only: the server ends it when it idles longer than $1 ms
-- (a hung process), which gives its rows back.
SELECT set_config('idle_in_transaction_session_timeout', $1::text, true)

-- name: outbox_done
-- Delivered, final answer, dropped or given up.
DELETE FROM callback_outbox WHERE id = ANY($1::bigint[])

-- name: outbox_retry
-- Try again later: per row ($1) its attempts so far ($2), the delay in seconds ($3) and why ($4).
UPDATE callback_outbox o
SET attempts = u.attempts, next_attempt = now() + make_interval(secs => u.delay), last_error = u.error
FROM unnest($1::bigint[], $2::integer[], $3::float8[], $4::text[]) AS u(id, attempts, delay, error)
WHERE o.id = u.id

-- name: outbox_depth
SELECT count(*) FROM callback_outbox

-- Retention ------------------------------------------------------------------------------------

-- name: retention_mark_expired
-- Spec 4.10: effective hold days = max(secret, tenant) if either is 0, else the smaller one,
-- counted from the recording's end (its upload, or the meeting's creation, while no upload told
-- us the end). A set still waiting for its node's upload (UNKNOWN: the meeting may still run) or
-- its rendering (UPLOADED) is kept for at least $1 days (recordings.pending_days) from its
-- creation as well: a short hold time must not delete a set the node is about to upload to.
-- Sets whose secret was deleted go at once.
UPDATE record_set s
SET status = 'DELETING'
WHERE s.status <> 'DELETING'
  AND (s.secret_id IS NULL OR (
        (s.status = 'RENDERED' OR s.created_at + make_interval(days => $1::integer) <= now())
        AND EXISTS (
          SELECT 1 FROM secret k JOIN tenant t ON t.id = k.tenant_id
          WHERE k.id = s.secret_id
            AND COALESCE(s.end_time, s.uploaded_at, s.created_at) + make_interval(days =>
                  CASE WHEN k.hold_time_days = 0 OR t.hold_time_days = 0
                       THEN greatest(k.hold_time_days, t.hold_time_days)
                       ELSE least(k.hold_time_days, t.hold_time_days) END) <= now())))
RETURNING s.id

-- name: retention_deleting_sets
-- Sets to remove, a batch of $1 at a time, after id $2 (one pass per run: a set that cannot go
-- yet waits for the next run instead of being retried in a loop).
SELECT id, nonce::text AS nonce, archive_key FROM record_set
WHERE status = 'DELETING' AND id > $2
ORDER BY id
LIMIT $1

-- name: retention_set_files
SELECT id, file FROM record WHERE recordset_id = $1

-- name: retention_set_delete
-- The set row last, after its files ($2: the records whose files were deleted): its records,
-- render job and outbox rows go with it. Nothing when a record with a file of its own was added
-- meanwhile (the next run deletes that file first).
DELETE FROM record_set s
WHERE s.id = $1 AND s.status = 'DELETING'
  AND NOT EXISTS (SELECT 1 FROM record r WHERE r.recordset_id = s.id AND r.id <> ALL($2::integer[]))

-- name: retention_deleting_records
-- Records a deleteRecordings left half-done (file maybe gone, row still there).
SELECT id, file FROM record WHERE deleting AND id > $2 ORDER BY id LIMIT $1

-- name: retention_record_delete
DELETE FROM record WHERE id = $1 AND deleting

-- name: retention_gauges
-- What storage holds (archives by their recorded size, videos by theirs) and the render queue.
SELECT (SELECT COALESCE(sum(raw_size), 0) FROM record_set WHERE archive_key <> '')::float8 AS archive_bytes,
       (SELECT COALESCE(sum(size), 0) FROM record WHERE file <> '')::float8 AS video_bytes,
       (SELECT count(*) FROM render_job WHERE state = 'QUEUED') AS queued,
       (SELECT count(*) FROM render_job WHERE state = 'RUNNING') AS running,
       (SELECT count(*) FROM render_job WHERE state = 'FAILED') AS failed

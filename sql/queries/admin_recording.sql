-- Queries of `b3lb recording list|show|delete|rerender` and the admin API (b3lb/admin/recordings.py).
-- A set is named by its public_id ($1 as text); its row key `id` is its nonce (the meeting's, an upload
-- credential), selected as `set_key` for the follow-up queries and never shown. Its secret is NULL once
-- the secret was deleted.

-- name: adm_rec_list
-- $1 tenant slug, $2 status (NULL: any), newest first, at most $3 sets. The size counts what storage
-- holds for the set: the archive (raw_size, as the housekeeping gauges do) and its rendered videos.
SELECT rs.id AS set_key, rs.public_id::text AS id, rs.tenant_slug AS tenant, rs.meeting_id, rs.meta_name AS name,
       rs.status,
       count(r.id) AS records,
       (CASE WHEN rs.archive_key <> '' THEN rs.raw_size ELSE 0 END + COALESCE(sum(r.size), 0))::bigint AS size,
       rs.created_at, rs.uploaded_at
FROM record_set rs
LEFT JOIN record r ON r.recordset_id = rs.id
WHERE ($1::text IS NULL OR rs.tenant_slug = $1::text) AND ($2::text IS NULL OR rs.status = $2::text)
GROUP BY rs.id
ORDER BY rs.created_at DESC, rs.public_id
LIMIT $3

-- name: adm_rec_set
-- One set with its secret and its render job (NULL columns when there is none).
SELECT rs.id AS set_key, rs.public_id::text AS id, rs.tenant_slug, s.sub_id, rs.meeting_id, rs.meta_name, rs.status,
       rs.internal_id, rs.created_at, rs.uploaded_at, rs.start_time, rs.end_time, rs.participants,
       rs.raw_size, rs.archive_key, rs.archive_sha256, rs.ready_url, rs.metadata::text AS metadata,
       j.state AS job_state, j.attempts AS job_attempts, j.not_before AS job_not_before,
       j.locked_until AS job_locked_until, j.queued_at AS job_queued_at, j.last_error AS job_last_error
FROM record_set rs
LEFT JOIN secret s ON s.id = rs.secret_id
LEFT JOIN render_job j ON j.recordset_id = rs.id
WHERE rs.public_id = $1::uuid

-- name: adm_rec_records
SELECT r.record_id, p.name AS profile, p.format, r.published, r.listed, r.deleting, r.size, r.file,
       r.nonce::text AS nonce
FROM record r
JOIN record_profile p ON p.id = r.profile_id
WHERE r.recordset_id = $1
ORDER BY p.name, r.id

-- name: adm_rec_outbox
-- Ready callbacks of the set's records not delivered yet.
SELECT o.id, r.record_id, o.url, o.attempts, o.next_attempt, o.last_error
FROM callback_outbox o
JOIN record r ON r.id = o.record_id
WHERE r.recordset_id = $1
ORDER BY o.id

-- name: adm_rec_mark_deleting
-- Step 1 of a delete, committed before any file goes: the API stops showing the set, uploads are
-- refused, and housekeeping finishes the job if the CLI cannot.
UPDATE record_set SET status = 'DELETING' WHERE id = $1 RETURNING id

-- name: adm_rec_status
SELECT status FROM record_set WHERE public_id = $1::uuid

-- name: adm_rec_deleting_set
-- Step 2 of a delete: the one set to purge (as retention_deleting_sets reads them), if still DELETING.
SELECT id, nonce::text AS nonce, archive_key FROM record_set WHERE public_id = $1::uuid AND status = 'DELETING'

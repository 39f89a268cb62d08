-- Queries of the recordings API (getRecordings & co.), the playback download and the helper that adds
-- rendered records (b3lb/recordings/api.py, playback.py, records.py). Scope is always a list of secret
-- row ids ($1): the calling secret, or every secret of its tenant for sub_id 0. record_set_secret_idx
-- (secret_id, created_at) finds the sets, record_recordset_id_profile_id_key their records.
-- A record is visible when its file is complete (size > 0), it is not being deleted and its set is not.

-- name: rec_list
-- getRecordings: rendered records, and (when $5) uploaded sets without a visible record yet
-- (state processing, recordID = the set's public_id, never its id: that is the upload nonce). $2 meeting IDs and $3 recordID LIKE patterns are NULL for "any";
-- $4 the published values wanted; $6 a jsonb object the metadata must contain; $7 offset; $8 limit.
SELECT record_id, meeting_id, internal_id, name, set_name, published, processing, start_ms, end_ms, participants,
       raw_size, metadata, end_callback_url, size, format_type, nonce, processing_ms, minutes
FROM (
    SELECT rs.created_at AS set_created, rs.id AS set_id, r.profile_id,
           r.record_id, rs.meeting_id, rs.internal_id, r.meta_name AS name, rs.meta_name AS set_name,
           r.published, false AS processing,
           (extract(epoch FROM r.start_time) * 1000)::bigint AS start_ms,
           (extract(epoch FROM r.end_time) * 1000)::bigint AS end_ms,
           r.participants, rs.raw_size, r.metadata::text AS metadata, rs.end_callback_url, r.size,
           r.format_type, r.nonce::text AS nonce, r.processing_ms,
           coalesce(floor(extract(epoch FROM r.end_time - r.start_time) / 60), 0)::int AS minutes
    FROM record_set rs
    CROSS JOIN LATERAL (
        SELECT * FROM record r
        WHERE r.recordset_id = rs.id AND r.size > 0 AND NOT r.deleting AND r.published = ANY($4::bool[])
          AND ($3::text[] IS NULL OR r.record_id LIKE ANY($3::text[]))
          AND r.metadata @> $6::jsonb
        -- OFFSET 0 keeps the subquery as it is: one index probe per set of the caller. Joined
        -- plainly, the planner hashes the sets and scans every record of every tenant instead.
        OFFSET 0
    ) r
    WHERE rs.secret_id = ANY($1::int[]) AND rs.status <> 'DELETING'
      AND ($2::text[] IS NULL OR rs.meeting_id = ANY($2::text[]))
    UNION ALL
    SELECT rs.created_at, rs.id, NULL,
           rs.public_id::text, rs.meeting_id, rs.internal_id, rs.meta_name, rs.meta_name, false, true,
           (extract(epoch FROM rs.start_time) * 1000)::bigint,
           (extract(epoch FROM rs.end_time) * 1000)::bigint,
           rs.participants, rs.raw_size, rs.metadata::text, rs.end_callback_url, 0,
           rs.format_type, '', 0, 0
    FROM record_set rs
    WHERE $5::bool AND rs.secret_id = ANY($1::int[]) AND rs.status = 'UPLOADED'
      AND ($2::text[] IS NULL OR rs.meeting_id = ANY($2::text[]))
      AND ($3::text[] IS NULL OR rs.public_id::text LIKE ANY($3::text[]))
      AND rs.metadata @> $6::jsonb
      AND NOT EXISTS (SELECT 1 FROM record v WHERE v.recordset_id = rs.id AND v.size > 0 AND NOT v.deleting)
) listed
ORDER BY set_created, set_id, profile_id NULLS FIRST
OFFSET $7 LIMIT $8

-- name: rec_publish
-- publishRecordings: $2 exact recordIDs, $3 the new value. Returns one row per record found.
UPDATE record r SET published = $3
FROM record_set rs
WHERE rs.id = r.recordset_id AND rs.secret_id = ANY($1::int[]) AND rs.status <> 'DELETING'
  AND r.record_id = ANY($2::text[]) AND r.size > 0 AND NOT r.deleting
RETURNING r.id

-- name: rec_mark_deleting
-- deleteRecordings, step 1: hide the records (files are deleted next, then the rows); move uploaded
-- sets without a visible record (recordID = the set's public_id) to DELETING for housekeeping, and so a set
-- whose last visible record goes now (nothing of the recording is left to show or to re-render).
WITH records AS (
    UPDATE record r SET deleting = true
    FROM record_set rs
    WHERE rs.id = r.recordset_id AND rs.secret_id = ANY($1::int[]) AND rs.status <> 'DELETING'
      AND r.record_id = ANY($2::text[]) AND r.size > 0 AND NOT r.deleting
    RETURNING r.id, r.file, r.recordset_id
), sets AS (
    UPDATE record_set rs SET status = 'DELETING'
    WHERE rs.secret_id = ANY($1::int[]) AND rs.public_id::text = ANY($2::text[]) AND rs.status = 'UPLOADED'
      AND NOT EXISTS (SELECT 1 FROM record v WHERE v.recordset_id = rs.id AND v.size > 0 AND NOT v.deleting)
    RETURNING rs.id
), emptied AS (
    -- (the statement's snapshot still shows the records above as not deleting: they are left out by id)
    UPDATE record_set rs SET status = 'DELETING'
    WHERE rs.id IN (SELECT recordset_id FROM records)
      AND NOT EXISTS (SELECT 1 FROM record v WHERE v.recordset_id = rs.id AND v.size > 0 AND NOT v.deleting
                      AND v.id NOT IN (SELECT id FROM records))
    RETURNING rs.id
)
-- (emptied runs although nothing reads it: every data-modifying WITH runs to completion)
SELECT id, file FROM records
UNION ALL
SELECT NULL, '' FROM sets

-- name: rec_delete_rows
-- deleteRecordings, step 2: the rows whose files are gone (their outbox rows cascade).
DELETE FROM record WHERE id = ANY($1::int[]) AND deleting

-- name: rec_update
-- updateRecordings: remove the keys $3, merge $4, rename to $5 (NULL: keep), gl-listed $6 (NULL: keep)
-- on the records $2 and on uploaded sets without a visible record (by their public_id). Nothing
-- changes when the update would take a row's metadata past $7 keys or $8 bytes of JSON (as
-- PostgreSQL writes it) and beyond what it held before (a node's bigger metadata may still shrink):
-- `too_many` / `too_big` say so. Answers how many rows matched and how many changed.
WITH targets AS (
    SELECT r.id, r.metadata AS old, (r.metadata - $3::text[]) || $4::jsonb AS new
    FROM record r JOIN record_set rs ON rs.id = r.recordset_id
    WHERE rs.secret_id = ANY($1::int[]) AND rs.status <> 'DELETING'
      AND r.record_id = ANY($2::text[]) AND r.size > 0 AND NOT r.deleting
    FOR UPDATE OF r
), set_targets AS (
    SELECT rs.id, rs.metadata AS old, (rs.metadata - $3::text[]) || $4::jsonb AS new
    FROM record_set rs
    WHERE rs.secret_id = ANY($1::int[]) AND rs.public_id::text = ANY($2::text[]) AND rs.status = 'UPLOADED'
      AND NOT EXISTS (SELECT 1 FROM record v WHERE v.recordset_id = rs.id AND v.size > 0 AND NOT v.deleting)
    FOR UPDATE OF rs
), sizes AS (
    SELECT (SELECT count(*) FROM jsonb_object_keys(t.new)) AS new_keys,
           (SELECT count(*) FROM jsonb_object_keys(t.old)) AS old_keys,
           octet_length(t.new::text) AS new_bytes, octet_length(t.old::text) AS old_bytes
    FROM (SELECT old, new FROM targets UNION ALL SELECT old, new FROM set_targets) t
), refused AS (
    SELECT coalesce(bool_or(new_keys > $7 AND new_keys > old_keys), false) AS too_many,
           coalesce(bool_or(new_bytes > $8 AND new_bytes > old_bytes), false) AS too_big
    FROM sizes
), changed AS (
    UPDATE record r
    SET metadata = t.new, meta_name = coalesce($5, r.meta_name), listed = coalesce($6, r.listed)
    FROM targets t, refused
    WHERE r.id = t.id AND NOT (refused.too_many OR refused.too_big)
      AND (t.new, coalesce($5, r.meta_name), coalesce($6, r.listed)) IS DISTINCT FROM (r.metadata, r.meta_name, r.listed)
    RETURNING r.id
), set_changed AS (
    UPDATE record_set rs
    SET metadata = t.new, meta_name = coalesce($5, rs.meta_name)
    FROM set_targets t, refused
    WHERE rs.id = t.id AND NOT (refused.too_many OR refused.too_big)
      AND (t.new, coalesce($5, rs.meta_name)) IS DISTINCT FROM (rs.metadata, rs.meta_name)
    RETURNING rs.id
)
SELECT (SELECT count(*) FROM targets) + (SELECT count(*) FROM set_targets) AS matched,
       (SELECT count(*) FROM changed) + (SELECT count(*) FROM set_changed) AS changed,
       refused.too_many, refused.too_big
FROM refused

-- name: rec_exists
-- getRecordingTextTracks: whether any of the recordIDs $2 is a visible record in scope.
SELECT EXISTS (
    SELECT 1 FROM record r JOIN record_set rs ON rs.id = r.recordset_id
    WHERE rs.secret_id = ANY($1::int[]) AND rs.status <> 'DELETING'
      AND r.record_id = ANY($2::text[]) AND r.size > 0 AND NOT r.deleting
)

-- name: rec_playback
-- GET /b3lb/r/{nonce}: the stored file of a visible, published record.
SELECT r.file, r.size
FROM record r JOIN record_set rs ON rs.id = r.recordset_id
WHERE r.nonce = $1 AND r.size > 0 AND NOT r.deleting AND r.published AND rs.status <> 'DELETING'

-- name: rec_video_target
-- records.store_video: the set's nonce and the profile's format, to name the file before the row exists.
SELECT rs.nonce::text AS set_nonce, p.format
FROM record_set rs, record_profile p
WHERE rs.id = $1 AND p.id = $2

-- name: rec_add_record
-- records.add_record: one rendered record, its fields copied from the set (without the keys that
-- carry the LB's own nonces or the frontend's callback URLs), and in the same statement the ready
-- callback of a published record when the set has a ready URL.
WITH rs AS (
    SELECT id, meeting_id, tenant_slug, meta_name, start_time, end_time, participants, format_type,
           metadata - ARRAY['b3lb-recordset', 'endcallbackurl', 'bbb-recording-ready-url'] AS metadata, ready_url
    FROM record_set WHERE id = $1 AND status <> 'DELETING'
    FOR SHARE
), added AS (
    INSERT INTO record (recordset_id, record_id, profile_id, published, listed, file, meeting_id, nonce,
                        tenant_slug, meta_name, start_time, end_time, participants, format_type, size,
                        metadata, processing_ms)
    SELECT rs.id, $3, p.id, $6, coalesce(lower(rs.metadata ->> 'gl-listed') = 'true', false), $5,
           rs.meeting_id, $4, rs.tenant_slug,
           left(CASE WHEN rs.meta_name = '' THEN p.name ELSE rs.meta_name || ' (' || p.name || ')' END, 256),
           rs.start_time, rs.end_time, rs.participants, rs.format_type, $7, rs.metadata, $8
    FROM rs, record_profile p WHERE p.id = $2
    RETURNING id, record_id, nonce, file, size, published
), outbox AS (
    INSERT INTO callback_outbox (record_id, url)
    SELECT added.id, rs.ready_url FROM added, rs WHERE added.published AND rs.ready_url <> ''
    RETURNING id
)
SELECT added.*, (SELECT id FROM outbox) AS outbox_id FROM added

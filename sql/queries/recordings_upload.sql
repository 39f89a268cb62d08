-- Queries of the node upload endpoint (b3lb/recordings/upload.py, spec 4.10).

-- name: upload_find_set
-- Before the body is read: does a set with this nonce take an upload? (DELETING ones do not.)
-- Its public_id names it in logs (the nonce is the upload credential).
SELECT public_id::text FROM record_set WHERE id = $1::uuid::text AND status <> 'DELETING'

-- name: upload_lock_set
-- After the body and the archive's commit: the set, locked until the upload's transaction ends, so
-- that of two concurrent uploads of one set the second updates the row only after the first.
SELECT status, archive_key, archive_sha256 FROM record_set
WHERE id = $1::uuid::text AND status <> 'DELETING'
FOR UPDATE

-- name: upload_store_set
-- The archive is stored: the set is UPLOADED with what metadata.xml says, and its render job is
-- (re)queued. A RENDERED set keeps metadata changed through updateRecordings over the node's.
WITH stored AS (
    UPDATE record_set SET
        status = 'UPLOADED',
        archive_key = $2,
        archive_sha256 = $3,
        raw_size = $4,
        uploaded_at = now(),
        internal_id = $5,
        meta_name = CASE WHEN $6::text = '' THEN meta_name ELSE $6::text END,
        start_time = COALESCE(to_timestamp($7::bigint / 1000.0), start_time),
        end_time = COALESCE(to_timestamp($8::bigint / 1000.0), end_time),
        participants = $9,
        metadata = CASE WHEN status = 'RENDERED' THEN $10::jsonb || metadata ELSE $10::jsonb END
    WHERE id = $1::uuid::text
    RETURNING id
)
INSERT INTO render_job (recordset_id)
SELECT id FROM stored
ON CONFLICT (recordset_id) DO UPDATE SET
    state = 'QUEUED', attempts = 0, not_before = now(), locked_until = NULL, last_error = '', queued_at = now()
RETURNING recordset_id

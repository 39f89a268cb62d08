-- Record sets as the BBB calls make and end them (b3lb/api/create.py, b3lb/callbacks.py).

-- name: record_set_open
-- A new meeting of a recording tenant: its set waits (UNKNOWN) for the node's upload. The set's
-- id is the meeting nonce, which the node gets as meta_b3lb-recordset.
INSERT INTO record_set (id, nonce, secret_id, meeting_id, tenant_slug, meta_name, ready_url, end_callback_url)
VALUES ($1::uuid::text, $1::uuid, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO NOTHING

-- name: record_set_unrecorded
-- The node says nobody recorded (recordingmarks=false): nothing will be uploaded.
DELETE FROM record_set WHERE nonce = $1 AND meeting_id = $2 AND status = 'UNKNOWN'

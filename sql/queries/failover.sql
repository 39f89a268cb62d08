-- Moving meetings off nodes that failed them (b3lb/api/failover.py, b3lb/api/create.py; sql/0009_failover.sql).

-- name: meeting_move
-- Move a meeting's row to node $2 with a fresh nonce, only while it still has nonce $6 (the placement
-- the mover saw): of concurrent movers in any number of processes exactly one gets the row back.
-- $3-$5, $7: name, callback URLs and stored create of a create that restarts the room (NULL: kept,
-- as a failover re-creates it as it was); $8: a failover's claim (state 1 until its create answered).
UPDATE meeting
SET node_id = $2, nonce = gen_random_uuid(), create_time = now(),
    meeting_name = coalesce($3, meeting_name), end_callback_url = coalesce($4, end_callback_url),
    recording_ready_url = coalesce($5, recording_ready_url), create_params = coalesce($7::jsonb, create_params),
    failover_state = CASE WHEN $8 THEN 1 ELSE 0 END, failover_at = CASE WHEN $8 THEN now() END,
    attendees = 0, listeners = 0, voice = 0, videos = 0, moderators = 0, xml = NULL
WHERE id = $1 AND nonce = $6
RETURNING id, secret_id, meeting_id, node_id, nonce, create_time, attendees, failover_state,
          meeting_name, end_callback_url, recording_ready_url, create_params::text AS create_params

-- name: meeting_failover_state
-- Where a meeting is now, and whether a failover's claim on it is still fresh ($2 seconds).
SELECT id, secret_id, meeting_id, node_id, nonce, attendees, failover_state,
       failover_state = 1 AND failover_at < now() - make_interval(secs => $2) AS claim_stale
FROM meeting WHERE id = $1

-- name: meeting_recreated
-- The failover's create succeeded on the row's node: joins may go there (state 2).
UPDATE meeting SET failover_state = 2, failover_at = NULL WHERE id = $1 AND nonce = $2 AND failover_state = 1

-- name: meeting_failover_revert
-- No node took the meeting: the row goes back to where it was (node $3, nonce $4, state $5), so
-- nothing is lost and the next join tries again. A claim it had before (state 1) is one nobody works
-- on any more: stale at once, for the next join to take over.
UPDATE meeting SET node_id = $3, nonce = $4, failover_state = $5::smallint,
                   failover_at = CASE WHEN $5::smallint = 1 THEN '-infinity'::timestamptz END
WHERE id = $1 AND nonce = $2

-- name: meeting_create_params
SELECT create_params::text FROM meeting WHERE id = $1

-- Taking nodes out of service: drain, panic, cluster-wide maintenance (b3lb/admin/lifecycle.py).

-- name: lifecycle_node_maintenance
UPDATE node SET maintenance = $2 WHERE id = $1;

-- name: lifecycle_cluster_maintenance
-- Every node of the cluster; returns the nodes whose flag changed.
UPDATE node SET maintenance = $2 WHERE cluster_id = $1 AND maintenance <> $2 RETURNING id;

-- name: lifecycle_node_target
-- What a panic needs to call the node: its address, secret and its cluster's checksum algorithm.
SELECT n.id, n.cluster_id, n.slug, n.domain, n.secret, n.protocol, n.port, n.bbb_endpoint, n.load_endpoint,
       c.name AS cluster, c.sha_algorithm
FROM node n JOIN cluster c ON c.id = n.cluster_id
WHERE n.id = $1;

-- name: lifecycle_panic_lock
-- Session lock per node: two panics of one node never send callbacks and ends side by side.
SELECT pg_try_advisory_lock(hashtext('b3lb-panic:' || current_schema()), $1::integer);

-- name: lifecycle_panic_unlock
SELECT pg_advisory_unlock(hashtext('b3lb-panic:' || current_schema()), $1::integer);

-- name: lifecycle_node_meetings
-- The meetings routed to a node, with what their end callback needs. `recorded`: created with
-- record=true, as its node last reported (BBB's <recording>); NULL element (never polled): false.
SELECT m.id, m.nonce, m.meeting_id, m.end_callback_url, t.slug AS tenant, s.sub_id,
       coalesce(strpos(m.xml, '<recording>true</recording>') > 0, false) AS recorded
FROM meeting m
JOIN secret s ON s.id = m.secret_id
JOIN tenant t ON t.id = s.tenant_id
WHERE m.node_id = $1
ORDER BY m.id;

-- name: lifecycle_callbacks_delivered
-- Panic told these frontends itself: the node's own end callback must not relay to them again.
UPDATE meeting SET end_callback_url = ''
FROM unnest($1::bigint[], $2::uuid[]) AS d(id, nonce)
WHERE meeting.id = d.id AND meeting.nonce = d.nonce AND meeting.end_callback_url <> '';

-- name: lifecycle_panic_drop
-- $1 node id, $2/$3 ids and nonces of the meetings a panic ended. Only rows still as they were read
-- are deleted (a meeting moved elsewhere meanwhile has a new nonce and node and stays). A row whose
-- end callback panic could not deliver is kept in meeting_ended, so the node's own end callback (if it
-- comes) relays it with retries, as after an `end` through the API; durations are counted as for
-- any ended meeting (spec 4.6: meetings of 12 hours or more are left out).
WITH gone AS (
    DELETE FROM meeting m
    USING unnest($2::bigint[], $3::uuid[]) AS d(id, nonce)
    WHERE m.id = d.id AND m.nonce = d.nonce AND m.node_id = $1
    RETURNING m.id, m.nonce, m.secret_id, m.meeting_id, m.end_callback_url, m.create_time
), kept AS (
    INSERT INTO meeting_ended (nonce, secret_id, meeting_id, end_callback_url, create_time)
    SELECT nonce, secret_id, meeting_id, end_callback_url, create_time FROM gone WHERE end_callback_url <> ''
    ON CONFLICT (nonce) DO NOTHING
), counted AS (
    INSERT INTO secret_counter AS c (secret_id, meeting_duration_count, meeting_duration_seconds)
    SELECT secret_id, count(*), sum(floor(extract(epoch FROM now() - create_time)))::bigint
    FROM gone
    WHERE create_time <= now() AND create_time > now() - interval '12 hours'
    GROUP BY secret_id
    ON CONFLICT (secret_id) DO UPDATE SET
        meeting_duration_count = c.meeting_duration_count + excluded.meeting_duration_count,
        meeting_duration_seconds = c.meeting_duration_seconds + excluded.meeting_duration_seconds,
        updated_at = now()
)
SELECT id, nonce, secret_id, meeting_id FROM gone;

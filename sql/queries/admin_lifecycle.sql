-- Taking nodes out of service: drain, panic, cluster-wide maintenance (b3lb/admin/lifecycle.py).

-- name: lifecycle_node_maintenance
UPDATE node SET maintenance = $2 WHERE id = $1;

-- name: lifecycle_cluster_maintenance
-- The cluster's own switch (sql/0011); each node's flag stays as it is. Returns the id when it changed.
UPDATE cluster SET maintenance = $2 WHERE id = $1 AND maintenance <> $2 RETURNING id;

-- name: lifecycle_node_flags
-- The two maintenance switches of a node (its own, its cluster's) and whether it is in error.
SELECT n.maintenance AS node_maintenance, c.maintenance AS cluster_maintenance, n.has_errors
FROM node n JOIN cluster c ON c.id = n.cluster_id
WHERE n.id = $1;

-- name: lifecycle_node_target
-- What a panic needs to call the node: its address, secret and its cluster's checksum algorithm.
SELECT n.id, n.cluster_id, n.slug, n.domain, n.secret, n.protocol, n.port, n.bbb_endpoint, n.load_endpoint,
       c.name AS cluster, c.sha_algorithm
FROM node n JOIN cluster c ON c.id = n.cluster_id
WHERE n.id = $1;

-- name: lifecycle_panic_lock
-- Session lock per node: two panics of one node never run side by side. Taken by the panic's
-- first transaction and held until it finished (the connection's session, not the transaction).
SELECT pg_try_advisory_lock(hashtext('b3lb-panic:' || current_schema()), $1::integer);

-- name: lifecycle_panic_unlock
SELECT pg_advisory_unlock(hashtext('b3lb-panic:' || current_schema()), $1::integer);

-- name: lifecycle_panic_unlock_all
-- After a panic's first transaction failed: whatever this connection's session holds goes.
SELECT pg_advisory_unlock_all();

-- name: lifecycle_panic_running
-- Whether some session holds the node's panic lock (two-key advisory locks show as classid/objid, objsubid 2).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = hashtext('b3lb-panic:' || current_schema())::oid AND objid = $1::integer::oid
);

-- name: lifecycle_panic_last
-- The node's last panic audit row ($1: CLUSTER/SLUG): started, finished or failed.
SELECT at, detail::text AS detail FROM admin_audit
WHERE action = 'node.panic' AND target = $1
ORDER BY id DESC
LIMIT 1;

-- name: lifecycle_panic_take
-- Every meeting routed to node $1 leaves routing in one statement, before its frontend is told (so
-- that a re-create goes elsewhere). A row with an end callback is kept in meeting_ended for the
-- relay (the node's own end callback relays it with retries, as after an `end` through the API;
-- the panic deletes the ones it delivered itself). Durations are counted as for any ended meeting
-- (spec 4.6: meetings of 12 hours or more are left out). `recorded`: the node last reported it as
-- recorded (BBB's <recording>true</recording>); never polled: false.
WITH gone AS (
    DELETE FROM meeting WHERE node_id = $1
    RETURNING id, nonce, secret_id, meeting_id, end_callback_url, create_time,
              coalesce(strpos(xml, '<recording>true</recording>') > 0, false) AS recorded
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
SELECT g.id, g.nonce, g.meeting_id, g.end_callback_url, g.recorded, t.slug AS tenant, s.sub_id
FROM gone g
JOIN secret s ON s.id = g.secret_id
JOIN tenant t ON t.id = s.tenant_id
ORDER BY g.id;

-- name: lifecycle_callbacks_delivered
-- Panic told these frontends itself: the node's own end callback must not relay to them again.
DELETE FROM meeting_ended WHERE nonce = ANY($1::uuid[]);

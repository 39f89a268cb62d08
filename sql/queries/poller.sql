-- Queries of the poll cycle: each one handles every node or meeting in one statement.

-- name: nodes_update
UPDATE node SET cpu_load = d.cpu_load, attendees = d.attendees, meetings = d.meetings,
                has_errors = d.has_errors,
                last_poll_ok = CASE WHEN d.ok THEN now() ELSE node.last_poll_ok END,
                last_poll_error = d.error
FROM unnest($1::int[], $2::float8[], $3::int[], $4::int[], $5::bool[], $6::bool[], $7::text[])
     AS d(id, cpu_load, attendees, meetings, has_errors, ok, error)
WHERE node.id = d.id

-- name: meetings_update
-- Only meetings whose counts or element changed since the last cycle come here.
UPDATE meeting SET attendees = d.attendees, listeners = d.listeners, voice = d.voice, videos = d.videos,
                   moderators = d.moderators, origin = d.origin, origin_server_name = d.origin_server_name,
                   xml = d.xml
FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::int[], $6::int[], $7::text[], $8::text[],
            $9::text[])
     AS d(id, attendees, listeners, voice, videos, moderators, origin, origin_server_name, xml)
WHERE meeting.id = d.id

-- name: meetings_vanished
-- Meetings their node no longer reports: out of routing, kept for a late end callback. Only the
-- placement the poller saw ($2: its nonce): a row a failover moved meanwhile stays.
WITH gone AS (
    DELETE FROM meeting m USING unnest($1::bigint[], $2::uuid[]) AS d(id, nonce)
    WHERE m.id = d.id AND m.nonce = d.nonce
    RETURNING m.id, m.nonce, m.secret_id, m.meeting_id, m.end_callback_url, m.create_time
), kept AS (
    INSERT INTO meeting_ended (nonce, secret_id, meeting_id, end_callback_url, create_time)
    SELECT nonce, secret_id, meeting_id, end_callback_url, create_time FROM gone
    ON CONFLICT (nonce) DO NOTHING
)
SELECT id, secret_id, extract(epoch FROM now() - create_time)::float8 AS seconds FROM gone

-- name: meetings_gone_prune
-- Deleted meetings' ids older than $1 seconds: every instance has read them long ago (b3lb/meeting_sync.py).
DELETE FROM meeting_gone WHERE gone_at < now() - make_interval(secs => $1)

-- name: stats_refresh
-- Per tenant and (origin server, origin): current sums. Combinations seen before stay, at zero.
WITH current AS (
    SELECT s.tenant_id, m.origin_server_name, m.origin,
           -- sums clamped into the integer columns: counts come from nodes
           least(sum(m.attendees), 2147483647) AS attendees, count(*) AS meetings,
           least(sum(m.listeners), 2147483647) AS listeners, least(sum(m.videos), 2147483647) AS videos,
           least(sum(m.voice), 2147483647) AS voices, least(sum(m.moderators), 2147483647) AS moderators
    FROM meeting m
    JOIN secret s ON s.id = m.secret_id
    JOIN node n ON n.id = m.node_id
    WHERE NOT n.has_errors AND m.origin <> '' AND m.origin_server_name <> ''
    GROUP BY s.tenant_id, m.origin_server_name, m.origin
), zeroed AS (
    UPDATE stats SET attendees = 0, meetings = 0, listeners = 0, videos = 0, voices = 0, moderators = 0,
                     time = now()
    WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.tenant_id = stats.tenant_id
                      AND c.origin_server_name = stats.origin_server_name AND c.origin = stats.origin)
)
INSERT INTO stats (tenant_id, time, origin_server_name, origin, attendees, meetings, listeners, videos, voices,
                   moderators)
SELECT tenant_id, now(), origin_server_name, origin, attendees, meetings, listeners, videos, voices, moderators
FROM current
ON CONFLICT (tenant_id, origin_server_name, origin) DO UPDATE SET
    time = now(), attendees = excluded.attendees, meetings = excluded.meetings, listeners = excluded.listeners,
    videos = excluded.videos, voices = excluded.voices, moderators = excluded.moderators

-- name: tenant_stats
SELECT origin_server_name, origin, attendees, meetings, listeners, videos, voices, moderators
FROM stats WHERE tenant_id = $1 ORDER BY origin_server_name, origin

-- name: metrics_snapshot
-- One Metric row per tenant and per node: gauges from the meetings, counters from secret_counter.
WITH tenant_gauges AS (
    SELECT s.tenant_id, sum(m.attendees) AS attendees, count(*) AS meetings, sum(m.listeners) AS listeners,
           sum(m.videos) AS videos, sum(m.voice) AS voices
    FROM meeting m JOIN secret s ON s.id = m.secret_id GROUP BY s.tenant_id
), tenant_counters AS (
    SELECT s.tenant_id, sum(c.attendees_joined) AS joined, sum(c.meetings_created) AS created,
           sum(c.meeting_duration_seconds) AS duration, sum(c.attendee_limit_hits) AS a_hits,
           sum(c.meeting_limit_hits) AS m_hits
    FROM secret_counter c JOIN secret s ON s.id = c.secret_id GROUP BY s.tenant_id
), tenant_rows AS (
    INSERT INTO metric (tenant_id, time, attendees, meetings, listeners, videos, voices, attendees_joined_sum,
                        meetings_created_sum, meetings_duration_sum, attendee_limit_hits, meeting_limit_hits)
    SELECT t.id, now(), coalesce(g.attendees, 0), coalesce(g.meetings, 0), coalesce(g.listeners, 0),
           coalesce(g.videos, 0), coalesce(g.voices, 0), coalesce(c.joined, 0), coalesce(c.created, 0),
           coalesce(c.duration, 0), coalesce(c.a_hits, 0), coalesce(c.m_hits, 0)
    FROM tenant t
    LEFT JOIN tenant_gauges g ON g.tenant_id = t.id
    LEFT JOIN tenant_counters c ON c.tenant_id = t.id
)
INSERT INTO metric (node_id, time, attendees, meetings, listeners, videos, voices)
SELECT n.id, now(), n.attendees, n.meetings, coalesce(sum(m.listeners), 0), coalesce(sum(m.videos), 0),
       coalesce(sum(m.voice), 0)
FROM node n LEFT JOIN meeting m ON m.node_id = n.id
GROUP BY n.id

-- name: metrics_cleanup
DELETE FROM metric WHERE time < now() - make_interval(days => $1)

-- name: ended_cleanup
DELETE FROM meeting_ended WHERE ended_at < now() - interval '1 day'

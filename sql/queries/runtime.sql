-- Queries of the serving process (API, caches, counters). Admin CLI queries live in admin.sql.

-- name: ping
SELECT 1

-- name: load_clusters
SELECT id, name, load_a_factor, load_m_factor, load_cpu_series_iteratations, load_cpu_maximum, sha_algorithm,
       maintenance
FROM cluster

-- name: load_nodes
SELECT id, cluster_id, slug, domain, secret, protocol, port, bbb_endpoint, load_endpoint,
       cpu_load, attendees, meetings, has_errors, maintenance
FROM node

-- name: load_group_clusters
SELECT cluster_group_id, cluster_id FROM cluster_group_relation

-- name: load_tenants
SELECT id, slug, cluster_group_id, attendee_limit, meeting_limit, record_by_default, stats_token
FROM tenant

-- name: load_secrets
SELECT id, tenant_id, sub_id, secret, secret2, attendee_limit, meeting_limit, slide_id, record_by_default
FROM secret

-- name: load_parameters
SELECT id, tenant_id, secret_id, create_join, mode, name, value FROM parameter ORDER BY id

-- name: load_asset_flags
SELECT tenant_id, logo, logo_mime, slide, slide_mime, css, css_mime,
       coalesce(octet_length(slide_data), 0) AS slide_size
FROM asset

-- name: meetings_xmin
-- The oldest transaction still running for this snapshot: the next read starts there (0007_meeting_sync.sql).
SELECT pg_snapshot_xmin(pg_current_snapshot())::text

-- name: meetings_all
-- Every meeting, and whether its row holds its getMeetings element (read when asked: meeting_elements).
SELECT id, secret_id, meeting_id, node_id, nonce, attendees, failover_state, xml IS NOT NULL AS listed
FROM meeting

-- name: meetings_changed
-- The meetings written by transaction $1 or later.
SELECT id, secret_id, meeting_id, node_id, nonce, attendees, failover_state, xml IS NOT NULL AS listed
FROM meeting WHERE changed_xid >= $1::text::xid8

-- name: meeting_elements
-- The getMeetings elements of these meetings (b3lb/meeting_lists.py).
SELECT id, convert_to(xml, 'UTF8') AS xml FROM meeting WHERE id = ANY($1::bigint[]) AND xml IS NOT NULL

-- name: meetings_gone
-- The meetings deleted by transaction $1 or later.
SELECT id FROM meeting_gone WHERE gone_xid >= $1::text::xid8

-- name: meeting_by_key
SELECT id, secret_id, meeting_id, node_id, nonce, attendees, failover_state, xml IS NOT NULL AS listed
FROM meeting WHERE secret_id = $1 AND meeting_id = $2

-- name: meetings_insert
-- The new meetings of several creates at once (b3lb/inserts.py); existing ones are left out. $7: each
-- create's parameters as a failover needs them (b3lb/api/stored_create.py), in the same statement.
INSERT INTO meeting (secret_id, meeting_id, meeting_name, node_id, end_callback_url, recording_ready_url,
                     create_params)
SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::jsonb[])
ON CONFLICT (secret_id, meeting_id) DO NOTHING
RETURNING id, secret_id, meeting_id, node_id, nonce, attendees

-- name: meeting_delete
-- A failed create's own row: matched by nonce too, so a concurrent restart elsewhere stays.
-- Its record set goes with it (nothing will ever be uploaded for a meeting that never ran).
WITH gone AS (DELETE FROM meeting WHERE id = $1 AND nonce = $2)
DELETE FROM record_set WHERE nonce = $2 AND status = 'UNKNOWN'

-- name: meeting_end
-- Remove a meeting from routing but keep what its end callback needs; returns its age.
WITH gone AS (DELETE FROM meeting WHERE id = $1 RETURNING nonce, secret_id, meeting_id, end_callback_url, create_time),
kept AS (
    INSERT INTO meeting_ended (nonce, secret_id, meeting_id, end_callback_url, create_time)
    SELECT nonce, secret_id, meeting_id, end_callback_url, create_time FROM gone
    ON CONFLICT (nonce) DO NOTHING
)
SELECT extract(epoch FROM now() - create_time)::float8 FROM gone

-- name: slide_asset
SELECT slide, slide_mime, slide_data FROM asset WHERE tenant_id = $1 AND slide_data IS NOT NULL

-- name: asset_file
-- $2 is one of logo, slide, css.
SELECT t.id,
       CASE $2 WHEN 'logo' THEN a.logo WHEN 'slide' THEN a.slide ELSE a.css END AS filename,
       CASE $2 WHEN 'logo' THEN a.logo_mime WHEN 'slide' THEN a.slide_mime ELSE a.css_mime END AS mime,
       CASE $2 WHEN 'logo' THEN a.logo_data WHEN 'slide' THEN a.slide_data ELSE a.css_data END AS data
FROM tenant t JOIN asset a ON a.tenant_id = t.id
WHERE t.slug = $1

-- name: counters_add
-- One statement per flush: arrays of secret ids and deltas, added to the running totals.
INSERT INTO secret_counter AS c (secret_id, attendees_joined, meetings_created, meeting_duration_count,
                                 meeting_duration_seconds, attendee_limit_hits, meeting_limit_hits)
SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
       AS d(secret_id, a, m, dc, ds, ah, mh)
WHERE EXISTS (SELECT 1 FROM secret s WHERE s.id = d.secret_id)
ON CONFLICT (secret_id) DO UPDATE SET
    attendees_joined = c.attendees_joined + excluded.attendees_joined,
    meetings_created = c.meetings_created + excluded.meetings_created,
    meeting_duration_count = c.meeting_duration_count + excluded.meeting_duration_count,
    meeting_duration_seconds = c.meeting_duration_seconds + excluded.meeting_duration_seconds,
    attendee_limit_hits = c.attendee_limit_hits + excluded.attendee_limit_hits,
    meeting_limit_hits = c.meeting_limit_hits + excluded.meeting_limit_hits,
    updated_at = now()

-- name: node_set_error
UPDATE node SET has_errors = $2 WHERE id = $1

-- name: end_callback_take
-- The node says a meeting ended: take it out (live or already ended through the API or a poll)
-- and return what the relay needs. Only the matching (nonce, meetingID) pair is accepted.
WITH live AS (
    DELETE FROM meeting WHERE nonce = $1 AND meeting_id = $2
    RETURNING id, secret_id, end_callback_url, create_time
), ended AS (
    DELETE FROM meeting_ended WHERE nonce = $1 AND meeting_id = $2
    RETURNING secret_id, end_callback_url, create_time
)
SELECT id, secret_id, end_callback_url, extract(epoch FROM now() - create_time)::float8 AS seconds FROM live
UNION ALL
SELECT NULL::bigint, secret_id, end_callback_url, NULL::float8 FROM ended

-- name: secret_counters
SELECT secret_id, attendees_joined, meetings_created, meeting_duration_count, meeting_duration_seconds,
       attendee_limit_hits, meeting_limit_hits
FROM secret_counter

-- name: secret_gauges
SELECT m.secret_id, sum(m.attendees)::bigint AS attendees, sum(m.listeners)::bigint AS listeners,
       sum(m.voice)::bigint AS voices, sum(m.videos)::bigint AS videos, count(*) AS meetings
FROM meeting m JOIN node n ON n.id = m.node_id
WHERE NOT n.has_errors
GROUP BY m.secret_id

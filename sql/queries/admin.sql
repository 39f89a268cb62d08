-- Queries of the `b3lb` admin commands (b3lb/admin.py, b3lb/admin_tenant.py).
-- Each command runs in one transaction; optional settings are passed as NULL meaning "keep".

-- Clusters ---------------------------------------------------------------------------------

-- name: admin_cluster_insert
INSERT INTO cluster (name) VALUES ($1) RETURNING id;

-- name: admin_cluster_update
UPDATE cluster
SET load_a_factor = COALESCE($2::double precision, load_a_factor),
    load_m_factor = COALESCE($3::double precision, load_m_factor),
    load_cpu_series_iteratations = COALESCE($4::integer, load_cpu_series_iteratations),
    load_cpu_maximum = COALESCE($5::integer, load_cpu_maximum),
    sha_algorithm = COALESCE($6::text, sha_algorithm)
WHERE id = $1
RETURNING *;

-- name: admin_cluster_by_name
SELECT * FROM cluster WHERE name = $1;

-- name: admin_cluster_list
SELECT c.name, c.load_a_factor, c.load_m_factor, c.load_cpu_series_iteratations,
       c.load_cpu_maximum, c.sha_algorithm,
       count(n.id) AS nodes,
       count(n.id) FILTER (WHERE n.maintenance) AS maintenance
FROM cluster c
LEFT JOIN node n ON n.cluster_id = c.id
GROUP BY c.id
ORDER BY c.name;

-- name: admin_cluster_node_count
SELECT count(*) FROM node WHERE cluster_id = $1;

-- name: admin_cluster_delete
DELETE FROM cluster WHERE id = $1;

-- Cluster groups ---------------------------------------------------------------------------

-- name: admin_cluster_group_insert
INSERT INTO cluster_group (name) VALUES ($1) RETURNING id;

-- name: admin_cluster_group_by_name
SELECT * FROM cluster_group WHERE name = $1;

-- name: admin_cluster_group_list
SELECT g.name,
       COALESCE((SELECT string_agg(c.name, ', ' ORDER BY c.name)
                 FROM cluster_group_relation r JOIN cluster c ON c.id = r.cluster_id
                 WHERE r.cluster_group_id = g.id), '') AS clusters,
       (SELECT count(*) FROM tenant t WHERE t.cluster_group_id = g.id) AS tenants
FROM cluster_group g
ORDER BY g.name;

-- name: admin_cluster_group_link
INSERT INTO cluster_group_relation (cluster_group_id, cluster_id) VALUES ($1, $2) RETURNING id;

-- name: admin_cluster_group_unlink
DELETE FROM cluster_group_relation WHERE cluster_group_id = $1 AND cluster_id = $2 RETURNING id;

-- name: admin_cluster_group_tenant_count
SELECT count(*) FROM tenant WHERE cluster_group_id = $1;

-- name: admin_cluster_group_delete
DELETE FROM cluster_group WHERE id = $1;

-- Nodes ------------------------------------------------------------------------------------

-- name: admin_node_insert
INSERT INTO node (cluster_id, slug, domain, secret, protocol, port, bbb_endpoint, load_endpoint, maintenance)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id;

-- name: admin_node_update
UPDATE node
SET domain = COALESCE($2::text, domain),
    secret = COALESCE($3::text, secret),
    protocol = COALESCE($4::text, protocol),
    port = COALESCE($5::integer, port),
    bbb_endpoint = COALESCE($6::text, bbb_endpoint),
    load_endpoint = COALESCE($7::text, load_endpoint),
    maintenance = COALESCE($8::boolean, maintenance)
WHERE id = $1
RETURNING id;

-- name: admin_node_find
-- Nodes with this slug, in the named cluster or (cluster NULL) in any cluster.
SELECT n.id, n.slug, c.name AS cluster
FROM node n JOIN cluster c ON c.id = n.cluster_id
WHERE n.slug = $1 AND ($2::text IS NULL OR c.name = $2::text)
ORDER BY c.name;

-- name: admin_node_list
-- maintenance: the node's own or its cluster's (sql/0011), as the balancer counts it.
SELECT c.name AS cluster, n.id, n.slug, n.domain, n.protocol, n.port, n.cpu_load, n.attendees,
       n.meetings, n.has_errors, n.maintenance OR c.maintenance AS maintenance, extract(epoch FROM now() - n.last_poll_ok)::float8 AS poll_age,
       c.load_a_factor, c.load_m_factor, c.load_cpu_series_iteratations, c.load_cpu_maximum
FROM node n JOIN cluster c ON c.id = n.cluster_id
WHERE $1::text IS NULL OR c.name = $1::text
ORDER BY c.name, n.slug;

-- name: admin_node_meeting_count
SELECT count(*) FROM meeting WHERE node_id = $1;

-- name: admin_node_delete
DELETE FROM node WHERE id = $1;

-- Tenants ----------------------------------------------------------------------------------

-- name: admin_tenant_insert
INSERT INTO tenant (slug, cluster_group_id) VALUES ($1, $2) RETURNING id;

-- name: admin_tenant_update
UPDATE tenant
SET cluster_group_id = COALESCE($2::integer, cluster_group_id),
    attendee_limit = COALESCE($3::integer, attendee_limit),
    meeting_limit = COALESCE($4::integer, meeting_limit),
    record_by_default = COALESCE($5::boolean, record_by_default),
    hold_time_days = COALESCE($6::integer, hold_time_days)
WHERE id = $1
RETURNING id;

-- name: admin_tenant_by_slug
SELECT t.*, g.name AS cluster_group
FROM tenant t JOIN cluster_group g ON g.id = t.cluster_group_id
WHERE t.slug = $1;

-- name: admin_tenant_list
SELECT t.slug, g.name AS cluster_group, t.attendee_limit, t.meeting_limit, t.record_by_default, t.hold_time_days,
       (SELECT count(*) FROM secret s WHERE s.tenant_id = t.id) AS secrets,
       (SELECT count(*) FROM meeting m JOIN secret s ON s.id = m.secret_id WHERE s.tenant_id = t.id)
           AS meetings
FROM tenant t JOIN cluster_group g ON g.id = t.cluster_group_id
ORDER BY t.slug;

-- name: admin_tenant_meeting_count
SELECT count(*) FROM meeting m JOIN secret s ON s.id = m.secret_id WHERE s.tenant_id = $1;

-- name: admin_tenant_delete
DELETE FROM tenant WHERE id = $1;

-- Secrets ----------------------------------------------------------------------------------

-- name: admin_secret_insert
INSERT INTO secret (tenant_id, sub_id, secret, attendee_limit, meeting_limit, record_by_default, hold_time_days,
                    description)
VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7::integer, 14), COALESCE($8::text, ''))
RETURNING id;

-- name: admin_secret_sub_ids_between
SELECT sub_id FROM secret WHERE tenant_id = $1 AND sub_id BETWEEN $2 AND $3 ORDER BY sub_id;

-- name: admin_secret_by_sub_id
SELECT * FROM secret WHERE tenant_id = $1 AND sub_id = $2;

-- name: admin_secret_list
-- Secrets of one tenant ($1) or of all tenants ($1 NULL).
SELECT t.slug AS tenant, s.sub_id, s.description, s.attendee_limit, s.meeting_limit, s.record_by_default,
       s.hold_time_days, s.secret, s.secret2
FROM secret s JOIN tenant t ON t.id = s.tenant_id
WHERE $1::text IS NULL OR t.slug = $1::text
ORDER BY t.slug, s.sub_id;

-- name: admin_secret_rotate
UPDATE secret SET secret2 = secret, secret = $2 WHERE id = $1 RETURNING secret, secret2;

-- name: admin_secret_meeting_count
SELECT count(*) FROM meeting WHERE secret_id = $1;

-- name: admin_secret_delete
DELETE FROM secret WHERE id = $1;

-- Parameter rules --------------------------------------------------------------------------

-- name: admin_parameter_insert
INSERT INTO parameter (tenant_id, secret_id, create_join, mode, name, value)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id;

-- name: admin_parameter_list
-- Rules of one tenant and of its secrets ($1), or all rules ($1 NULL).
SELECT p.id, t.slug AS tenant, s.sub_id, p.create_join, p.mode, p.name, p.value
FROM parameter p
LEFT JOIN secret s ON s.id = p.secret_id
JOIN tenant t ON t.id = COALESCE(p.tenant_id, s.tenant_id)
WHERE $1::text IS NULL OR t.slug = $1::text
ORDER BY t.slug, s.sub_id NULLS FIRST, p.name, p.create_join;

-- name: admin_parameter_delete
DELETE FROM parameter WHERE id = $1 RETURNING id;

-- Assets -----------------------------------------------------------------------------------

-- name: admin_asset_ensure
INSERT INTO asset (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING;

-- name: admin_asset_store
-- Set ($3 file name, $4 MIME type, $5 bytes) or clear ('', '', NULL) the asset of kind $2.
UPDATE asset
SET logo = CASE WHEN $2::text = 'logo' THEN $3::text ELSE logo END,
    logo_mime = CASE WHEN $2::text = 'logo' THEN $4::text ELSE logo_mime END,
    logo_data = CASE WHEN $2::text = 'logo' THEN $5::bytea ELSE logo_data END,
    slide = CASE WHEN $2::text = 'slide' THEN $3::text ELSE slide END,
    slide_mime = CASE WHEN $2::text = 'slide' THEN $4::text ELSE slide_mime END,
    slide_data = CASE WHEN $2::text = 'slide' THEN $5::bytea ELSE slide_data END,
    css = CASE WHEN $2::text = 'css' THEN $3::text ELSE css END,
    css_mime = CASE WHEN $2::text = 'css' THEN $4::text ELSE css_mime END,
    css_data = CASE WHEN $2::text = 'css' THEN $5::bytea ELSE css_data END
WHERE tenant_id = $1
RETURNING id;

-- name: admin_asset_list
-- One row per stored asset file.
SELECT t.slug AS tenant, f.kind, f.file, f.mime, f.size
FROM asset a
JOIN tenant t ON t.id = a.tenant_id
CROSS JOIN LATERAL (VALUES
    ('logo', a.logo, a.logo_mime, octet_length(a.logo_data)),
    ('slide', a.slide, a.slide_mime, octet_length(a.slide_data)),
    ('css', a.css, a.css_mime, octet_length(a.css_data))
) AS f (kind, file, mime, size)
WHERE f.file <> ''
ORDER BY t.slug, f.kind;

-- Recording profiles -----------------------------------------------------------------------

-- name: admin_record_profile_insert
INSERT INTO record_profile (name) VALUES ($1) RETURNING id;

-- name: admin_record_profile_update
UPDATE record_profile
SET width = COALESCE($2::integer, width),
    height = COALESCE($3::integer, height),
    webcam_width = COALESCE($4::integer, webcam_width),
    webcam_height = COALESCE($5::integer, webcam_height),
    webcam_stretch = COALESCE($6::boolean, webcam_stretch),
    webcam_crop = COALESCE($7::boolean, webcam_crop),
    format = COALESCE($8::text, format),
    annotate = COALESCE($9::boolean, annotate),
    backdrop = COALESCE($10::boolean, backdrop)
WHERE id = $1
RETURNING id;

-- name: admin_record_profile_by_name
SELECT * FROM record_profile WHERE name = $1;

-- name: admin_record_profile_list
SELECT name, width, height, webcam_width, webcam_height, webcam_stretch, webcam_crop, format,
       annotate, backdrop
FROM record_profile
ORDER BY name;

-- name: admin_record_profile_delete
DELETE FROM record_profile WHERE id = $1;

-- Meetings -------------------------------------------------------------------------------

-- name: admin_meeting_list
-- $1: tenant slug or NULL for all; $2: meetingID or NULL for all.
SELECT t.slug AS tenant, s.sub_id, m.meeting_id, m.meeting_name, c.name AS cluster, n.slug AS node,
       n.domain, m.create_time, m.attendees, m.moderators, m.origin,
       n.has_errors, n.maintenance OR c.maintenance AS maintenance
FROM meeting m
JOIN secret s ON s.id = m.secret_id
JOIN tenant t ON t.id = s.tenant_id
JOIN node n ON n.id = m.node_id
JOIN cluster c ON c.id = n.cluster_id
WHERE ($1::text IS NULL OR t.slug = $1::text) AND ($2::text IS NULL OR m.meeting_id = $2::text)
ORDER BY t.slug, s.sub_id, m.create_time;

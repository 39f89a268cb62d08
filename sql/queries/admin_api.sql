-- Queries of the admin HTTP API (b3lb/admin/api*.py) and of `b3lb secret set` (b3lb/admin/tenants.py).

-- name: admin_secret_update
-- NULL keeps a value; $6..$8 true hand attendee_limit, meeting_limit, record_by_default back to the
-- tenant (NULL in the row); $9 the description.
UPDATE secret
SET attendee_limit = CASE WHEN $6::boolean THEN NULL ELSE COALESCE($2::integer, attendee_limit) END,
    meeting_limit = CASE WHEN $7::boolean THEN NULL ELSE COALESCE($3::integer, meeting_limit) END,
    record_by_default = CASE WHEN $8::boolean THEN NULL ELSE COALESCE($4::boolean, record_by_default) END,
    hold_time_days = COALESCE($5::integer, hold_time_days),
    description = COALESCE($9::text, description)
WHERE id = $1
RETURNING id;

-- name: api_record_set_tenant
-- The tenant of the record set with public_id $1 (tenant-scoped tokens reach only their own sets).
SELECT tenant_slug FROM record_set WHERE public_id = $1::uuid;

-- name: api_meeting_key
-- The meetings with this meetingID that a caller may mean ($2: tenant slug or NULL for all).
SELECT m.secret_id, m.meeting_id, t.slug AS tenant, s.sub_id
FROM meeting m
JOIN secret s ON s.id = m.secret_id
JOIN tenant t ON t.id = s.tenant_id
WHERE m.meeting_id = $1 AND ($2::text IS NULL OR t.slug = $2::text)
ORDER BY t.slug, s.sub_id;

-- name: audit_in_transaction
-- Whether the current transaction wrote an audit row already (b3lb/admin/cli_access.py: commands whose
-- operation records its own, like those of b3lb/admin/lifecycle.py, get no second one). Rows written in
-- this transaction have at = now() (its start) and xmin = its id.
SELECT EXISTS (SELECT 1 FROM admin_audit WHERE at = now() AND xmin = pg_current_xact_id()::xid);

-- Admin tokens and the audit log (b3lb/admin/tokens.py, b3lb/admin/audit.py).

-- name: token_insert
-- $5: days the token is valid (NULL: until revoked), on the database's clock as token_expire and token_list.
INSERT INTO admin_token (name, token_hash, scope, tenant_id, expires_at)
VALUES ($1, $2, $3, $4, CASE WHEN $5::integer IS NULL THEN NULL ELSE now() + make_interval(days => $5::integer) END)
RETURNING id;

-- name: token_by_hash
SELECT t.id, t.name, t.scope, t.tenant_id, te.slug AS tenant, t.expires_at, t.revoked_at,
       (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())) AS usable
FROM admin_token t
LEFT JOIN tenant te ON te.id = t.tenant_id
WHERE t.token_hash = $1;

-- name: token_touch
UPDATE admin_token SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: token_list
SELECT t.name, t.scope, te.slug AS tenant, t.created_at, t.expires_at, t.revoked_at, t.last_used_at,
       CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
            WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM admin_token t
LEFT JOIN tenant te ON te.id = t.tenant_id
WHERE $1::integer IS NULL OR t.tenant_id = $1
ORDER BY t.name;

-- name: token_expire
-- The database's clock, as token_list's: a token expired now lists as expired in the same transaction.
UPDATE admin_token SET expires_at = now() + make_interval(days => $2)
WHERE name = $1 AND revoked_at IS NULL
RETURNING id;

-- name: token_revoke
UPDATE admin_token SET revoked_at = now()
WHERE name = $1 AND revoked_at IS NULL
RETURNING id;

-- name: token_by_name
SELECT t.name, t.scope, t.tenant_id, te.slug AS tenant, t.revoked_at
FROM admin_token t
LEFT JOIN tenant te ON te.id = t.tenant_id
WHERE t.name = $1;

-- name: audit_insert
INSERT INTO admin_audit (actor, tenant, action, target, detail) VALUES ($1, $2, $3, $4, $5::jsonb);

-- name: audit_list
SELECT id, at, actor, tenant, action, target, detail::text AS detail
FROM admin_audit
WHERE ($1::text IS NULL OR tenant = $1)
ORDER BY id DESC
LIMIT $2;

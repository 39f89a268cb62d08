-- Issue 13: bearer tokens for the admin API and page, and the audit log of every admin write.

-- A token is shown once when made; only its SHA-256 is kept (a token is 256 random bits, so a
-- slow hash buys nothing). A tenant-scoped token (tenant_id set) sees and changes only that tenant.
CREATE TABLE admin_token (
    id            serial PRIMARY KEY,
    name          varchar(100) NOT NULL UNIQUE CHECK (name ~ '^[-a-zA-Z0-9_.@]{1,100}$'),
    token_hash    bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    scope         varchar(10) NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    tenant_id     integer REFERENCES tenant (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

-- Who changed what: one row per admin write, by API token (its name) or by the CLI ('cli:<user>').
-- Kept when the token or tenant goes: names are copied, not referenced.
CREATE TABLE admin_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       varchar(120) NOT NULL,
    tenant      varchar(10),
    action      varchar(100) NOT NULL,
    target      varchar(300) NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX admin_audit_at_idx ON admin_audit (at);

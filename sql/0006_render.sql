-- Rendering (b3lb/render/worker.py): who runs a render job, how far it got, why it failed, and
-- which recording profiles a tenant or secret gets.

-- A claim sets state RUNNING, worker, lease_id (a fresh UUID per claim: the fencing token every
-- later write of that worker checks, so a worker whose lease was taken over writes nothing),
-- started_at and the lease (locked_until); heartbeats move locked_until and heartbeat_at and
-- store progress (0..1). A failed attempt keeps its reason in last_error (0005) and ffmpeg's last
-- lines in ffmpeg_tail, shown by `b3lb recording show`. done_profiles lists the profiles stored from
-- the archive whose sha256 is done_sha256: a job taken over after a crash does not render them again.
UPDATE render_job SET last_error = left(last_error, 2000) WHERE length(last_error) > 2000;
ALTER TABLE render_job
    ADD COLUMN worker        text NOT NULL DEFAULT '' CHECK (length(worker) <= 200),
    ADD COLUMN lease_id      uuid,
    ADD COLUMN started_at    timestamptz,
    ADD COLUMN heartbeat_at  timestamptz,
    ADD COLUMN progress      real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    ADD COLUMN ffmpeg_tail   text NOT NULL DEFAULT '' CHECK (length(ffmpeg_tail) <= 8000),
    ADD COLUMN done_profiles integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN done_sha256   varchar(64) NOT NULL DEFAULT '',
    ADD CONSTRAINT render_job_last_error_length CHECK (length(last_error) <= 2000);
-- The claim query takes QUEUED jobs by not_before (render_job_due_idx of 0005) and RUNNING jobs
-- whose lease ran out by locked_until.
CREATE INDEX render_job_lease_idx ON render_job (locked_until) WHERE state = 'RUNNING';

-- Profiles rendered for a record set: those linked to its secret, else those linked to its
-- tenant, else every profile. A link names exactly one of tenant and secret.
CREATE TABLE record_profile_link (
    id          serial PRIMARY KEY,
    profile_id  integer NOT NULL REFERENCES record_profile (id) ON DELETE CASCADE,
    tenant_id   integer REFERENCES tenant (id) ON DELETE CASCADE,
    secret_id   integer REFERENCES secret (id) ON DELETE CASCADE,
    CHECK (num_nonnulls(tenant_id, secret_id) = 1),
    -- (NULLs are distinct: a secret's links never collide on the tenant index, nor the reverse.)
    UNIQUE (tenant_id, profile_id),
    UNIQUE (secret_id, profile_id)
);
CREATE INDEX record_profile_link_profile_idx ON record_profile_link (profile_id);

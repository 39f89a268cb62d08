-- Recordings: who owns a record set, what the node uploaded, the render queue, the ready-callback
-- outbox, and how long recordings are kept.

-- Hold time in days (spec 4.10): effective = max(secret, tenant) if either is 0, else the smaller;
-- both 0 means "delete at the next housekeeping run".
ALTER TABLE tenant ADD COLUMN hold_time_days integer NOT NULL DEFAULT 14
    CHECK (hold_time_days BETWEEN 0 AND 36500);
ALTER TABLE secret ADD COLUMN hold_time_days integer NOT NULL DEFAULT 14
    CHECK (hold_time_days BETWEEN 0 AND 36500);

-- A record set is made by create (state UNKNOWN, id = nonce = the meeting's nonce), filled by the
-- node's upload (UPLOADED), rendered (RENDERED), and removed through DELETING (files first).
ALTER TABLE record_set
    -- NULL once the secret is deleted: housekeeping then deletes the set and its files.
    ADD COLUMN secret_id         integer REFERENCES secret (id) ON DELETE SET NULL,
    -- BBB's own record ID (metadata.xml <id>, the node's internal meeting ID).
    ADD COLUMN internal_id       varchar(200) NOT NULL DEFAULT '',
    -- The frontend's meta_bbb-recording-ready-url and meta_endCallbackUrl, taken from its create.
    ADD COLUMN ready_url         text NOT NULL DEFAULT '',
    ADD COLUMN end_callback_url  text NOT NULL DEFAULT '',
    -- metadata.xml <meta> (bbb-origin, gl-listed, ...) plus updateRecordings' changes: key -> text.
    ADD COLUMN metadata          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    -- The stored archive: storage key and its sha256 (hex), both '' until an upload completed.
    ADD COLUMN archive_key       varchar(300) NOT NULL DEFAULT '',
    ADD COLUMN archive_sha256    varchar(64) NOT NULL DEFAULT '',
    ADD COLUMN created_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN uploaded_at       timestamptz;
CREATE INDEX record_set_secret_idx ON record_set (secret_id, created_at);
-- The recordID a set answers to in the API while none of its videos exists (state processing).
-- Never the id or nonce: that is the set's upload credential (spec 4.10), which no frontend may learn.
ALTER TABLE record_set ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX record_set_public_id_key ON record_set (public_id);
CREATE INDEX record_set_status_idx ON record_set (status) WHERE status IN ('UNKNOWN', 'DELETING');

-- One rendered video of a set per profile. record_id is its UUID (the recordID of the API),
-- nonce its download URL (/b3lb/r/{nonce}), file its storage key.
ALTER TABLE record
    ADD COLUMN size           bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    ADD COLUMN metadata       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    ADD COLUMN processing_ms  integer NOT NULL DEFAULT 0 CHECK (processing_ms >= 0),
    -- Hidden from the API while its file is being deleted; housekeeping finishes what a crash left.
    ADD COLUMN deleting       boolean NOT NULL DEFAULT false,
    ADD COLUMN created_at     timestamptz NOT NULL DEFAULT now();
ALTER TABLE record ALTER COLUMN file TYPE varchar(300);
DROP INDEX record_record_id_idx;
CREATE UNIQUE INDEX record_record_id_key ON record (record_id);
CREATE UNIQUE INDEX record_nonce_key ON record (nonce);
DROP INDEX record_nonce_idx;

-- Render queue: one job per uploaded set. A worker claims a due QUEUED job with
-- FOR UPDATE SKIP LOCKED and sets RUNNING with a lease (locked_until); a job whose lease ran out
-- (its worker died) is due again. Done jobs are deleted; FAILED ones stay for the operator.
CREATE TABLE render_job (
    recordset_id  varchar(200) PRIMARY KEY REFERENCES record_set (id) ON DELETE CASCADE,
    state         varchar(10) NOT NULL DEFAULT 'QUEUED' CHECK (state IN ('QUEUED', 'RUNNING', 'FAILED')),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before    timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    queued_at     timestamptz NOT NULL DEFAULT now(),
    last_error    text NOT NULL DEFAULT ''
);
CREATE INDEX render_job_due_idx ON render_job (not_before) WHERE state <> 'FAILED';

-- Recording-ready callbacks not yet delivered, one per published record. A delivery round locks
-- its rows with FOR UPDATE SKIP LOCKED for the whole round (send, then delete or reschedule, then
-- commit), so several b3lb processes never send one twice; a process that dies mid-round releases
-- its locks and the rows are due again.
CREATE TABLE callback_outbox (
    id            bigserial PRIMARY KEY,
    record_id     integer NOT NULL UNIQUE REFERENCES record (id) ON DELETE CASCADE,
    url           text NOT NULL CHECK (url <> ''),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt  timestamptz NOT NULL DEFAULT now(),
    last_error    text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callback_outbox_due_idx ON callback_outbox (next_attempt);
-- Housekeeping finds the records a crashed deleteRecordings left without a scan.
CREATE INDEX record_deleting_idx ON record (id) WHERE deleting;

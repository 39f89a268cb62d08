-- Runtime bookkeeping the data model leaves open.

-- Cumulative counters per secret (joins, creates, durations, limit hits). The API process counts
-- in memory and adds its deltas here in one statement per flush, so the join path never writes.
CREATE TABLE secret_counter (
    secret_id                  integer PRIMARY KEY REFERENCES secret (id) ON DELETE CASCADE,
    attendees_joined           bigint NOT NULL DEFAULT 0,
    meetings_created           bigint NOT NULL DEFAULT 0,
    meeting_duration_count     bigint NOT NULL DEFAULT 0,
    meeting_duration_seconds   bigint NOT NULL DEFAULT 0,
    attendee_limit_hits        bigint NOT NULL DEFAULT 0,
    meeting_limit_hits         bigint NOT NULL DEFAULT 0,
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- A meeting ended through the API leaves routing at once, but its nonce must still resolve
-- when the node's end callback arrives a little later.
CREATE TABLE meeting_ended (
    nonce             uuid PRIMARY KEY,
    secret_id         integer NOT NULL REFERENCES secret (id) ON DELETE CASCADE,
    meeting_id        varchar(200) NOT NULL,
    end_callback_url  text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meeting_ended_ended_at_idx ON meeting_ended (ended_at);

-- The frontend's recording-ready URL, taken out of the create call when recording is enabled.
ALTER TABLE meeting ADD COLUMN recording_ready_url text NOT NULL DEFAULT '';

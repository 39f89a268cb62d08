-- Incremental meeting sync (issue 12): every instance keeps its routing table current by reading
-- only the meetings changed since its last read, instead of the whole table every few seconds, and
-- getMeetings elements live in each meeting's own row instead of whole per-secret lists that were
-- rewritten for one changed meeting.

-- The node's <meeting> element for getMeetings, b3lb's private metadata cut out; NULL until polled.
ALTER TABLE meeting ADD COLUMN xml text;
-- The transaction that last wrote the row. A reader remembers the oldest transaction still running
-- when it read (pg_snapshot_xmin) and next time reads the rows written by that one or later ones,
-- so a write that commits late is never skipped, whatever order transactions commit in.
ALTER TABLE meeting ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX meeting_changed_xid_idx ON meeting (changed_xid);

-- Deleted meetings, by the same rule; pruned by the poll cycle after a while (b3lb/poller.py).
CREATE TABLE meeting_gone (
    id        bigint NOT NULL,
    gone_xid  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    gone_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meeting_gone_xid_idx ON meeting_gone (gone_xid);
CREATE INDEX meeting_gone_at_idx ON meeting_gone (gone_at);

CREATE FUNCTION meeting_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER meeting_touch BEFORE UPDATE ON meeting FOR EACH ROW EXECUTE FUNCTION meeting_touch();

-- Every way a meeting row goes (API end, poll, end callback, failed create, node removal) is seen.
CREATE FUNCTION meeting_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO meeting_gone (id) SELECT id FROM gone;
    RETURN NULL;
END
$$;
CREATE TRIGGER meeting_forget AFTER DELETE ON meeting REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meeting_forget();

-- The whole-list caches are no longer written (each meeting's row holds its element).
TRUNCATE node_meeting_list, secret_meeting_list;

-- Poller bookkeeping.

-- When the poller last heard from each node, and why the last poll failed.
ALTER TABLE node ADD COLUMN last_poll_ok timestamptz;
ALTER TABLE node ADD COLUMN last_poll_error text NOT NULL DEFAULT '';
-- has_errors keeps the data model default (false) for new nodes; their first polls correct it.

-- Change times let other instances and operators see how fresh a cached list is.
ALTER TABLE node_meeting_list ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE secret_meeting_list ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

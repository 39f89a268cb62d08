-- Issue 13, item 5: meetings survive a dead node. A join (or create) for a meeting whose node is in
-- error re-creates it on a healthy node with the parameters of its original create
-- (b3lb/api/failover.py), once per meeting across all b3lb processes.

-- What the original create asked for, as b3lb/api/stored_create.py keeps it: the parameters in their
-- order without attendeePW/moderatorPW (only their HMAC-SHA256 under a per-meeting random salt is
-- kept) and without the checksum; a client's own POST body without embedded (base64) slides; at most
-- 64 KiB in all. NULL for meetings created before this migration. Never holds the tenant's secret.
ALTER TABLE meeting ADD COLUMN create_params jsonb;

-- 0: as its frontend created it; 1: a failover has claimed it and is re-creating it on node_id
-- (since failover_at; a claim older than the failover's longest run is taken over by the next
-- join); 2: re-created by a failover, so the node made up its own passwords and joins that carry a
-- password are sent with the matching role instead.
ALTER TABLE meeting ADD COLUMN failover_state smallint NOT NULL DEFAULT 0 CHECK (failover_state IN (0, 1, 2));
ALTER TABLE meeting ADD COLUMN failover_at timestamptz;

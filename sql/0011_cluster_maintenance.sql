-- Issue 13, item 4: cluster-wide maintenance is its own switch, apart from each node's
-- (`b3lb cluster maintenance NAME on|off`, b3lb/admin/lifecycle.py). A node takes no new meetings
-- while either its own flag or its cluster's is on (b3lb/balancer.py NodeEntry); switching the
-- cluster's flag off leaves every node as it was on its own, so a node drained or panicked by
-- itself stays in maintenance.
ALTER TABLE cluster ADD COLUMN maintenance boolean NOT NULL DEFAULT false;

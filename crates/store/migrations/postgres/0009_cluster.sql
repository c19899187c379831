-- Several nodes on one database (see ARCHITECTURE.md, "Several nodes").
--
-- `nodes`: every running engine upserts its row each heartbeat; rows not seen for
-- the node timeout are deleted by the next heartbeat of any node. The live count is
-- what each node divides a system's rate limit by.
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    version       TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    -- Milliseconds since the epoch (the database's clock is not used: nodes compare
    -- their own clocks, which NTP keeps within far less than the timeout).
    last_seen_ms  BIGINT NOT NULL
);

-- A 429 seen by one node pauses a system for every node until `until_ms`.
CREATE TABLE system_throttles (
    system    TEXT PRIMARY KEY,
    until_ms  BIGINT NOT NULL
);

-- Who runs a system's poller: one node at a time, renewed each poll; another node
-- takes over once `expires_ms` has passed.
CREATE TABLE poll_leases (
    system      TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);

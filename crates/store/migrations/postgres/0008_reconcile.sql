-- Reconciliation and the mass-delete breaker: each reconcile run is a row (counts
-- per drift class, samples, API calls, duration); inward deletions the breaker
-- held are rows an operator releases or discards.

CREATE TABLE reconcile_runs (
    id           bigserial PRIMARY KEY,
    system       TEXT NOT NULL,
    entity       TEXT NOT NULL,
    -- 'cli', 'schedule' or 'api'.
    trigger      TEXT NOT NULL,
    repair       bigint NOT NULL DEFAULT 0,
    -- 'running', 'completed' or 'failed'.
    status       TEXT NOT NULL,
    -- JSON: {"checked": n, "in_flight": n, "missing_remote": n, ..., "repaired": n}.
    counts       TEXT NOT NULL DEFAULT '{}',
    -- JSON array of {"class", "external_id", "record_id", "fields", "repair"}.
    samples      TEXT NOT NULL DEFAULT '[]',
    api_calls    bigint,
    error        TEXT,
    started_at   bigint NOT NULL,
    finished_at  bigint,
    duration_ms  bigint
);
CREATE INDEX reconcile_runs_system ON reconcile_runs (system, id);

CREATE TABLE holds (
    id           bigserial PRIMARY KEY,
    system       TEXT NOT NULL,
    entity       TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    -- The inbox row of the held deletion (settled 'ignored' while held).
    inbox_id     bigint NOT NULL,
    -- 'held', 'released' (applied) or 'discarded' (the hub keeps the record).
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   bigint NOT NULL,
    settled_at   bigint
);
CREATE INDEX holds_status ON holds (system, status);
CREATE UNIQUE INDEX holds_inbox ON holds (inbox_id);

-- Priority lanes: 0 live, 1 retry (from a delivery's first retry on), 2 bulk
-- (reconcile repairs). A claim walks a system's unfinished rows by lane, then
-- change order, through this index, and stops after a batch.
ALTER TABLE deliveries ADD COLUMN lane bigint NOT NULL DEFAULT 0;
CREATE INDEX deliveries_lanes ON deliveries (system, lane, change_seq)
    WHERE status IN ('pending', 'retrying', 'in_flight');

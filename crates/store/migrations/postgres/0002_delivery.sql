-- Outward delivery: the transaction table, its attempt history, links to external
-- ids, the dispatcher's cursor and per-system operator state.

CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    change_seq      bigint NOT NULL,
    system          TEXT NOT NULL,
    -- 'change' (push the change to the system) or 'callback' (tell the origin
    -- system the final outcome of delivery `subject_id`; 0 for changes).
    kind            TEXT NOT NULL DEFAULT 'change',
    subject_id      bigint NOT NULL DEFAULT 0,
    entity          TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    -- Deliveries with the same (system, ordering_key) happen one at a time, in
    -- change order: per-record order for changes, none for callbacks.
    ordering_key    TEXT NOT NULL,
    op              TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL,
    lease_owner     TEXT,
    lease_until     bigint,
    http_status     bigint,
    external_id     TEXT,
    remarks         TEXT,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    finished_at     bigint,
    UNIQUE (change_seq, system, kind, subject_id)
);
CREATE INDEX deliveries_due ON deliveries (system, status, next_attempt_at);
CREATE INDEX deliveries_queue ON deliveries (system, ordering_key, change_seq);
CREATE INDEX deliveries_change ON deliveries (change_seq);
CREATE INDEX deliveries_record ON deliveries (record_id);

CREATE TABLE delivery_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES deliveries (id),
    attempt      bigint NOT NULL,
    outcome      TEXT NOT NULL,
    http_status  bigint,
    remarks      TEXT,
    duration_ms  bigint NOT NULL,
    at           bigint NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

CREATE TABLE links (
    entity          TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    system          TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    synced_version  bigint,
    fingerprint     TEXT,
    snapshot        TEXT,
    updated_at      bigint NOT NULL,
    PRIMARY KEY (entity, record_id, system),
    UNIQUE (system, entity, external_id)
);

CREATE TABLE cursors (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  bigint NOT NULL
);

CREATE TABLE system_state (
    system      TEXT PRIMARY KEY,
    paused      bigint NOT NULL DEFAULT 0,
    updated_at  bigint NOT NULL
);

INSERT INTO cursors (name, value, updated_at) VALUES ('dispatch', '0', 0);

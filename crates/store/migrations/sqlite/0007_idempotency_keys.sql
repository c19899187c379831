-- Idempotent REST writes: the first response to each (scope, Idempotency-Key), kept
-- 24 hours. `scope` is a hash of the caller's token ('anonymous' without one), so
-- keys of different callers never meet. The primary key is what stops two concurrent
-- requests with one key from both executing: the second insert finds the first row.
-- `status` is NULL while the first request is still running (a claim left so for
-- over a minute, by a crashed process, may be taken over).

CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash  TEXT NOT NULL,
    status        INTEGER,
    -- JSON object of the response headers worth replaying (etag, location, content-type).
    headers       TEXT,
    body          TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

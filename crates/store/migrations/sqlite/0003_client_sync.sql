-- Client sync (issue 5): the seed's stock readings, each record's sync clock, and
-- the ids clients gave records they created offline.

CREATE TABLE stock_readings (
    id              TEXT PRIMARY KEY,
    gtin            TEXT NOT NULL,
    expiration_date TEXT NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT
);
-- The natural key is unique among live records only: a tombstone keeps its gtin,
-- and a new reading may reuse it.
CREATE UNIQUE INDEX stock_readings_gtin ON stock_readings (gtin) WHERE deleted_at IS NULL;
CREATE INDEX stock_readings_updated ON stock_readings (updated_at);

-- Sync clock of the version a client wrote last: the client's own edit time and
-- the writer, which last-writer-wins compares. A record whose current version has
-- no row here was last written by the hub (API, SQL, external system) and its
-- clock is its updated_at.
CREATE TABLE sync_clocks (
    entity      TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    edited_at   TEXT NOT NULL,
    writer      TEXT NOT NULL,
    PRIMARY KEY (entity, record_id)
);

-- Ids a client generated for records it created offline, per client, so a retried
-- or later push of the same client id updates the record instead of duplicating it.
CREATE TABLE client_refs (
    client_id   TEXT NOT NULL,
    entity      TEXT NOT NULL,
    client_ref  TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (client_id, entity, client_ref)
);

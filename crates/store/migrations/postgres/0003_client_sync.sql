-- Client sync (issue 5): the seed's stock readings, each record's sync clock, and
-- the ids clients gave records they created offline. See the SQLite twin for notes.

CREATE TABLE stock_readings (
    id              text PRIMARY KEY DEFAULT syncflow_new_id('strd'),
    gtin            text NOT NULL,
    expiration_date text NOT NULL,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
-- Unique among live records only: a tombstone keeps its gtin.
CREATE UNIQUE INDEX stock_readings_gtin ON stock_readings (gtin) WHERE deleted_at IS NULL;
CREATE INDEX stock_readings_updated ON stock_readings (updated_at);

CREATE TRIGGER stock_readings_capture_before BEFORE UPDATE ON stock_readings
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_before('stock_reading');
CREATE TRIGGER stock_readings_capture_after AFTER INSERT OR UPDATE OR DELETE ON stock_readings
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_after('stock_reading');

-- Edit times are canonical RFC 3339 text (fixed width, so text order is time order),
-- exactly as clients' clocks were normalised; they are compared, never computed on.
CREATE TABLE sync_clocks (
    entity      text NOT NULL,
    record_id   text NOT NULL,
    version     bigint NOT NULL,
    edited_at   text NOT NULL,
    writer      text NOT NULL,
    PRIMARY KEY (entity, record_id)
);

CREATE TABLE client_refs (
    client_id   text NOT NULL,
    entity      text NOT NULL,
    client_ref  text NOT NULL,
    record_id   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, entity, client_ref)
);

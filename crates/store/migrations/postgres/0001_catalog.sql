-- Catalog and change log for PostgreSQL.
--
-- Change-log ordering: rows are inserted with seq NULL and a *sequencer* stamps
-- seq afterwards, in batches serialised by an advisory lock, each batch committing
-- before the next starts. A reader following `seq > cursor` therefore can never
-- see seq N+1 before N: seq values are handed out only to rows that are already
-- committed. (Taking seq from a sequence at insert time would not be safe: values
-- are taken in one order and become visible at commit, in another.)
--
-- Writes made by other programs with plain SQL are captured by triggers with origin
-- `sql`. Syncflow's own transactions set `syncflow.writer = on` (transaction-local),
-- which the triggers check, so its writes are captured exactly once: by syncflow.

CREATE FUNCTION syncflow_ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- Same shape as the hub's own ids: 10 base32 chars of epoch milliseconds, 16 random.
CREATE FUNCTION syncflow_new_id(prefix text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet constant text := '0123456789abcdefghjkmnpqrstvwxyz';
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    out text := '';
BEGIN
    FOR i IN 1..10 LOOP
        out := substr(alphabet, (ms % 32)::int + 1, 1) || out;
        ms := ms / 32;
    END LOOP;
    FOR i IN 1..16 LOOP
        out := out || substr(alphabet, floor(random() * 32)::int + 1, 1);
    END LOOP;
    RETURN prefix || '_' || out;
END $$;

CREATE TABLE customers (
    id          text PRIMARY KEY DEFAULT syncflow_new_id('cust'),
    name        text NOT NULL,
    email       text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX customers_email ON customers (lower(email));

CREATE TABLE invoices (
    id          text PRIMARY KEY DEFAULT syncflow_new_id('invc'),
    customer_id text NOT NULL REFERENCES customers (id),
    amount      bigint NOT NULL CHECK (amount >= 0),
    currency    text NOT NULL,
    status      text NOT NULL DEFAULT 'draft',
    due_date    date,
    metadata    jsonb NOT NULL DEFAULT '{}',
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX invoices_customer ON invoices (customer_id);

CREATE TABLE changes (
    id          bigserial PRIMARY KEY,
    seq         bigint UNIQUE,
    entity      text NOT NULL,
    record_id   text NOT NULL,
    op          text NOT NULL,
    version     bigint NOT NULL,
    origin      text NOT NULL,
    snapshot    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_unsequenced ON changes (id) WHERE seq IS NULL;
CREATE INDEX changes_record ON changes (entity, record_id, id);

-- Foreign writes: keep version and updated_at meaningful, ids immutable.
CREATE FUNCTION syncflow_capture_before() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('syncflow.writer', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'syncflow: the id of a % cannot change', TG_ARGV[0];
    END IF;
    NEW.version := OLD.version;
    NEW.created_at := OLD.created_at;
    NEW.updated_at := OLD.updated_at;
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION syncflow_capture_after() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    snap jsonb;
    op text := 'upsert';
    ver bigint;
    rid text;
BEGIN
    IF current_setting('syncflow.writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        -- A hard delete becomes a tombstone change one version past the last row.
        snap := to_jsonb(OLD) || jsonb_build_object(
            'version', OLD.version + 1,
            'created_at', syncflow_ts(OLD.created_at),
            'updated_at', syncflow_ts(now()),
            'deleted_at', syncflow_ts(now()));
        op := 'delete';
        ver := OLD.version + 1;
        rid := OLD.id;
    ELSE
        IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
            RETURN NULL; -- nothing changed
        END IF;
        snap := to_jsonb(NEW) || jsonb_build_object(
            'created_at', syncflow_ts(NEW.created_at),
            'updated_at', syncflow_ts(NEW.updated_at),
            'deleted_at', syncflow_ts(NEW.deleted_at));
        IF NEW.deleted_at IS NOT NULL THEN
            op := 'delete';
        END IF;
        ver := NEW.version;
        rid := NEW.id;
    END IF;
    snap := snap || jsonb_build_object('object', TG_ARGV[0]);
    INSERT INTO changes (entity, record_id, op, version, origin, snapshot)
    VALUES (TG_ARGV[0], rid, op, ver, 'sql', snap);
    PERFORM pg_notify('syncflow_changes', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER customers_capture_before BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_before('customer');
CREATE TRIGGER customers_capture_after AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_after('customer');
CREATE TRIGGER invoices_capture_before BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_before('invoice');
CREATE TRIGGER invoices_capture_after AFTER INSERT OR UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION syncflow_capture_after('invoice');

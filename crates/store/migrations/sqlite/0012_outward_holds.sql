-- Outward holds: hub-side mass deletes (API, client sync, plain SQL) held before
-- they reach a system. A hold now says which side it is on: 'inward' (a system's
-- deletion held before the hub applies it; `inbox_id` set) or 'outward' (a hub
-- deletion held before it is delivered to `system`; `delivery_id` set, the
-- delivery's status 'held'). `origin` is the source that deleted.
-- SQLite cannot drop a NOT NULL: the table is rebuilt.
CREATE TABLE holds_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    system       TEXT NOT NULL,
    entity       TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    inbox_id     INTEGER,
    side         TEXT NOT NULL DEFAULT 'inward',
    origin       TEXT NOT NULL DEFAULT '',
    delivery_id  INTEGER,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    settled_at   INTEGER
);
INSERT INTO holds_new (id, system, entity, record_id, external_id, inbox_id, side, origin, status, reason,
                       created_at, settled_at)
    SELECT id, system, entity, record_id, external_id, inbox_id, 'inward', system, status, reason,
           created_at, settled_at FROM holds;
DROP TABLE holds;
ALTER TABLE holds_new RENAME TO holds;
CREATE INDEX holds_status ON holds (system, status);
CREATE UNIQUE INDEX holds_inbox ON holds (inbox_id);
CREATE UNIQUE INDEX holds_delivery ON holds (delivery_id);

-- The dispatcher counts a system's recent delete deliveries per origin: only
-- delete rows are indexed, so the index costs nothing for upserts.
CREATE INDEX deliveries_deletes ON deliveries (system, created_at) WHERE op = 'delete';

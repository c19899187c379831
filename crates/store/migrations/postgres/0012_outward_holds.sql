-- Outward holds: hub-side mass deletes (API, client sync, plain SQL) held before
-- they reach a system. A hold now says which side it is on: 'inward' (a system's
-- deletion held before the hub applies it; `inbox_id` set) or 'outward' (a hub
-- deletion held before it is delivered to `system`; `delivery_id` set, the
-- delivery's status 'held'). `origin` is the source that deleted.
ALTER TABLE holds ALTER COLUMN inbox_id DROP NOT NULL;
ALTER TABLE holds ADD COLUMN side TEXT NOT NULL DEFAULT 'inward';
ALTER TABLE holds ADD COLUMN origin TEXT NOT NULL DEFAULT '';
ALTER TABLE holds ADD COLUMN delivery_id bigint;
UPDATE holds SET origin = system;
CREATE UNIQUE INDEX holds_delivery ON holds (delivery_id);

-- The dispatcher counts a system's recent delete deliveries per origin: only
-- delete rows are indexed, so the index costs nothing for upserts.
CREATE INDEX deliveries_deletes ON deliveries (system, created_at) WHERE op = 'delete';

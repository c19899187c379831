-- Claims walk the unfinished deliveries of one system in change order and stop after
-- a batch. Without this index a claim sorted every due row (a 100,000-change backlog
-- made each claim sort 100,000 rows); with it, it reads one batch. Partial, so the
-- ever-growing finished history never enters it.
CREATE INDEX deliveries_unfinished ON deliveries (system, change_seq)
    WHERE status IN ('pending', 'retrying', 'in_flight');

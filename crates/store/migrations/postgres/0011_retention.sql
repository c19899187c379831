-- Retention (see ARCHITECTURE.md, "Retention"): finished deliveries are pruned
-- oldest first by `finished_at`. Partial, so the unfinished queue never enters it;
-- the status publisher's read (`finished_after`, by (finished_at, id)) walks it too.
CREATE INDEX deliveries_finished ON deliveries (finished_at, id) WHERE finished_at IS NOT NULL;

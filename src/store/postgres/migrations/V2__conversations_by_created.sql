-- A listing bounded by `since`/`until` that matches little or nothing
-- must not walk every conversation to find that out: with this index the
-- planner reads the time window directly.
CREATE INDEX conversations_by_created ON conversations (created_ms);

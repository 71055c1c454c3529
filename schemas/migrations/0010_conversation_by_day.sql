-- Erasure finds a conversation's rows day by day (issue 14). `ix_feedback_conversation` was a
-- B-tree on random text: every stored event with a conversation landed on a random leaf page of
-- an index as large as the history (290 MB of the 733 MB of random-key indexes at 5M rows), and
-- after each checkpoint the first change of each of those pages wrote all of it to the WAL. Led
-- by the UTC day of `created_at`, the index takes new events into the part of today's day (and
-- of the few days late events carry), whose size is bounded by a day's traffic, not by the
-- stored history. Erasure, the only reader, probes it once per UTC day that holds rows (found
-- by a loose scan of `ix_feedback_created`; src/ops/erase.rs), milliseconds for years of days.
--
-- Built in the migration's transaction: writes to `feedback` wait until it commits (reads go
-- on). docs/operations.md gives the time per million rows. 0011 drops the old index, after its
-- own build: `DROP INDEX` locks out reads until the commit.
CREATE INDEX ix_feedback_conversation_day
    ON feedback (((created_at AT TIME ZONE 'UTC')::date), conversation_id)
    WHERE conversation_id IS NOT NULL;

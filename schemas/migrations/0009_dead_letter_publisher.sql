-- Dead letters exactly once, the publisher's second version (src/dead_letter/).
--
-- `recorded_by`: the sink's attempt that inserted the row (one id per batch, the same across
-- its retries), so a retry after a commit whose answer was lost counts what its first attempt
-- inserted.
-- `refused_at`, `refusal`: the dead-letter topic refused the record for good (too large,
-- invalid): it stays here with its payload for a person, out of the publisher's queue.
-- `detail` and `record_key` may quote user input: once published they go with the payload.
ALTER TABLE feedback_dead_letter
    ADD COLUMN recorded_by uuid,
    ADD COLUMN refused_at  timestamptz,
    ADD COLUMN refusal     text,
    ALTER COLUMN detail DROP NOT NULL;

UPDATE feedback_dead_letter SET detail = NULL, record_key = NULL
WHERE published_at IS NOT NULL;

-- The queue in the publisher's order: rows never tried first, then the ones tried longest ago,
-- so that a row whose sends keep failing does not hold the others back.
DROP INDEX ix_feedback_dead_letter_pending;
CREATE INDEX ix_feedback_dead_letter_pending
    ON feedback_dead_letter (source_topic, attempted_at NULLS FIRST, received_at)
    WHERE published_at IS NULL AND refused_at IS NULL;

-- Who this database is, for names that must be the same for every instance writing to it and
-- differ between databases: the dead-letter publisher's Kafka `transactional.id`.
CREATE TABLE likerate_identity (
    id        uuid    NOT NULL DEFAULT gen_random_uuid(),
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO likerate_identity DEFAULT VALUES;

-- Dead letters exactly once: a record that is not a valid event is written here, in a
-- transaction that commits before its offset is acknowledged, keyed by where it came from. A
-- replay of the same offsets (kill -9 before the offset commit, an offset reset, a new consumer
-- group) inserts nothing, so it is counted once; a publisher moves each row to the dead-letter
-- topic once (src/dead_letter.rs says how a crash between the send and the mark is recovered).
CREATE TABLE feedback_dead_letter (
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    reason           text        NOT NULL,
    detail           text        NOT NULL,
    record_key       bytea,
    payload          bytea,                 -- the original bytes; NULL once published
    received_at      timestamptz NOT NULL DEFAULT now(),
    -- Set, with the dead-letter topic's end offsets per partition, in a committed transaction
    -- before each send: a row attempted and not published is looked for from there before it is
    -- sent again.
    attempted_at     timestamptz,
    scan_from        bigint[],
    published_at     timestamptz,
    dlq_partition    integer,
    dlq_offset       bigint,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

-- The publisher's queue: only the rows still to publish.
CREATE INDEX ix_feedback_dead_letter_pending ON feedback_dead_letter (received_at)
    WHERE published_at IS NULL;

-- Operations: dead-letter replay bookkeeping, text retention, erasure on request.

-- Every dead letter `likerate dlq replay` republished, by the coordinates of the original
-- record. Inserted in the transaction that republishes it, so a record is replayed once.
CREATE TABLE dlq_replay (
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    reason           text        NOT NULL,
    replayed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

-- Set when retention erased the question and answer text (the rating stays).
ALTER TABLE feedback ADD COLUMN text_erased boolean NOT NULL DEFAULT false;

-- Text retention walks only rows whose text is still there.
CREATE INDEX ix_feedback_created_text ON feedback (created_at) WHERE NOT text_erased;
-- Erasure on request.
CREATE INDEX ix_feedback_conversation ON feedback (conversation_id)
    WHERE conversation_id IS NOT NULL;
-- Erasure recounts the votes of the rows it deletes.
CREATE INDEX ix_feedback_vote ON feedback (vote_id) WHERE vote_id IS NOT NULL;

-- Today's (2026-12) unpartitioned schema, frozen: the concatenation of
-- schemas/migrations/0001_feedback.sql .. 0004_vote_slot.sql as of commit 482580f. The scale
-- mode of benches/pipeline.rs raw-COPYs into it as the fixed reference, so the reference does
-- not move when likerate's own schema changes. Do not edit.

-- ---- schemas/migrations/0001_feedback.sql
-- The product guide's feedback table, plus the idempotency key, the A/B and vote columns,
-- the Kafka coordinates each row came from and when likerate stored it.
CREATE TABLE feedback (
    id              bigserial    PRIMARY KEY,
    subject_id      varchar(64)  NOT NULL,
    message_content text         NOT NULL,
    user_question   text,
    rating          smallint     NOT NULL CHECK (rating BETWEEN -1 AND 1),
    message_index   integer,
    created_at      timestamptz  NOT NULL,
    event_id        uuid         NOT NULL UNIQUE,
    model           varchar(128),
    conversation_id varchar(128),
    vote_id         varchar(128),
    kafka_topic     text         NOT NULL,
    kafka_partition integer      NOT NULL,
    kafka_offset    bigint       NOT NULL,
    ingested_at     timestamptz  NOT NULL DEFAULT now()
);

CREATE INDEX ix_feedback_subject_rating ON feedback (subject_id, rating);
CREATE INDEX ix_feedback_created ON feedback (created_at);

-- ---- schemas/migrations/0002_votes_and_rollups.sql
-- The current vote of every vote_id: the event with the latest (created_at, event_id).
-- Rollups count exactly these current votes plus every event without a vote_id.
CREATE TABLE feedback_vote (
    vote_id    varchar(128) PRIMARY KEY,
    event_id   uuid         NOT NULL,
    created_at timestamptz  NOT NULL,
    subject_id varchar(64)  NOT NULL,
    model      varchar(128) NOT NULL,
    rating     smallint     NOT NULL
);

-- Like/dislike/neutral counts per time bucket, subject and model ('' = no model), at three
-- grains: 'm' minute, 'h' hour, 'd' day (UTC). Maintained in the same transaction as the
-- feedback rows they count, from the rows that insert actually created.
CREATE TABLE feedback_rollup (
    grain      "char"       NOT NULL CHECK (grain IN ('m', 'h', 'd')),
    bucket     timestamptz  NOT NULL,
    subject_id varchar(64)  NOT NULL,
    model      varchar(128) NOT NULL,
    likes      bigint       NOT NULL DEFAULT 0,
    dislikes   bigint       NOT NULL DEFAULT 0,
    neutral    bigint       NOT NULL DEFAULT 0,
    PRIMARY KEY (grain, bucket, subject_id, model)
);

-- ---- schemas/migrations/0003_operations.sql
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

-- ---- schemas/migrations/0004_vote_slot.sql
-- The vote slot: the first stored event of each vote_id holds it (`vote_slot`), and a unique
-- partial index on it serialises the first votes of a vote_id across writers. A vote_id with
-- one event needs no `feedback_vote` row: its slot holder is its current vote. `feedback_vote`
-- holds the current vote only of vote ids with more than one event (the first re-vote seeds
-- it from the slot holder). This replaces a `feedback_vote` row for every vote: about a fifth
-- of the write cost of an event.
--
-- Invariants (kept by the sink and by erasure):
-- - a vote_id with stored events has exactly one of them holding the slot;
-- - a vote_id with more than one stored event has a `feedback_vote` row, which is its current
--   vote; otherwise its slot holder is.
ALTER TABLE feedback ADD COLUMN vote_slot boolean NOT NULL DEFAULT false;

-- Until now every vote_id had its `feedback_vote` row: its current event takes the slot.
UPDATE feedback f SET vote_slot = true
FROM feedback_vote v
WHERE f.event_id = v.event_id AND f.vote_id = v.vote_id;

CREATE UNIQUE INDEX ux_feedback_vote_slot ON feedback (vote_id) WHERE vote_slot;
-- Erasure finds the other events of a vote through the two partial indexes, which together
-- cover every event with a vote_id (the one below holds only the re-votes).
CREATE INDEX ix_feedback_revote ON feedback (vote_id)
    WHERE NOT vote_slot AND vote_id IS NOT NULL;
DROP INDEX ix_feedback_vote;


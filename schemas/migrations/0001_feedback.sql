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

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

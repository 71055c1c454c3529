-- compare by conversation (issue 14): the sums of the conversation units of settled UTC days,
-- so that `compare` reads a few rows per day for them instead of every vote of its period.
-- A unit is a conversation's current votes within one UTC day (docs/ab-testing.md, section 5).
-- Written only by src/http/api/conversations.rs, which recomputes a day from `feedback` once
-- it has settled (an hour after its end) and again whenever it is marked dirty.

-- The days whose units are computed.
CREATE TABLE feedback_unit_day (
    day date PRIMARY KEY,
    computed_at timestamptz NOT NULL DEFAULT now()
);

-- Days whose current votes changed after they ended: marked in the transaction of the change
-- (every rollup change of a past day, src/rollup/write.rs, and retention's deletes), cleared
-- by the recomputation. A day marked here is read from `feedback` until then. No unique key:
-- a mark is a plain insert, so writers that mark the same day never wait for each other (or
-- for a recomputation deleting the marks it saw).
CREATE TABLE feedback_unit_dirty (
    day date NOT NULL
);
CREATE INDEX ix_feedback_unit_dirty ON feedback_unit_dirty (day);

-- Per day and (subject, model): the votes without a conversation (`clustered` false: their
-- counts) and the units wholly in this cell (`clustered` true: their counts, how many, and
-- the sums of n², y² and y·n over them, n votes and y likes of a unit).
CREATE TABLE feedback_unit_sums (
    day date NOT NULL,
    subject_id text NOT NULL,
    model text NOT NULL,
    clustered boolean NOT NULL,
    likes int8 NOT NULL,
    dislikes int8 NOT NULL,
    neutral int8 NOT NULL,
    units int8 NOT NULL,
    votes_sq int8 NOT NULL,
    likes_sq int8 NOT NULL,
    likes_votes int8 NOT NULL,
    PRIMARY KEY (day, subject_id, model, clustered)
);

-- The units with votes in more than one cell (two subjects, or two models), one row per
-- cell: `compare` decides per request which of them span the cells it compares.
CREATE TABLE feedback_unit_spans (
    day date NOT NULL,
    conversation_id text NOT NULL,
    subject_id text NOT NULL,
    model text NOT NULL,
    likes int8 NOT NULL,
    dislikes int8 NOT NULL,
    neutral int8 NOT NULL,
    PRIMARY KEY (day, conversation_id, subject_id, model)
);

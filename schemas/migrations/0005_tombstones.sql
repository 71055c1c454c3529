-- Erasure lasts: what `likerate erase` removed is remembered here, and the sink refuses an
-- event whose id or conversation is listed when the topic is read again (a new consumer group,
-- an offset reset, a disaster recovery). Kept until deleted by hand: erasure requests are few,
-- and forgetting one would bring the erased text back.
CREATE TABLE feedback_tombstone (
    kind      "char"      NOT NULL CHECK (kind IN ('e', 'c')),  -- 'e' event id, 'c' conversation id
    key       text        NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);

-- `reason` is any text of at most 64 characters (docs/contract.md section 2): 0007's CHECK let
-- only `[a-z0-9_-]` tags through, so a vote with `Not helpful`, `Wrong answer` or `falsch` was
-- dead-lettered although the contract allows it. The decoder now trims the white space around
-- a tag and treats a blank one as absent (src/event.rs, `ReasonTag`), so a stored reason is
-- never empty; the length stays varchar(64)'s. Rows stored before keep their lower-case tags.
ALTER TABLE feedback DROP CONSTRAINT feedback_reason_check;
ALTER TABLE feedback ADD CONSTRAINT feedback_reason_not_empty CHECK (reason <> '');

-- The `reason` label of likerate_dislike_reasons_total keeps the tags with the most dislikes of
-- the last 24 hours (src/aggregate.rs, `rank_reasons`, once a minute): this index holds only
-- the dislikes that carry a reason, so that read does not visit every row of the day.
CREATE INDEX ix_feedback_dislike_reason ON feedback (created_at) INCLUDE (reason)
    WHERE rating = -1 AND reason IS NOT NULL;

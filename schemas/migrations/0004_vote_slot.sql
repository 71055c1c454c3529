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

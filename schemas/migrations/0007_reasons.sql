-- Why users vote as they do (issue 18): the tag the front end offers with the thumb and the
-- user's free-text explanation (docs/contract.md sections 2 and 3). `reason` holds only tags
-- of src/event.rs's grammar (1 to 64 of a-z 0-9 _ -, lower case), checked here too so that no
-- other writer can store a value the metrics, the API and the report would have to escape.
-- `comment` is user text like the answer: retention erases it with the answer.
ALTER TABLE feedback
    ADD COLUMN reason  varchar(64) CHECK (reason ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    ADD COLUMN comment text CHECK (char_length(comment) <= 4000);

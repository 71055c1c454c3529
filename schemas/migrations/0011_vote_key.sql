-- The vote slot's unique index on a 16-byte key instead of the vote id's text (issue 14). The
-- index takes every first vote at a random place (vote ids are random), so its size is what a
-- batch's inserts spread over: after each checkpoint the first change of each leaf page writes
-- the whole page to the WAL. On `vote_id` text (ids of 32 to 128 characters) it was the
-- largest of the random-key indexes (565 MB at 10M rows); on the key below it is the size of
-- the `event_id` index (half, for 32-character ids).
--
-- The key is the first 16 bytes of the SHA-256 of the vote id's bytes in the database's
-- encoding (UTF-8 unless the database was made otherwise): two vote ids share it only by a
-- collision of a 128-bit cut of SHA-256, which nobody can find on purpose. (MD5 would be
-- cheaper but two colliding ids can be made, and a second first vote refused by a colliding
-- one would stop its partition.) `replace` doubles the backslashes so that the `bytea` input
-- takes the text as it is: without it `\x41` would be read as hex and fail or mean `A`. Every
-- function here is immutable, so PostgreSQL inlines `likerate_vote_key` and the index serves
-- `likerate_vote_key(vote_id) = likerate_vote_key($1)`; the statements of src/votes.rs also
-- compare `vote_id` itself.
CREATE FUNCTION likerate_vote_key(vote_id text) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT encode(substr(sha256(replace(vote_id, E'\\', E'\\\\')::bytea), 1, 16), 'hex')::uuid $$;

-- Built in the migration's transaction: writes to `feedback` wait until it commits (reads go
-- on); docs/operations.md gives the time per million rows.
CREATE UNIQUE INDEX ux_feedback_vote_key ON feedback (likerate_vote_key(vote_id)) WHERE vote_slot;

-- Last, with 0010's old index: a `DROP INDEX` holds a lock that stops reads of `feedback` until
-- the migrations commit, so nothing is built after it.
DROP INDEX ux_feedback_vote_slot;
DROP INDEX ix_feedback_conversation;

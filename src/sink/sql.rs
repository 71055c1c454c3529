//! The sink's SQL about `feedback` rows and the per-connection statements. (The statements
//! about votes are [`crate::votes`]'s, the rollup upsert is [`crate::rollup`]'s.)

use crate::db::{DbError, Target};
use crate::rollup::UPSERT_ROLLUP;
use crate::votes;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

// The lookups by a batch of keys join the array instead of testing `key = ANY($1)`: once a
// prepared statement's generic plan picks a sequential scan (as it did on a table of a few
// thousand rows), `= ANY` compares every row with every key, 200 ms for 5000 keys here.

/// The batch's rows are copied into this per-connection staging table, then inserted from it
/// in one statement. Binary `COPY` is the cheapest way into PostgreSQL; a temporary table
/// writes no WAL, and `ON COMMIT DELETE ROWS` empties it with the transaction that used it.
pub const CREATE_STAGE: &str = "
CREATE TEMPORARY TABLE IF NOT EXISTS feedback_stage (
    event_id uuid, subject_id text, message_content text, user_question text, rating int2,
    message_index int4, created_at timestamptz, model text, conversation_id text, vote_id text,
    reason text, comment text, kafka_partition int4, kafka_offset int8
) ON COMMIT DELETE ROWS";

pub const COPY_STAGE: &str = "COPY feedback_stage FROM STDIN (FORMAT binary)";

pub const COPY_FEEDBACK: &str = "
COPY feedback (event_id, subject_id, message_content, user_question, rating, message_index,
               created_at, model, conversation_id, vote_id, reason, comment, kafka_partition,
               kafka_offset, kafka_topic, vote_slot)
FROM STDIN (FORMAT binary)";

/// Types of [`COPY_FEEDBACK`]'s columns, in order, for the binary `COPY`; the staging table
/// has the first [`STAGE_COLUMNS`].
pub const FEEDBACK_TYPES: [Type; 16] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT2,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::BOOL,
];

/// The columns of the staging table: those of [`COPY_FEEDBACK`] but the topic and the slot.
pub const STAGE_COLUMNS: usize = 14;

/// Which of the event ids `$1` are stored.
pub const STORED_IDS: &str = "
SELECT f.event_id FROM unnest($1::uuid[]) AS k(event_id)
JOIN feedback f ON f.event_id = k.event_id";

/// The insert of the staged rows, in `event_id` order: a fixed order of unique-index insertions
/// keeps concurrent writers from deadlocking. Returns the ids of the rows it created. (A macro,
/// so both inserts below share it: the value of `vote_slot`, the rows, the conflict target.)
macro_rules! insert_staged {
    ($slot:literal, $join:literal, $conflict:literal) => {
        concat!(
            "INSERT INTO feedback (event_id, subject_id, message_content, user_question, rating,
                      message_index, created_at, model, conversation_id, vote_id, reason,
                      comment, kafka_topic, kafka_partition, kafka_offset, vote_slot)
SELECT s.event_id, s.subject_id, s.message_content, s.user_question, s.rating,
       s.message_index, s.created_at, s.model, s.conversation_id, s.vote_id, s.reason,
       s.comment, $1::text, s.kafka_partition, s.kafka_offset, ",
            $slot,
            " FROM feedback_stage s",
            $join,
            " ORDER BY s.event_id ON CONFLICT ",
            $conflict,
            " DO NOTHING RETURNING event_id"
        )
    };
}

/// Every staged row, each event with a `vote_id` taking its vote's slot (see
/// `schemas/migrations/0004_vote_slot.sql`). Skips a row whose `event_id` is stored (a
/// duplicate) and one whose vote's slot is taken (a re-vote, inserted by [`INSERT_REVOTES`]).
/// The unique slot index serialises the first votes of a `vote_id` across writers.
pub const INSERT_FEEDBACK: &str = insert_staged!("s.vote_id IS NOT NULL", "", "");

/// The staged rows `$2` (skipped by [`INSERT_FEEDBACK`], with a `vote_id`) without the slot:
/// those created are re-votes, the others duplicates.
pub const INSERT_REVOTES: &str = insert_staged!(
    "false",
    " JOIN unnest($2::uuid[]) AS u(event_id) ON u.event_id = s.event_id",
    "(event_id)"
);

/// A connection with its statements prepared.
pub struct Conn {
    pub client: Client,
    pub statements: Statements,
}

pub struct Statements {
    pub copy_stage: Statement,
    pub copy_feedback: Statement,
    pub stored_ids: Statement,
    pub insert_feedback: Statement,
    pub insert_revotes: Statement,
    pub votes: votes::Statements,
    pub upsert_rollup: Statement,
    pub erased: Statement,
}

impl Conn {
    pub async fn open(target: &Target) -> Result<Conn, DbError> {
        let client = target.connect().await?;
        client.batch_execute(CREATE_STAGE).await?;
        let statements = Statements {
            copy_stage: client.prepare(COPY_STAGE).await?,
            copy_feedback: client.prepare(COPY_FEEDBACK).await?,
            stored_ids: client.prepare(STORED_IDS).await?,
            insert_feedback: client.prepare(INSERT_FEEDBACK).await?,
            insert_revotes: client.prepare(INSERT_REVOTES).await?,
            votes: votes::Statements::prepare(&client).await?,
            upsert_rollup: client.prepare(UPSERT_ROLLUP).await?,
            erased: client.prepare(crate::tombstone::ERASED).await?,
        };
        Ok(Conn { client, statements })
    }
}

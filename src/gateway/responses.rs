//! Stored OpenAI Responses objects: which channel created each and for whom. `GET` and
//! `DELETE /v1/responses/{id}` (and its `input_items`) reach that channel, for the owner only;
//! a request continuing from `previous_response_id` is routed to it too. Another customer's
//! response id — or one this service never saw — is "not found", never forwarded: the
//! channel's account holds every customer's responses.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::db::{Backend, Db};
use crate::error::Result;

fn ph(b: Backend, n: usize) -> String {
    match b {
        Backend::Postgres => format!("${n}"),
        Backend::MySql | Backend::Sqlite => "?".to_owned(),
    }
}

fn backend(b: Backend) -> DbBackend {
    match b {
        Backend::Sqlite => DbBackend::Sqlite,
        Backend::MySql => DbBackend::MySql,
        Backend::Postgres => DbBackend::Postgres,
    }
}

/// The longest response id recorded (the column's size); a longer one is not routable.
pub const MAX_ID_LEN: usize = 191;

/// Records that `channel_id` created the response `id` for `user_id` (the first record wins).
pub async fn remember(db: &Db, id: &str, user_id: i64, channel_id: i64) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Ok(());
    }
    let b = db.backend;
    let (p1, p2, p3, p4) = (ph(b, 1), ph(b, 2), ph(b, 3), ph(b, 4));
    let sql = match b {
        Backend::Sqlite => format!(
            "INSERT OR IGNORE INTO response_routes (response_id, user_id, channel_id, created_at) VALUES ({p1}, {p2}, {p3}, {p4})"
        ),
        Backend::MySql => format!(
            "INSERT IGNORE INTO response_routes (response_id, user_id, channel_id, created_at) VALUES ({p1}, {p2}, {p3}, {p4})"
        ),
        Backend::Postgres => format!(
            "INSERT INTO response_routes (response_id, user_id, channel_id, created_at) VALUES ({p1}, {p2}, {p3}, {p4}) ON CONFLICT DO NOTHING"
        ),
    };
    let now = crate::clock::now_ms() / 1000;
    db.write
        .execute_raw(Statement::from_sql_and_values(
            backend(b),
            sql,
            [id.into(), user_id.into(), channel_id.into(), now.into()],
        ))
        .await?;
    Ok(())
}

/// The channel that created the response `id` for `user_id`; `None` when the response is
/// unknown or someone else's.
pub async fn channel_of(db: &Db, id: &str, user_id: i64) -> Result<Option<i64>> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Ok(None);
    }
    let b = db.backend;
    let row = db
        .read
        .query_one_raw(Statement::from_sql_and_values(
            backend(b),
            format!("SELECT channel_id, user_id FROM response_routes WHERE response_id = {}", ph(b, 1)),
            [id.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let owner: i64 = row.try_get("", "user_id")?;
    let channel: i64 = row.try_get("", "channel_id")?;
    Ok((owner == user_id).then_some(channel))
}

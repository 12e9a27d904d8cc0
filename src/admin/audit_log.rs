//! Reading the audit log: who changed what, newest first, filtered by actor, action and target.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Page, Paging};
use crate::db::Db;
use crate::db::entities::{audit_logs, users};
use crate::error::{Error, Result};

/// The audit-log filters, as given.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// A user id, an email, or `system` for the command line and jobs.
    pub actor: Option<String>,
    /// An action (`balance.adjust`), or a family without a dot (`model` for `model.*`).
    pub action: Option<String>,
    /// `type:id` (`user:12`), a type (`model`), or an id.
    pub target: Option<String>,
    pub paging: Paging,
}

/// One audit entry with its actor's email (when the actor was a person).
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub entry: audit_logs::Model,
    pub actor_email: Option<String>,
}

fn nonempty(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

impl AuditQuery {
    /// `None` when the filter names an actor that does not exist (nothing can match).
    async fn condition(&self, db: &Db) -> Result<Option<Condition>> {
        let mut c = Condition::all();
        for (name, value) in [("actor", &self.actor), ("action", &self.action), ("target", &self.target)] {
            if value.as_deref().is_some_and(|v| v.chars().count() > 255) {
                return Err(Error::BadRequest(format!("{name} is at most 255 characters")));
            }
        }
        match nonempty(self.actor.as_deref()) {
            None => {}
            Some("system") => c = c.add(audit_logs::Column::ActorUserId.is_null()),
            Some(a) if a.contains('@') => match crate::accounts::find_by_email(&db.read, a).await? {
                Some(u) => c = c.add(audit_logs::Column::ActorUserId.eq(u.id)),
                None => return Ok(None),
            },
            Some(a) => match a.parse::<i64>() {
                Ok(id) => c = c.add(audit_logs::Column::ActorUserId.eq(id)),
                Err(_) => {
                    return Err(Error::BadRequest(format!("actor must be a user id, an email or `system`, not `{a}`")));
                }
            },
        }
        match nonempty(self.action.as_deref()) {
            None => {}
            Some(a) if a.contains('.') => c = c.add(audit_logs::Column::Action.eq(a)),
            Some(a) => c = c.add(audit_logs::Column::Action.starts_with(format!("{a}."))),
        }
        match nonempty(self.target.as_deref()) {
            None => {}
            Some(t) => match t.split_once(':') {
                Some((kind, id)) => {
                    c = c.add(audit_logs::Column::TargetType.eq(kind)).add(audit_logs::Column::TargetId.eq(id));
                }
                None if t.bytes().all(|b| b.is_ascii_digit()) => c = c.add(audit_logs::Column::TargetId.eq(t)),
                None => c = c.add(audit_logs::Column::TargetType.eq(t)),
            },
        }
        Ok(Some(c))
    }
}

/// The entries matching `query`, newest first.
pub async fn list(db: &Db, query: &AuditQuery) -> Result<Page<AuditRow>> {
    let Some(condition) = query.condition(db).await? else {
        return Ok(Page { rows: Vec::new(), total: 0, paging: query.paging });
    };
    let total = audit_logs::Entity::find().filter(condition.clone()).count(&db.read).await?;
    let entries = audit_logs::Entity::find()
        .filter(condition)
        .order_by_desc(audit_logs::Column::CreatedAt)
        .order_by_desc(audit_logs::Column::Id)
        .offset(query.paging.offset())
        .limit(query.paging.page_size)
        .all(&db.read)
        .await?;
    let actors: Vec<i64> = entries.iter().filter_map(|e| e.actor_user_id).collect();
    let emails: HashMap<i64, String> = if actors.is_empty() {
        HashMap::new()
    } else {
        users::Entity::find()
            .filter(users::Column::Id.is_in(actors))
            .all(&db.read)
            .await?
            .into_iter()
            .map(|u| (u.id, u.email))
            .collect()
    };
    let rows = entries
        .into_iter()
        .map(|entry| AuditRow { actor_email: entry.actor_user_id.and_then(|id| emails.get(&id).cloned()), entry })
        .collect();
    Ok(Page { rows, total, paging: query.paging })
}

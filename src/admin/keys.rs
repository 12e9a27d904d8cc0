//! Every key, for support: filtered by owner and by name or visible part, revoked ones included.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::users::like_pattern;
use super::{Page, Paging};
use crate::db::Db;
use crate::db::entities::{api_keys, users};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct KeyQuery {
    /// The owner: a user id or an email.
    pub user: Option<String>,
    /// Part of the key's name, its prefix or its last four characters.
    pub q: Option<String>,
    pub paging: Paging,
}

/// A key with its owner's email.
#[derive(Clone, Debug)]
pub struct KeyRow {
    pub key: api_keys::Model,
    pub email: String,
}

/// The keys matching `query`, newest first.
pub async fn list(db: &Db, query: &KeyQuery) -> Result<Page<KeyRow>> {
    let empty = || Page { rows: Vec::new(), total: 0, paging: query.paging };
    let mut c = Condition::all();
    match query.user.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        None => {}
        Some(u) if u.contains('@') => match crate::accounts::find_by_email(&db.read, u).await? {
            Some(user) => c = c.add(api_keys::Column::UserId.eq(user.id)),
            None => return Ok(empty()),
        },
        Some(u) => match u.parse::<i64>() {
            Ok(id) => c = c.add(api_keys::Column::UserId.eq(id)),
            Err(_) => return Err(Error::BadRequest(format!("user must be a user id or an email, not `{u}`"))),
        },
    }
    if let Some(q) = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        if q.chars().count() > 64 {
            return Err(Error::BadRequest("q is at most 64 characters".into()));
        }
        let pattern = like_pattern(&q.to_lowercase());
        let like = |col: api_keys::Column| {
            Expr::expr(Func::lower(Expr::col(col))).like(LikeExpr::new(pattern.clone()).escape('\\'))
        };
        c = c.add(
            Condition::any()
                .add(like(api_keys::Column::Name))
                .add(like(api_keys::Column::Prefix))
                .add(like(api_keys::Column::Last4)),
        );
    }
    let total = api_keys::Entity::find().filter(c.clone()).count(&db.read).await?;
    let keys = api_keys::Entity::find()
        .filter(c)
        .order_by_desc(api_keys::Column::Id)
        .offset(query.paging.offset())
        .limit(query.paging.page_size)
        .all(&db.read)
        .await?;
    let owners: Vec<i64> = keys.iter().map(|k| k.user_id).collect();
    let emails: HashMap<i64, String> = if owners.is_empty() {
        HashMap::new()
    } else {
        users::Entity::find()
            .filter(users::Column::Id.is_in(owners))
            .all(&db.read)
            .await?
            .into_iter()
            .map(|u| (u.id, u.email))
            .collect()
    };
    let rows = keys
        .into_iter()
        .map(|key| KeyRow { email: emails.get(&key.user_id).cloned().unwrap_or_default(), key })
        .collect();
    Ok(Page { rows, total, paging: query.paging })
}

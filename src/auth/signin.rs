//! From a verified identity to a user: accounts are keyed by (provider, provider account id),
//! never by email, and a first sign-in creates the user, their balance and their first key.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};

use crate::accounts::{self, NewUser, ROLE_USER};
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::{accounts as account_rows, users};
use crate::error::{Error, Result};
use crate::keys;

/// What a provider told us about the person signing in.
#[derive(Clone, Debug)]
pub struct Identity {
    pub provider: &'static str,
    pub account_id: String,
    /// A verified email address.
    pub email: String,
    pub name: Option<String>,
}

/// The outcome of a sign-in.
pub struct SignedIn {
    pub user: users::Model,
    /// The first key's plaintext, on a first sign-in only (to be shown exactly once).
    pub first_key: Option<String>,
}

/// Signs in an OAuth identity: the account's user, or a new user with a zero balance (plus
/// `signup_credit`) and a first key. An email already used by another user is refused, never
/// linked: the person has to sign in the way they did before.
pub async fn sign_in(db: &Db, identity: &Identity, signup_credit: i64) -> Result<SignedIn> {
    let txn = db.begin().await?;
    let existing = account_rows::Entity::find()
        .filter(account_rows::Column::Provider.eq(identity.provider))
        .filter(account_rows::Column::ProviderAccountId.eq(&identity.account_id))
        .one(&txn)
        .await?;
    if let Some(account) = existing {
        let user = users::Entity::find_by_id(account.user_id)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("account {} has no user", account.id)))?;
        txn.commit().await?;
        if user.disabled {
            return Err(Error::Forbidden("this account is disabled".into()));
        }
        return Ok(SignedIn { user, first_key: None });
    }
    if accounts::find_by_email(&txn, &identity.email).await?.is_some() {
        return Err(Error::Conflict(format!(
            "{} is already registered with another sign-in method; use that one",
            identity.email
        )));
    }
    let user = accounts::create_user(
        &txn,
        NewUser {
            email: &identity.email,
            name: identity.name.as_deref(),
            role: ROLE_USER,
            password_hash: None,
            signup_credit,
        },
    )
    .await?;
    account_rows::ActiveModel {
        user_id: Set(user.id),
        provider: Set(identity.provider.to_owned()),
        provider_account_id: Set(identity.account_id.clone()),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let (_, plaintext) = keys::create(&txn, user.id, Some("default")).await?;
    txn.commit().await?;
    tracing::info!(user.id = user.id, provider = identity.provider, "new user signed up");
    Ok(SignedIn { user, first_key: Some(plaintext) })
}

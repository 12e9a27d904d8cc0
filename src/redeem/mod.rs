//! Redemption codes: an operator makes a batch of codes worth money or a token package; each
//! code is shown once, stored only as its SHA-256, and redeemed by a customer exactly once.
//!
//! Redeeming is one transaction: the code is marked used by a conditional UPDATE (`WHERE
//! redeemed_at IS NULL` and not expired) that must affect exactly one row, then the balance and
//! its ledger entry move (or the subscription is granted with its ledger entry), and the audit
//! entry is written. However many requests race for one code, one UPDATE matches; the others
//! roll back having changed nothing.
//!
//! Refusals: an unknown code is 404, a used one 409, an expired one 410, text that cannot be a
//! code 400. None of them changes anything.

use std::collections::HashMap;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use crate::admin::{Page, Paging, int_expr};
use crate::audit::{self, Actor};
use crate::billing::{balance, ledger};
use crate::clock::{MS_PER_DAY, now_ms, rfc3339};
use crate::crypto;
use crate::db::entities::{redemption_batches as batches, redemption_codes as codes, subscriptions as subs};
use crate::db::{Db, retry_transient};
use crate::error::{Error, Result};
use crate::money::{self, format_amount};

/// Every code starts with this.
pub const PREFIX: &str = "TG";
/// The most codes one batch may hold.
pub const MAX_BATCH: i64 = 1000;
/// The latest a batch may expire, in days from its creation.
pub const MAX_EXPIRY_DAYS: i64 = 3650;
/// The longest note a batch may carry.
pub const MAX_NOTE: usize = 255;
pub const KIND_MONEY: &str = "money";
pub const KIND_SUBSCRIPTION: &str = "subscription";

/// Crockford's base32: no I, L, O or U, so a code read aloud or retyped is unambiguous.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 16 symbols of 5 bits: 80 random bits, in four groups of four.
const SYMBOLS: usize = 16;
const GROUP: usize = 4;
/// Codes are inserted this many rows a statement (well under every engine's parameter limit).
const INSERT_CHUNK: usize = 100;

/// A freshly generated code. The plaintext exists only here; `Debug` does not print it.
pub struct NewCode {
    pub plaintext: String,
    pub hash: String,
    pub prefix: String,
}

impl std::fmt::Debug for NewCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCode").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// `TG-` and four groups of four symbols.
fn format_symbols(symbols: &str) -> String {
    let groups: Vec<&str> = (0..SYMBOLS / GROUP).map(|i| &symbols[i * GROUP..(i + 1) * GROUP]).collect();
    format!("{PREFIX}-{}", groups.join("-"))
}

/// Generates a code from 80 bits of the operating system's generator.
pub fn generate() -> NewCode {
    let mut bytes = [0u8; SYMBOLS * 5 / 8];
    crypto::fill_random(&mut bytes);
    let bits = bytes.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let symbols: String = (0..SYMBOLS)
        .map(|i| char::from(ALPHABET[usize::try_from((bits >> (5 * (SYMBOLS - 1 - i))) & 31).unwrap_or(0)]))
        .collect();
    let plaintext = format_symbols(&symbols);
    NewCode {
        hash: crypto::sha256_hex(&plaintext),
        prefix: plaintext[..PREFIX.len() + 1 + GROUP].to_owned(),
        plaintext,
    }
}

/// The canonical form of a code as a person typed it: case, spaces and dashes do not matter,
/// the `TG` may be left out, and O, I and L are read as 0, 1 and 1. `None` when it cannot be a
/// code at all.
pub fn canonical(raw: &str) -> Option<String> {
    if raw.len() > 64 {
        return None;
    }
    let mut symbols: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    if symbols.len() == PREFIX.len() + SYMBOLS && symbols.starts_with(PREFIX) {
        symbols.drain(..PREFIX.len());
    }
    let valid = symbols.len() == SYMBOLS && symbols.bytes().all(|b| ALPHABET.contains(&b));
    valid.then(|| format_symbols(&symbols))
}

/// What one code is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// Micro-units added to the balance.
    Money(i64),
    /// A token package valid for `days` from redemption.
    Subscription { tokens: i64, days: i64 },
}

/// A batch to create.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub count: i64,
    pub value: Value,
    /// Codes stop working this many days after creation; `None`: never.
    pub expires_in_days: Option<i64>,
    pub note: Option<String>,
}

/// A created batch and its codes' plaintexts: the only time they exist outside the hands of
/// whoever receives them. `Debug` does not print them.
pub struct Created {
    pub batch: batches::Model,
    pub codes: Vec<String>,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created").field("batch", &self.batch).finish_non_exhaustive()
    }
}

fn check(new: &NewBatch) -> Result<String> {
    if !(1..=MAX_BATCH).contains(&new.count) {
        return Err(Error::BadRequest(format!("count must be between 1 and {MAX_BATCH}")));
    }
    match new.value {
        Value::Money(amount) => {
            if amount <= 0 || amount > money::MAX_AMOUNT {
                return Err(Error::BadRequest("amount must be greater than zero".into()));
            }
        }
        Value::Subscription { tokens, days } => {
            if !(1..=crate::subscriptions::MAX_TOKENS).contains(&tokens) {
                return Err(Error::BadRequest(format!(
                    "tokens must be between 1 and {}",
                    crate::subscriptions::MAX_TOKENS
                )));
            }
            if !(1..=crate::subscriptions::MAX_DAYS).contains(&days) {
                return Err(Error::BadRequest(format!(
                    "days must be between 1 and {}",
                    crate::subscriptions::MAX_DAYS
                )));
            }
        }
    }
    if let Some(d) = new.expires_in_days
        && !(1..=MAX_EXPIRY_DAYS).contains(&d)
    {
        return Err(Error::BadRequest(format!("expiresInDays must be between 1 and {MAX_EXPIRY_DAYS}")));
    }
    let note = new.note.as_deref().map(str::trim).unwrap_or_default();
    if note.chars().count() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!("a note is at most {MAX_NOTE} printable characters")));
    }
    Ok(note.to_owned())
}

/// The value a batch or code row carries.
pub fn value_of(kind: &str, amount: i64, tokens: i64, days: i64) -> Value {
    if kind == KIND_MONEY { Value::Money(amount) } else { Value::Subscription { tokens, days } }
}

/// Creates `new.count` codes in one transaction, audited; returns their plaintexts (shown once).
pub async fn create_batch(db: &Db, new: &NewBatch, by: &Actor) -> Result<Created> {
    let note = check(new)?;
    let now = now_ms();
    let expires_at = new.expires_in_days.map(|d| now + d * MS_PER_DAY);
    let (kind, amount, tokens, days) = match new.value {
        Value::Money(a) => (KIND_MONEY, a, 0, 0),
        Value::Subscription { tokens, days } => (KIND_SUBSCRIPTION, 0, tokens, days),
    };
    let generated: Vec<NewCode> = (0..new.count).map(|_| generate()).collect();
    let txn = db.begin().await?;
    let batch = batches::ActiveModel {
        kind: Set(kind.to_owned()),
        amount: Set(amount),
        tokens: Set(tokens),
        days: Set(days),
        code_count: Set(new.count),
        expires_at: Set(expires_at),
        note: Set(note.clone()),
        created_by: Set(by.user_id),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    for chunk in generated.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|c| codes::ActiveModel {
            batch_id: Set(batch.id),
            code_hash: Set(c.hash.clone()),
            prefix: Set(c.prefix.clone()),
            kind: Set(kind.to_owned()),
            amount: Set(amount),
            tokens: Set(tokens),
            days: Set(days),
            expires_at: Set(expires_at),
            created_by: Set(by.user_id),
            created_at: Set(now),
            redeemed_by: Set(None),
            redeemed_at: Set(None),
            ..Default::default()
        });
        codes::Entity::insert_many(rows).exec(&txn).await.map_err(|e| {
            if crate::db::is_unique_violation(&e) {
                Error::Conflict("two codes collided; create the batch again".into())
            } else {
                Error::Database(e)
            }
        })?;
    }
    audit::record_from(
        &txn,
        audit::Entry {
            actor_user_id: by.user_id,
            action: "redemption_codes.create",
            target_type: "redemption_batch",
            target_id: batch.id.to_string(),
            before: None,
            after: Some(json!({
                "count": new.count,
                "kind": kind,
                "amount": format_amount(amount),
                "tokens": tokens,
                "days": days,
                "expires_at": expires_at.map(rfc3339),
                "note": note,
            })),
        },
        by.ip.as_deref(),
    )
    .await?;
    txn.commit().await?;
    Ok(Created { batch, codes: generated.into_iter().map(|c| c.plaintext).collect() })
}

/// What a redemption credited.
#[derive(Clone, Debug, PartialEq)]
pub enum Credited {
    Money { amount: i64 },
    Subscription(subs::Model),
}

/// A successful redemption.
#[derive(Clone, Debug, PartialEq)]
pub struct Redeemed {
    pub code_id: i64,
    pub batch_id: i64,
    pub credited: Credited,
    /// The balance after it, micro-units.
    pub balance: i64,
}

/// Redeems `code` for `user_id` (asking from `ip`), exactly once; see the module's notes.
pub async fn redeem(db: &Db, user_id: i64, code: &str, ip: Option<&str>) -> Result<Redeemed> {
    let canonical = canonical(code).ok_or_else(|| {
        Error::BadRequest(format!("that is not a redemption code (they look like {PREFIX}-XXXX-XXXX-XXXX-XXXX)"))
    })?;
    let hash = crypto::sha256_hex(&canonical);
    retry_transient(|| redeem_once(db, user_id, &hash, ip)).await
}

async fn redeem_once(db: &Db, user_id: i64, hash: &str, ip: Option<&str>) -> Result<Redeemed> {
    let txn = db.begin().await?;
    let now = now_ms();
    let row = codes::Entity::find()
        .filter(codes::Column::CodeHash.eq(hash))
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound("no such redemption code".into()))?;
    let used = || Error::Conflict("this code has already been used".into());
    if row.redeemed_at.is_some() {
        return Err(used());
    }
    if let Some(at) = row.expires_at
        && at <= now
    {
        return Err(Error::Gone(format!("this code expired at {}", rfc3339(at))));
    }
    // The one statement that decides who gets the code: of every concurrent attempt, only one
    // finds `redeemed_at` still empty.
    let res = codes::Entity::update_many()
        .col_expr(codes::Column::RedeemedBy, Expr::value(user_id))
        .col_expr(codes::Column::RedeemedAt, Expr::value(now))
        .filter(codes::Column::Id.eq(row.id))
        .filter(codes::Column::RedeemedAt.is_null())
        .filter(Condition::any().add(codes::Column::ExpiresAt.is_null()).add(codes::Column::ExpiresAt.gt(now)))
        .exec(&txn)
        .await?;
    if res.rows_affected != 1 {
        return Err(used());
    }
    let actor = Actor { user_id: Some(user_id), ip: ip.map(str::to_owned) };
    let reason = format!("redemption code {}… (batch {})", row.prefix, row.batch_id);
    let credited = match value_of(&row.kind, row.amount, row.tokens, row.days) {
        Value::Money(amount) => {
            ledger::apply(
                &txn,
                ledger::Change {
                    user_id,
                    delta: amount,
                    kind: ledger::REDEEM,
                    reason: &reason,
                    actor: Some(user_id),
                    ip: actor.ip.clone(),
                },
            )
            .await?;
            Credited::Money { amount }
        }
        Value::Subscription { tokens, days } => {
            let name = format!("code {}", row.prefix);
            Credited::Subscription(crate::subscriptions::grant_in(&txn, user_id, &name, tokens, days, &actor).await?)
        }
    };
    audit::record_from(
        &txn,
        audit::Entry {
            actor_user_id: Some(user_id),
            action: "redemption_code.redeem",
            target_type: "redemption_code",
            target_id: row.id.to_string(),
            before: None,
            after: Some(json!({
                "user_id": user_id,
                "batch_id": row.batch_id,
                "kind": row.kind,
                "amount": format_amount(row.amount),
                "tokens": row.tokens,
                "days": row.days,
            })),
        },
        ip,
    )
    .await?;
    let balance = balance::amount(&txn, user_id).await?;
    txn.commit().await?;
    Ok(Redeemed { code_id: row.id, batch_id: row.batch_id, credited, balance })
}

/// A batch with how many of its codes were redeemed.
#[derive(Clone, Debug)]
pub struct BatchRow {
    pub batch: batches::Model,
    pub redeemed: i64,
}

/// Batches, newest first.
pub async fn list_batches(db: &Db, paging: Paging) -> Result<Page<BatchRow>> {
    let total = batches::Entity::find().count(&db.read).await?;
    let rows = batches::Entity::find()
        .order_by_desc(batches::Column::Id)
        .offset(paging.offset())
        .limit(paging.page_size)
        .all(&db.read)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|b| b.id).collect();
    let redeemed: HashMap<i64, i64> = if ids.is_empty() {
        HashMap::new()
    } else {
        codes::Entity::find()
            .select_only()
            .column(codes::Column::BatchId)
            .column_as(int_expr(db.backend, "COUNT(*)"), "redeemed")
            .filter(codes::Column::BatchId.is_in(ids))
            .filter(codes::Column::RedeemedAt.is_not_null())
            .group_by(codes::Column::BatchId)
            .into_tuple::<(i64, i64)>()
            .all(&db.read)
            .await?
            .into_iter()
            .collect()
    };
    let rows = rows
        .into_iter()
        .map(|batch| BatchRow { redeemed: redeemed.get(&batch.id).copied().unwrap_or(0), batch })
        .collect();
    Ok(Page { rows, total, paging })
}

/// The codes of one batch (never their plaintext), by id.
pub async fn list_codes(db: &Db, batch_id: i64, paging: Paging) -> Result<Page<codes::Model>> {
    batches::Entity::find_by_id(batch_id)
        .one(&db.read)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no batch with id {batch_id}")))?;
    let find = || codes::Entity::find().filter(codes::Column::BatchId.eq(batch_id));
    let total = find().count(&db.read).await?;
    let rows =
        find().order_by_asc(codes::Column::Id).offset(paging.offset()).limit(paging.page_size).all(&db.read).await?;
    Ok(Page { rows, total, paging })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_well_formed_and_canonical() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.plaintext.len(), "TG-XXXX-XXXX-XXXX-XXXX".len());
        assert_eq!(canonical(&a.plaintext).as_deref(), Some(a.plaintext.as_str()));
        assert_eq!(a.hash, crypto::sha256_hex(&a.plaintext));
        assert!(a.plaintext.starts_with(&a.prefix) && a.prefix.len() == 7);
        assert!(!format!("{a:?}").contains(&a.plaintext[8..]), "Debug hides the code");
    }

    #[test]
    fn typing_variants_are_read_as_the_same_code() {
        let code = "TG-0123-4567-89AB-CDEF";
        for typed in
            ["tg-0123-4567-89ab-cdef", " TG 0123 4567 89AB CDEF ", "0123456789abcdef", "TG-O123-4567-89AB-CDEF"]
        {
            assert_eq!(canonical(typed).as_deref(), Some(code), "{typed}");
        }
        assert_eq!(canonical("TG-1111-1111-1111-1111").as_deref(), canonical("TG-IIII-LLLL-1111-1111").as_deref());
        for bad in [
            "",
            "TG-",
            "TG-0123-4567-89AB-CDE",
            "TG-0123-4567-89AB-CDEFG",
            "TG-0123-4567-89AB-CDEU",
            "x".repeat(80).as_str(),
        ] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn eighty_bits_fill_every_symbol() {
        // Over many codes every position takes many values: no position is constant.
        let all: Vec<String> = (0..200).map(|_| generate().plaintext).collect();
        for i in 0..all[0].len() {
            let distinct: std::collections::HashSet<u8> = all.iter().map(|c| c.as_bytes()[i]).collect();
            let fixed = all[0].as_bytes()[i] == b'-' || i < 2;
            assert!(fixed || distinct.len() > 10, "position {i}: {distinct:?}");
        }
    }
}

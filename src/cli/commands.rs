//! What each command does. Results go to stdout, logs to stderr.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::json;

use super::{Cli, Command, KeyCommand, ModelCommand, SubscriptionCommand, UserCommand};
use crate::accounts::{self, NewUser, ROLE_ADMIN, ROLE_USER, password};
use crate::app::{Application, build_cache};
use crate::billing::{balance, ledger};
use crate::cache::Cache;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::db::Db;
use crate::db::entities::{api_keys, subscriptions as subs};
use crate::gateway::{auth, catalog};
use crate::money::{format_amount, parse_amount};
use crate::{jobs, keys, subscriptions};

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}

async fn open(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.database_url, config.database_pool_size.min(4)).await?;
    if !db.pending_migrations().await?.is_empty() {
        if config.auto_migrate {
            db.migrate().await.context("applying migrations")?;
        } else {
            bail!("the database has unapplied migrations: run `tollgate migrate`");
        }
    }
    Ok(db)
}

/// Runs one parsed command.
pub async fn run(cli: Cli, mut config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            if args.no_migrate {
                config.auto_migrate = false;
            }
            Application::build(config).await?.run_until_stopped().await
        }
        Command::Migrate => {
            let db = Db::connect(&config.database_url, 2).await?;
            let pending = db.pending_migrations().await?;
            db.migrate().await.context("applying migrations")?;
            if pending.is_empty() {
                out("database schema is up to date; nothing to apply")?;
            } else {
                out(&format!("applied {} migration(s): {}", pending.len(), pending.join(", ")))?;
            }
            db.close().await;
            Ok(())
        }
        Command::User(cmd) => {
            let db = open(&config).await?;
            let result = user(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Key(cmd) => {
            let db = open(&config).await?;
            let result = key(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Model(cmd) => {
            let db = open(&config).await?;
            let result = model(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Subscription(cmd) => {
            let db = open(&config).await?;
            let result = subscription(&db, cmd).await;
            db.close().await;
            result
        }
    }
}

async fn user(db: &Db, cache: &Cache, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Create { email, password, password_stdin, admin, name } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                password
            };
            let password_hash = match password {
                Some(p) => Some(password::hash(p).await?),
                None => None,
            };
            let txn = db.begin().await?;
            let user = accounts::create_user(
                &txn,
                NewUser {
                    email: &email,
                    name: name.as_deref(),
                    role: if admin { ROLE_ADMIN } else { ROLE_USER },
                    password_hash,
                    signup_credit: 0,
                },
            )
            .await?;
            txn.commit().await?;
            out(&format!("created user {} (id {}, role {})", user.email, user.id, user.role))
        }
        UserCommand::Show { email, json } => show_user(db, &email, json).await,
        UserCommand::Topup { email, amount, reason } => {
            let micros = parse_amount(&amount).map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
            if micros == 0 {
                bail!("--amount: must be greater than zero");
            }
            let user = accounts::require_by_email(&db.read, &email).await?;
            let after = ledger::adjust(db, user.id, micros, "topup", &reason, None).await?;
            out(&format!(
                "topped up {} by {}; balance is now {}",
                user.email,
                format_amount(micros),
                format_amount(after)
            ))
        }
        UserCommand::Disable { email } => {
            let user = accounts::set_disabled(db, &email, true, None).await?;
            auth::forget_user_keys(db, cache, user.id).await?;
            let sessions = crate::auth::sessions::end_all(db, user.id).await?;
            out(&format!(
                "disabled {}; their keys stop working within 5 seconds and {sessions} sign-in session(s) ended",
                user.email
            ))
        }
        UserCommand::Enable { email } => {
            let user = accounts::set_disabled(db, &email, false, None).await?;
            out(&format!("enabled {}", user.email))
        }
    }
}

async fn show_user(db: &Db, email: &str, as_json: bool) -> anyhow::Result<()> {
    let user = accounts::require_by_email(&db.read, email).await?;
    let amount = balance::amount(&db.read, user.id).await?;
    let subscriptions = subs::Entity::find()
        .filter(subs::Column::UserId.eq(user.id))
        .order_by_asc(subs::Column::ExpiresAt)
        .all(&db.read)
        .await?;
    let key_count = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .count(&db.read)
        .await?;
    let now = crate::clock::now_ms();
    if as_json {
        let subs: Vec<_> = subscriptions
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "name": s.name,
                    "tokens_total": s.tokens_total,
                    "tokens_remaining": s.tokens_remaining,
                    "expires_at": rfc3339(s.expires_at),
                    "active": s.expires_at > now && s.tokens_remaining > 0,
                })
            })
            .collect();
        let doc = json!({
            "id": user.id,
            "email": user.email,
            "name": user.name,
            "role": user.role,
            "disabled": user.disabled,
            "balance": format_amount(amount),
            "subscriptions": subs,
            "key_count": key_count,
            "created_at": rfc3339(user.created_at),
        });
        return out(&serde_json::to_string_pretty(&doc)?);
    }
    let mut text = format!(
        "user {} (id {})\nrole: {}{}\nbalance: {}\nkeys: {}\nsubscriptions:",
        user.email,
        user.id,
        user.role,
        if user.disabled { " (disabled)" } else { "" },
        format_amount(amount),
        key_count
    );
    if subscriptions.is_empty() {
        text.push_str(" none");
    }
    for s in &subscriptions {
        let status = if s.expires_at <= now { "expired" } else { "active" };
        text.push_str(&format!(
            "\n  #{} {}: {} of {} tokens left, {} {}",
            s.id,
            s.name,
            s.tokens_remaining,
            s.tokens_total,
            if status == "expired" { "expired" } else { "expires" },
            rfc3339(s.expires_at)
        ));
    }
    out(&text)
}

async fn key(db: &Db, cache: &Cache, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { email, name } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let (row, plaintext) = keys::create(&db.write, user.id, name.as_deref()).await?;
            tracing::info!(key.id = row.id, user.id = user.id, "key created");
            out(&plaintext)
        }
        KeyCommand::Revoke { id } => {
            let row = keys::revoke(&db.write, None, id).await?;
            auth::forget_revoked(cache, &row.key_hash).await;
            out(&format!("revoked key {} ({}…{}); it stops working within 5 seconds", row.id, row.prefix, row.last4))
        }
        KeyCommand::Disable { id } => {
            let row = keys::set_disabled(&db.write, id, true).await?;
            cache.delete(&crate::cache::key_cache(&row.key_hash)).await;
            out(&format!("disabled key {} ({}…{}); it stops working within 5 seconds", row.id, row.prefix, row.last4))
        }
        KeyCommand::Enable { id } => {
            let row = keys::set_disabled(&db.write, id, false).await?;
            out(&format!("enabled key {} ({}…{})", row.id, row.prefix, row.last4))
        }
    }
}

async fn subscription(db: &Db, cmd: SubscriptionCommand) -> anyhow::Result<()> {
    match cmd {
        SubscriptionCommand::Grant { email, tokens, days, name } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let sub = subscriptions::grant(db, user.id, &name, tokens, days, None).await?;
            out(&format!(
                "granted subscription #{} to {}: {} tokens until {}",
                sub.id,
                user.email,
                sub.tokens_remaining,
                rfc3339(sub.expires_at)
            ))
        }
        SubscriptionCommand::Renew { id, days, tokens } => {
            let sub = subscriptions::renew(db, id, days, tokens, None).await?;
            out(&format!(
                "renewed subscription #{}: {} tokens left, expires {}",
                sub.id,
                sub.tokens_remaining,
                rfc3339(sub.expires_at)
            ))
        }
        SubscriptionCommand::Expire => {
            let affected = jobs::run_expiry(db).await?;
            out(&format!("expired {affected} subscription(s)"))
        }
    }
}

fn price(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
    value.map(|v| parse_amount(&v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
}

async fn model(db: &Db, cache: &Cache, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::List { json } => {
            let models = catalog::all(&db.read).await?;
            if json {
                let list: Vec<_> = models
                    .iter()
                    .map(|m| {
                        json!({
                            "name": m.name,
                            "upstream_model": m.upstream_model,
                            "input_price": format_amount(m.input_price),
                            "output_price": format_amount(m.output_price),
                            "max_output_tokens": m.max_output_tokens,
                            "context_window": m.context_window,
                            "enabled": m.enabled,
                            "cap_field": m.cap_field,
                        })
                    })
                    .collect();
                return out(&serde_json::to_string_pretty(&list)?);
            }
            let mut text = format!(
                "{:<28} {:>12} {:>12} {:>10} {:>10} {:<8} {}",
                "NAME", "INPUT/1M", "OUTPUT/1M", "MAX OUT", "CONTEXT", "ENABLED", "UPSTREAM"
            );
            for m in &models {
                text.push_str(&format!(
                    "\n{:<28} {:>12} {:>12} {:>10} {:>10} {:<8} {}",
                    m.name,
                    format_amount(m.input_price),
                    format_amount(m.output_price),
                    m.max_output_tokens,
                    m.context_window,
                    m.enabled,
                    m.upstream_model
                ));
            }
            out(&text)
        }
        ModelCommand::Set {
            name,
            input_price,
            output_price,
            max_output,
            context_window,
            upstream_model,
            enabled,
            cap_field,
        } => {
            let change = catalog::ModelChange {
                upstream_model,
                input_price: price("--input-price", input_price)?,
                output_price: price("--output-price", output_price)?,
                max_output_tokens: max_output,
                context_window,
                enabled,
                cap_field,
            };
            let m = catalog::set(db, cache, &name, change, None).await?;
            out(&format!(
                "{}: input {} / output {} per 1M tokens, max output {}, context {}, {}",
                m.name,
                format_amount(m.input_price),
                format_amount(m.output_price),
                m.max_output_tokens,
                m.context_window,
                if m.enabled { "enabled" } else { "disabled" }
            ))
        }
    }
}

//! What each command does. Results go to stdout, logs to stderr.

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::sqlx::ConnectOptions as _;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::json;

use super::{
    AuditCommand, ChannelArgs, ChannelCommand, Cli, CodeCommand, Command, DevCommand, KeyCommand, ModelCommand,
    PageArgs, SubscriptionCommand, UserCommand,
};
use crate::accounts::{self, NewUser, ROLE_ADMIN, ROLE_USER, password};
use crate::app::{Application, build_cache};
use crate::audit::Actor;
use crate::billing::{balance, ledger};
use crate::cache::Cache;
use crate::channels::{self, ChannelPatch, ChannelView, KeyChange, ModelRoute, NewChannel};
use crate::clock::rfc3339;
use crate::config::{Config, Secret};
use crate::db::entities::{api_keys, subscriptions as subs};
use crate::db::{Backend, Db};

use crate::money::{format_amount, parse_amount};
use crate::{admin, jobs, keys, models, redeem, subscriptions};

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}

/// Opens the database for an operator command. A SQLite file that does not exist is created
/// only when `create` is set: a relative `DATABASE_URL` (the default is one) resolves against
/// the working directory, and a command run from elsewhere must not start a second, empty
/// database and report success there.
async fn open(config: &Config, create: bool) -> anyhow::Result<Db> {
    if let Some(path) = sqlite_file(&config.database_url)
        && !create
        && !path.exists()
    {
        bail!(
            "no database at {}: DATABASE_URL is {}, and a relative path is read from the working \
             directory. Run the command where `tollgate serve` runs (or set DATABASE_URL to the \
             server's database), or pass --create to start a new, empty database here",
            path.display(),
            config.database_url
        );
    }
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

/// The absolute path of the file a SQLite URL names; `None` for other backends and for an
/// in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if Backend::from_url(url).ok()? != Backend::Sqlite {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    if options.to_url_lossy().query_pairs().any(|(k, v)| k == "mode" && v == "memory") {
        return None;
    }
    std::path::absolute(options.get_filename()).ok()
}

/// The database a URL names, for the operator: a SQLite file by its absolute path, a server
/// database by its URL without the password.
pub fn describe_database(url: &str) -> String {
    if let Some(path) = sqlite_file(url) {
        let state = if path.exists() { "" } else { " (does not exist yet)" };
        return format!("SQLite {}{state}", path.display());
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => url.split_once(':').map_or("unknown", |(scheme, _)| scheme).to_owned(),
    }
}

/// Says on stderr which database a command works on, so that working on the wrong one is seen
/// at once (stdout stays for the command's output).
fn announce(config: &Config) {
    eprintln!("database: {}", describe_database(&config.database_url));
}

/// Runs one parsed command.
pub async fn run(cli: Cli, mut config: Config) -> anyhow::Result<()> {
    let create = cli.create;
    match cli.command {
        Command::Serve(args) => {
            if args.no_migrate {
                config.auto_migrate = false;
            }
            tracing::info!(database = %describe_database(&config.database_url), "using database");
            Application::build(config).await?.run_until_stopped().await
        }
        Command::Healthcheck { addr } => healthcheck(&config, addr.as_deref()).await,
        Command::Migrate => {
            announce(&config);
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
            announce(&config);
            let db = open(&config, create).await?;
            let result = user(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Key(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = key(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Model(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = model(&db, &build_cache(&config)?, cmd).await;
            db.close().await;
            result
        }
        Command::Audit(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = audit(&db, cmd).await;
            db.close().await;
            result
        }
        Command::Code(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = code(&db, cmd).await;
            db.close().await;
            result
        }
        Command::Dev(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = match cmd {
                DevCommand::SeedUsage { rows, users, days } => super::dev::seed_usage(&db, rows, users, days).await,
                DevCommand::QueryTimes { runs } => super::dev::query_times(&db, runs).await,
            };
            db.close().await;
            out(&result?)
        }
        Command::Channel(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
            let result = channel(&db, &build_cache(&config)?, &config, cmd).await;
            db.close().await;
            result
        }
        Command::Subscription(cmd) => {
            announce(&config);
            let db = open(&config, create).await?;
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
            let after = ledger::adjust(db, user.id, micros, ledger::TOPUP, &reason, None).await?;
            out(&format!(
                "topped up {} by {}; balance is now {}",
                user.email,
                format_amount(micros),
                format_amount(after)
            ))
        }
        UserCommand::Adjust { email, amount, reason } => {
            let delta = admin::parse_delta(&amount).map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
            let user = accounts::require_by_email(&db.read, &email).await?;
            let kind = if delta > 0 { ledger::TOPUP } else { ledger::ADJUSTMENT };
            let after = ledger::adjust(db, user.id, delta, kind, &reason, None).await?;
            out(&format!(
                "adjusted {} by {}; balance is now {}",
                user.email,
                format_amount(delta),
                format_amount(after)
            ))
        }
        UserCommand::List { q, role, status, page, json } => {
            let query = admin::users::UserQuery { q, role, status, paging: paging(&page)? };
            let found = admin::users::search(db, &query).await?;
            if json {
                let rows: Vec<_> = found.rows.iter().map(admin::views::summary_json).collect();
                return out(&serde_json::to_string_pretty(&rows)?);
            }
            let mut text = format!(
                "{:<6} {:<32} {:<6} {:<8} {:>14} {:>12} {:>5} {:>12}  {}",
                "ID", "EMAIL", "ROLE", "STATUS", "BALANCE", "SUB TOKENS", "KEYS", "SPEND 30D", "LAST ACTIVE"
            );
            for r in &found.rows {
                text.push_str(&format!(
                    "\n{:<6} {:<32} {:<6} {:<8} {:>14} {:>12} {:>5} {:>12}  {}",
                    r.user.id,
                    r.user.email,
                    r.user.role,
                    if r.user.disabled { "disabled" } else { "active" },
                    format_amount(r.balance),
                    r.subscription_tokens,
                    r.keys,
                    format_amount(r.spend_recent),
                    r.last_active.map_or_else(|| "-".to_owned(), rfc3339)
                ));
            }
            text.push_str(&format!("\n{} of {} user(s), page {}", found.rows.len(), found.total, found.paging.page));
            out(&text)
        }
        UserCommand::Disable { email } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let (user, sessions) = accounts::set_disabled(db, cache, user.id, true, &Actor::system()).await?;
            out(&format!(
                "disabled {}; their keys stop working within 5 seconds and {sessions} sign-in session(s) ended",
                user.email
            ))
        }
        UserCommand::Enable { email } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let (user, _) = accounts::set_disabled(db, cache, user.id, false, &Actor::system()).await?;
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
        KeyCommand::List { email, json } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let query = admin::keys::KeyQuery {
                user: Some(user.id.to_string()),
                q: None,
                paging: admin::Paging { page: 1, page_size: keys::MAX_KEYS_PER_USER * 100 },
            };
            let found = admin::keys::list(db, &query).await?;
            if json {
                let rows: Vec<_> = found.rows.iter().map(admin::views::key_row_json).collect();
                return out(&serde_json::to_string_pretty(&rows)?);
            }
            let mut text = format!("{:<6} {:<24} {:<14} {:<9} {}", "ID", "NAME", "KEY", "STATE", "LAST USED");
            for r in &found.rows {
                let k = &r.key;
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.disabled {
                    "disabled"
                } else {
                    "active"
                };
                text.push_str(&format!(
                    "\n{:<6} {:<24} {:<14} {:<9} {}",
                    k.id,
                    k.name,
                    format!("{}…{}", k.prefix, k.last4),
                    state,
                    k.last_used_at.map_or_else(|| "never".to_owned(), rfc3339)
                ));
            }
            out(&text)
        }
        KeyCommand::Create { email, name } => {
            let user = accounts::require_by_email(&db.read, &email).await?;
            let (row, plaintext) = keys::create(&db.write, user.id, name.as_deref()).await?;
            tracing::info!(key.id = row.id, user.id = user.id, "key created");
            out(&plaintext)
        }
        KeyCommand::Revoke { id } => {
            let row = keys::revoke(db, cache, None, id).await?;
            out(&format!("revoked key {} ({}…{}); it stops working within 5 seconds", row.id, row.prefix, row.last4))
        }
        KeyCommand::Disable { id } => {
            let row = keys::set_disabled(db, cache, None, id, true).await?;
            out(&format!("disabled key {} ({}…{}); it stops working within 5 seconds", row.id, row.prefix, row.last4))
        }
        KeyCommand::Enable { id } => {
            let row = keys::set_disabled(db, cache, None, id, false).await?;
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

async fn code(db: &Db, cmd: CodeCommand) -> anyhow::Result<()> {
    match cmd {
        CodeCommand::Create { count, amount, tokens, days, expires_days, note } => {
            let value = match (amount, tokens, days) {
                (Some(a), None, None) => {
                    redeem::Value::Money(parse_amount(&a).map_err(|e| anyhow::anyhow!("--amount: {e}"))?)
                }
                (None, Some(tokens), Some(days)) => redeem::Value::Subscription { tokens, days },
                _ => bail!("give either --amount, or --tokens and --days"),
            };
            let new = redeem::NewBatch { count, value, expires_in_days: expires_days, note };
            let created = redeem::create_batch(db, &new, &Actor::system()).await?;
            let b = &created.batch;
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["code", "amount", "tokens", "days", "expires_at"])?;
            let (amount, tokens, days) = (format_amount(b.amount), b.tokens.to_string(), b.days.to_string());
            let expires = b.expires_at.map(rfc3339).unwrap_or_default();
            for c in &created.codes {
                w.write_record([c.as_str(), &amount, &tokens, &days, &expires])?;
            }
            let text = String::from_utf8(w.into_inner()?)?;
            eprintln!("batch {}: {} code(s); they are not shown again", b.id, created.codes.len());
            out(text.trim_end())
        }
        CodeCommand::List { page, json } => {
            let found = redeem::list_batches(db, paging(&page)?).await?;
            if json {
                let rows: Vec<_> = found
                    .rows
                    .iter()
                    .map(|r| {
                        let b = &r.batch;
                        json!({
                            "id": b.id,
                            "kind": b.kind,
                            "amount": format_amount(b.amount),
                            "tokens": b.tokens,
                            "days": b.days,
                            "count": b.code_count,
                            "redeemed": r.redeemed,
                            "expires_at": b.expires_at.map(rfc3339),
                            "note": b.note,
                            "created_at": rfc3339(b.created_at),
                        })
                    })
                    .collect();
                return out(&serde_json::to_string_pretty(&rows)?);
            }
            let mut text = format!(
                "{:<6} {:<12} {:>14} {:>12} {:>5} {:>7} {:>8}  {:<24} {}",
                "BATCH", "KIND", "AMOUNT", "TOKENS", "DAYS", "CODES", "REDEEMED", "EXPIRES", "NOTE"
            );
            for r in &found.rows {
                let b = &r.batch;
                text.push_str(&format!(
                    "\n{:<6} {:<12} {:>14} {:>12} {:>5} {:>7} {:>8}  {:<24} {}",
                    b.id,
                    b.kind,
                    format_amount(b.amount),
                    b.tokens,
                    b.days,
                    b.code_count,
                    r.redeemed,
                    b.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
                    b.note
                ));
            }
            text.push_str(&format!("\n{} of {} batch(es), page {}", found.rows.len(), found.total, found.paging.page));
            out(&text)
        }
    }
}

fn paging(page: &PageArgs) -> anyhow::Result<admin::Paging> {
    Ok(admin::Paging::parse(Some(&page.page.to_string()), Some(&page.page_size.to_string()))?)
}

async fn audit(db: &Db, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { actor, action, target, page, json } => {
            let query = admin::audit_log::AuditQuery { actor, action, target, paging: paging(&page)? };
            let found = admin::audit_log::list(db, &query).await?;
            if json {
                let rows: Vec<_> = found.rows.iter().map(admin::views::audit_json).collect();
                return out(&serde_json::to_string_pretty(&rows)?);
            }
            let mut text = format!("{:<24} {:<24} {:<20} {:<16} {}", "WHEN", "ACTOR", "ACTION", "TARGET", "AFTER");
            for r in &found.rows {
                let e = &r.entry;
                text.push_str(&format!(
                    "\n{:<24} {:<24} {:<20} {:<16} {}",
                    rfc3339(e.created_at),
                    r.actor_email.as_deref().unwrap_or("system"),
                    e.action,
                    format!("{}:{}", e.target_type, e.target_id),
                    e.after.as_deref().unwrap_or("-")
                ));
            }
            text.push_str(&format!("\n{} of {} entr(ies), page {}", found.rows.len(), found.total, found.paging.page));
            out(&text)
        }
    }
}

fn price(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
    value.map(|v| parse_amount(&v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
}

/// A cache price flag: an amount, or `default` to clear the price back to its default.
fn cache_price(flag: &str, value: Option<String>) -> anyhow::Result<Option<Option<i64>>> {
    match value {
        Some(v) if v.trim() == "default" => Ok(Some(None)),
        other => Ok(price(flag, other)?.map(Some)),
    }
}

/// A price that may be unset (its default applies), for people.
fn optional_amount(v: Option<i64>) -> String {
    v.map_or_else(|| "default".to_owned(), format_amount)
}

async fn model(db: &Db, cache: &Cache, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::List { json } => {
            let models = models::all(&db.read).await?;
            if json {
                let list: Vec<_> = models
                    .iter()
                    .map(|m| {
                        json!({
                            "name": m.name,
                            "upstream_model": m.upstream_model,
                            "input_price": format_amount(m.input_price),
                            "output_price": format_amount(m.output_price),
                            "cache_read_price": m.cache_read_price.map(format_amount),
                            "cache_write_price": m.cache_write_price.map(format_amount),
                            "request_price": format_amount(m.request_price),
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
                "{:<28} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:<8} {}",
                "NAME",
                "INPUT/1M",
                "OUTPUT/1M",
                "CACHE RD/1M",
                "CACHE WR/1M",
                "/REQUEST",
                "MAX OUT",
                "CONTEXT",
                "ENABLED",
                "UPSTREAM"
            );
            for m in &models {
                text.push_str(&format!(
                    "\n{:<28} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:<8} {}",
                    m.name,
                    format_amount(m.input_price),
                    format_amount(m.output_price),
                    optional_amount(m.cache_read_price),
                    optional_amount(m.cache_write_price),
                    format_amount(m.request_price),
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
            cache_read_price,
            cache_write_price,
            request_price,
            max_output,
            context_window,
            upstream_model,
            enabled,
            cap_field,
        } => {
            let change = models::ModelChange {
                name: None,
                upstream_model,
                input_price: price("--input-price", input_price)?,
                output_price: price("--output-price", output_price)?,
                cache_read_price: cache_price("--cache-read-price", cache_read_price)?,
                cache_write_price: cache_price("--cache-write-price", cache_write_price)?,
                request_price: price("--request-price", request_price)?,
                max_output_tokens: max_output,
                context_window,
                enabled,
                cap_field,
            };
            let m = models::set(db, cache, &name, change, None).await?;
            out(&format!(
                "{}: input {} / output {} / cache read {} / cache write {} per 1M tokens, {} per request, \
                 max output {}, context {}, {}",
                m.name,
                format_amount(m.input_price),
                format_amount(m.output_price),
                optional_amount(m.cache_read_price),
                optional_amount(m.cache_write_price),
                format_amount(m.request_price),
                m.max_output_tokens,
                m.context_window,
                if m.enabled { "enabled" } else { "disabled" }
            ))
        }
        ModelCommand::Delete { name } => {
            let m = models::find_by_name(&db.read, &name).await?;
            models::delete(db, cache, m.id, &Actor::system()).await?;
            out(&format!("deleted model {}", m.name))
        }
    }
}

/// Upstream keys from standard input, one per line (blank lines skipped).
fn keys_from_stdin() -> anyhow::Result<Vec<Secret>> {
    let mut keys = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the keys from standard input")?;
        let key = line.trim();
        if !key.is_empty() {
            keys.push(Secret::new(key));
        }
    }
    if keys.is_empty() {
        bail!("--keys-stdin: standard input held no key (give one upstream key per line)");
    }
    Ok(keys)
}

/// `Name: value` headers.
fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, Secret)>> {
    raw.iter()
        .map(|h| {
            let (name, value) =
                h.split_once(':').ok_or_else(|| anyhow::anyhow!("--header: give it as `Name: value`"))?;
            Ok((name.trim().to_owned(), Secret::new(value.trim())))
        })
        .collect()
}

fn refuse_key_flag(args: &ChannelArgs) -> anyhow::Result<()> {
    if args.key.is_some() {
        bail!(
            "upstream keys are never taken from the command line (they would stay in the shell history and the \
             process list): pass --keys-stdin and give one key per line on standard input"
        );
    }
    Ok(())
}

fn channel_line(c: &ChannelView) -> String {
    let models: Vec<String> = c
        .models
        .iter()
        .map(|m| match &m.upstream {
            Some(u) => format!("{}={u}", m.public),
            None => m.public.clone(),
        })
        .collect();
    let keys: Vec<String> =
        c.keys.iter().map(|k| if k.enabled { k.hint.clone() } else { format!("{} (disabled)", k.hint) }).collect();
    let state = if c.enabled {
        "enabled".to_owned()
    } else {
        format!("disabled: {}", c.disabled_reason.as_deref().unwrap_or("by an operator"))
    };
    format!(
        "{:<5} {:<20} {:<10} {:<40} {:>8} {:>6}  {:<30} {:<24} {}",
        c.id,
        c.name,
        c.provider,
        c.base_url,
        c.priority,
        c.weight,
        models.join(","),
        if keys.is_empty() { "-".to_owned() } else { keys.join(",") },
        state
    )
}

fn channel_json(c: &ChannelView) -> serde_json::Value {
    json!({
        "id": c.id,
        "name": c.name,
        "type": c.provider,
        "base_url": c.base_url,
        "models": c.models.iter().map(|m| json!({ "name": m.public, "upstream": m.upstream })).collect::<Vec<_>>(),
        "priority": c.priority,
        "weight": c.weight,
        "enabled": c.enabled,
        "disabled_reason": c.disabled_reason,
        "keys": c.keys.iter().map(|k| json!({
            "id": k.id,
            "hint": k.hint,
            "enabled": k.enabled,
            "disabled_reason": k.disabled_reason,
        })).collect::<Vec<_>>(),
        "header_names": c.header_names,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
    })
}

async fn channel(db: &Db, cache: &Cache, config: &Config, cmd: ChannelCommand) -> anyhow::Result<()> {
    let settings = channels::Settings::from_config(config);
    let actor = Actor::system();
    match cmd {
        ChannelCommand::Add { name, args } => {
            refuse_key_flag(&args)?;
            let keys = if args.keys_stdin { keys_from_stdin()? } else { Vec::new() };
            let provider = args.provider.ok_or_else(|| anyhow::anyhow!("--type is required (openai or anthropic)"))?;
            let base_url = args.base_url.ok_or_else(|| anyhow::anyhow!("--base-url is required"))?;
            let models = args.models.ok_or_else(|| anyhow::anyhow!("--models is required (`*` for every model)"))?;
            let routes = models.iter().map(|m| ModelRoute::parse(m)).collect();
            let mut new = NewChannel::new(&name, &provider, &base_url, routes, keys);
            new.priority = args.priority.unwrap_or(new.priority);
            new.weight = args.weight.unwrap_or(new.weight);
            new.headers = parse_headers(&args.headers)?;
            let c = channels::create(db, cache, &settings, &actor, new).await?;
            out(&format!("added channel {} (id {}) with {} key(s)", c.name, c.id, c.keys.len()))
        }
        ChannelCommand::List { json } => {
            let all = channels::list(db).await?;
            if json {
                let rows: Vec<_> = all.iter().map(channel_json).collect();
                return out(&serde_json::to_string_pretty(&rows)?);
            }
            let mut text = format!(
                "{:<5} {:<20} {:<10} {:<40} {:>8} {:>6}  {:<30} {:<24} {}",
                "ID", "NAME", "TYPE", "BASE URL", "PRIORITY", "WEIGHT", "MODELS", "KEYS", "STATE"
            );
            for c in &all {
                text.push('\n');
                text.push_str(&channel_line(c));
            }
            out(&text)
        }
        ChannelCommand::Set { channel, name, clear_headers, enable_keys, args } => {
            refuse_key_flag(&args)?;
            let c = channels::find_by_name(db, &channel).await?;
            let keys = if args.keys_stdin {
                Some(KeyChange::Replace(keys_from_stdin()?))
            } else if enable_keys {
                Some(KeyChange::Enable(c.keys.iter().filter(|k| !k.enabled).map(|k| k.id).collect()))
            } else {
                None
            };
            let patch = ChannelPatch {
                name,
                provider: args.provider,
                base_url: args.base_url,
                models: args.models.map(|m| m.iter().map(|s| ModelRoute::parse(s)).collect()),
                priority: args.priority,
                weight: args.weight,
                keys,
                headers: if clear_headers {
                    Some(Vec::new())
                } else if args.headers.is_empty() {
                    None
                } else {
                    Some(parse_headers(&args.headers)?)
                },
                ..ChannelPatch::default()
            };
            let c = channels::update(db, cache, &settings, &actor, c.id, patch).await?;
            out(&format!("changed channel {} (id {})", c.name, c.id))
        }
        ChannelCommand::Test { channel } => {
            let c = channels::find_by_name(db, &channel).await?;
            // reqwest needs the process-wide rustls provider (as `serve` installs it).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let gateway = crate::gateway::Gateway::new(config, cache)?;
            let r = channels::test(db, &gateway, &actor, c.id).await?;
            let status = r.status.map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
            let model = r.model.as_deref().map(|m| format!(", model {m}")).unwrap_or_default();
            match r.error {
                None => out(&format!("{}: {status} in {} ms{model}", c.name, r.latency_ms)),
                Some(why) => bail!("{}: {status} after {} ms{model}: {why}", c.name, r.latency_ms),
            }
        }
        ChannelCommand::Enable { channel } => {
            let c = channels::find_by_name(db, &channel).await?;
            let c = channels::set_enabled(db, cache, &actor, c.id, true).await?;
            out(&format!("enabled channel {} (id {})", c.name, c.id))
        }
        ChannelCommand::Disable { channel } => {
            let c = channels::find_by_name(db, &channel).await?;
            let c = channels::set_enabled(db, cache, &actor, c.id, false).await?;
            out(&format!("disabled channel {} (id {})", c.name, c.id))
        }
        ChannelCommand::Delete { channel } => {
            let c = channels::find_by_name(db, &channel).await?;
            let c = channels::delete(db, cache, &actor, c.id).await?;
            out(&format!("deleted channel {} (id {}) and its {} key(s)", c.name, c.id, c.keys.len()))
        }
    }
}

/// `GET /healthz` on the local server over plain HTTP/1.1, bounded to a few seconds. Written
/// by hand so the container needs neither curl nor a shell.
async fn healthcheck(config: &Config, addr: Option<&str>) -> anyhow::Result<()> {
    let target = match addr {
        Some(a) => a.parse::<SocketAddr>().with_context(|| format!("--addr: `{a}` is not IP:PORT"))?,
        None => loopback_for(config.listen_addr),
    };
    let ask = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        // The status line is all that is needed.
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{target}: no answer within 5 seconds"))?
        .with_context(|| format!("{target}"))?;
    let line = String::from_utf8_lossy(&head);
    let status = line.lines().next().unwrap_or_default().trim();
    if status.split_whitespace().nth(1) == Some("200") {
        out(&format!("{target}: {status}"))
    } else {
        bail!("{target}/healthz answered `{status}`")
    }
}

/// The address to reach a server bound to `listen`: a wildcard bind is asked on loopback.
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, listen.port())
}

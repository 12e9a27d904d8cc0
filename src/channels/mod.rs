//! Channels: the upstream accounts requests are routed to, and every change to them.
//!
//! A channel is one upstream account: a provider type (`openai` today; `anthropic` is accepted
//! for the protocol work to come — routing only uses channels whose provider matches the
//! inbound protocol), a base URL, upstream keys (encrypted at rest, see `seal`), the models it
//! serves with an optional public → upstream name mapping (`*` serves every catalogue model
//! under its catalogue upstream name), a priority, a weight, extra request headers (encrypted
//! too: they may carry credentials), optional timeouts and optional upstream cost prices.
//!
//! # Service functions (the CLI, the admin API and the pages call these, never the tables)
//!
//! | function | does |
//! |---|---|
//! | [`create`]`(db, cache, settings, actor, NewChannel) -> ChannelView` | validates (name, URL, SSRF, weight, models, keys, headers), encrypts keys and headers, inserts, audits `channel.create` |
//! | [`update`]`(db, cache, settings, actor, id, ChannelPatch) -> ChannelView` | changes what the patch names (keys: [`KeyChange::Replace`] or [`KeyChange::Add`]), audits `channel.update` |
//! | [`set_enabled`]`(db, cache, actor, id, bool) -> ChannelView` | enables (clearing the disabled reason) or disables, audits `channel.enable`/`channel.disable`; keys the upstream refused stay disabled (`KeyChange::Enable` or `Replace` in an update) |
//! | [`delete`]`(db, cache, actor, id) -> ChannelView` | deletes the channel and its keys (usage rows keep the id), audits `channel.delete` |
//! | [`list`]`(db) -> Vec<ChannelView>` / [`get`]`(db, id)` / [`find_by_name`]`(db, name)` | read, by priority then name |
//! | [`test`]`(db, gateway, actor, id) -> TestReport` | a 1-token request to the channel's first model through the gateway's client and SSRF guard; audits `channel.test` |
//! | [`disable_key`] | the gateway's auto-disable on upstream 401/403 (actor none, `channel.auto_disable`) |
//! | `gateway.channels.health.states(&[id, …])` | each channel's breaker: `Closed`, `Open` (cooling down) or `HalfOpen` (one probe may go), shared through Redis |
//!
//! Each change is audited in its transaction and then bumps the `channels_version` cache key,
//! which every instance's routing directory compares on each request: this instance routes by
//! the new configuration at once, others within a second with Redis (and within
//! [`directory::RELOAD_EVERY`] without it). A [`ChannelView`] never holds a plaintext key or
//! header value: keys appear as masked hints (`sk-…abcd`), headers by name only.

pub mod directory;
pub mod health;
pub mod seal;
pub mod ssrf;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use self::seal::Sealer;
use crate::audit::{self, Actor};
use crate::cache::Cache;
use crate::clock::now_ms;
use crate::config::{Config, Secret};
use crate::db::entities::{channel_keys, channels};
use crate::db::{Db, is_unique_violation};
use crate::error::{Error, Result};

/// The provider types a channel may have.
pub const PROVIDERS: [&str; 2] = ["openai", "anthropic"];
/// The provider OpenAI-compatible requests are routed to.
pub const OPENAI: &str = "openai";
/// The provider type of Anthropic's native Messages API.
pub const ANTHROPIC: &str = "anthropic";
/// The model entry that stands for every catalogue model.
pub const ALL_MODELS: &str = "*";
/// The channel created from `OPENAI_BASE_URL`/`OPENAI_API_KEY` when none exists.
pub const DEFAULT_CHANNEL_NAME: &str = "default";
/// The cache key whose value changes with every channel change (see the module doc).
pub const VERSION_KEY: &str = "channels_version";
const VERSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The largest weight; weights are relative within one priority.
pub const MAX_WEIGHT: i32 = 1000;
/// The longest timeout a channel may set, in milliseconds.
pub const MAX_TIMEOUT_MS: i64 = 3_600_000;
/// Request headers a channel may not set: the client and the transport own them.
const RESERVED_HEADERS: [&str; 8] =
    ["host", "content-length", "content-type", "transfer-encoding", "connection", "accept", "te", "upgrade"];

/// What the gateway keeps for channels: the routing directory, their health, the settings.
#[derive(Debug)]
pub struct Runtime {
    pub settings: Settings,
    pub directory: directory::Directory,
    pub health: health::Health,
}

impl Runtime {
    pub fn new(config: &Config, cache: &Cache) -> Self {
        let settings = Settings::from_config(config);
        Self {
            directory: directory::Directory::new(settings.sealer.clone()),
            health: health::Health::new(config.channel_failure_threshold, config.channel_cooldown, cache.redis()),
            settings,
        }
    }
}

/// What the service functions need from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// From `ENCRYPTION_KEY`; without it no key or header can be stored.
    pub sealer: Option<Sealer>,
    /// `ALLOW_PRIVATE_UPSTREAMS`.
    pub allow_private: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self { sealer: config.encryption_key.clone(), allow_private: config.allow_private_upstreams }
    }

    fn sealer(&self) -> Result<&Sealer> {
        self.sealer.as_ref().ok_or_else(|| {
            Error::BadRequest(
                "ENCRYPTION_KEY is not set, so upstream keys and headers cannot be stored encrypted; set it \
                 (generate one with `openssl rand -base64 32`) and restart"
                    .into(),
            )
        })
    }
}

/// One model a channel serves: the catalogue name clients use, and the name sent upstream
/// (the catalogue's upstream name when none is given). `public` may be `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRoute {
    pub public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl ModelRoute {
    /// `name` or `name=upstream-name`, as the command line takes them.
    pub fn parse(spec: &str) -> Self {
        match spec.split_once('=') {
            Some((p, u)) => Self { public: p.trim().to_owned(), upstream: Some(u.trim().to_owned()) },
            None => Self { public: spec.trim().to_owned(), upstream: None },
        }
    }
}

/// Optional per-channel timeouts in milliseconds; `None` uses the `UPSTREAM_*_TIMEOUT_MS` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub connect_ms: Option<i64>,
    pub first_byte_ms: Option<i64>,
    pub idle_ms: Option<i64>,
    pub total_ms: Option<i64>,
}

/// A channel to create.
#[derive(Clone, Debug)]
pub struct NewChannel {
    pub name: String,
    /// One of [`PROVIDERS`].
    pub provider: String,
    pub base_url: String,
    pub models: Vec<ModelRoute>,
    pub priority: i32,
    /// 1..=1000.
    pub weight: i32,
    pub enabled: bool,
    /// Upstream keys; none for an upstream that needs none (a local model server).
    pub keys: Vec<Secret>,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, Secret)>,
    pub timeouts: Timeouts,
    /// Micro-units per 1M input / output tokens the operator pays upstream.
    pub input_cost: Option<i64>,
    pub output_cost: Option<i64>,
}

impl NewChannel {
    /// A channel with the defaults: priority 0, weight 1, enabled, no headers or timeouts.
    pub fn new(name: &str, provider: &str, base_url: &str, models: Vec<ModelRoute>, keys: Vec<Secret>) -> Self {
        Self {
            name: name.to_owned(),
            provider: provider.to_owned(),
            base_url: base_url.to_owned(),
            models,
            priority: 0,
            weight: 1,
            enabled: true,
            keys,
            headers: Vec::new(),
            timeouts: Timeouts::default(),
            input_cost: None,
            output_cost: None,
        }
    }
}

/// How a patch changes the keys.
#[derive(Clone, Debug)]
pub enum KeyChange {
    /// These keys, and no others (the old ones are deleted).
    Replace(Vec<Secret>),
    /// These keys in addition to the present ones.
    Add(Vec<Secret>),
    /// Enables these keys again (by id), e.g. after the upstream refused them for a while.
    Enable(Vec<i64>),
}

/// A change to a channel; `None` keeps the current value.
#[derive(Clone, Debug, Default)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub base_url: Option<String>,
    pub models: Option<Vec<ModelRoute>>,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
    pub keys: Option<KeyChange>,
    /// Replaces every extra header (an empty list removes them).
    pub headers: Option<Vec<(String, Secret)>>,
    pub timeouts: Option<Timeouts>,
    /// `Some(None)` removes the price.
    pub input_cost: Option<Option<i64>>,
    pub output_cost: Option<Option<i64>>,
}

/// An upstream key as anyone may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyView {
    pub id: i64,
    /// `sk-…abcd`: the key's kind and last four characters at most.
    pub hint: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<i64>,
}

/// A channel as anyone may see it: no plaintext key or header value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelView {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub base_url: String,
    pub models: Vec<ModelRoute>,
    pub priority: i32,
    pub weight: i32,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub keys: Vec<KeyView>,
    pub header_names: Vec<String>,
    pub timeouts: Timeouts,
    pub input_cost: Option<i64>,
    pub output_cost: Option<i64>,
    /// Enabled, and either keyless or with at least one enabled key.
    pub routable: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ChannelView {
    fn of(c: channels::Model, keys: Vec<channel_keys::Model>) -> Self {
        let keys: Vec<KeyView> = keys
            .into_iter()
            .map(|k| KeyView {
                id: k.id,
                hint: k.hint,
                enabled: k.enabled,
                disabled_reason: k.disabled_reason,
                disabled_at: k.disabled_at,
            })
            .collect();
        let routable = c.enabled && (keys.is_empty() || keys.iter().any(|k| k.enabled));
        Self {
            id: c.id,
            name: c.name,
            provider: c.provider,
            models: parse_models(&c.models),
            base_url: c.base_url,
            priority: c.priority,
            weight: c.weight,
            enabled: c.enabled,
            disabled_reason: c.disabled_reason,
            keys,
            header_names: c.header_names.split(',').filter(|n| !n.is_empty()).map(str::to_owned).collect(),
            timeouts: Timeouts {
                connect_ms: c.connect_timeout_ms,
                first_byte_ms: c.first_byte_timeout_ms,
                idle_ms: c.idle_timeout_ms,
                total_ms: c.total_timeout_ms,
            },
            input_cost: c.input_cost,
            output_cost: c.output_cost,
            routable,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// The models column, read leniently (a row written by hand that does not parse serves nothing).
pub fn parse_models(text: &str) -> Vec<ModelRoute> {
    serde_json::from_str(text).unwrap_or_default()
}

/// The masked form of a key: its `sk-` kind and its last four characters, or less of a short key.
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let kind = if key.starts_with("sk-") { "sk-" } else { "" };
    if chars.len() < 12 {
        return format!("{kind}…");
    }
    let last4: String = chars[chars.len() - 4..].iter().collect();
    format!("{kind}…{last4}")
}

// ---- validation -------------------------------------------------------------------------

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

fn check_name(name: &str) -> Result<String> {
    let trimmed = name.trim();
    let n = trimmed.chars().count();
    if n == 0 || n > 64 || trimmed.chars().any(char::is_control) || trimmed.contains(',') {
        return Err(bad("the channel name must be 1 to 64 characters, without control characters or commas"));
    }
    if trimmed.parse::<i64>().is_ok() {
        return Err(bad("the channel name cannot be a number (numbers are channel ids)"));
    }
    Ok(trimmed.to_owned())
}

fn check_provider(provider: &str) -> Result<String> {
    let p = provider.trim().to_ascii_lowercase();
    if PROVIDERS.contains(&p.as_str()) {
        Ok(p)
    } else {
        Err(bad(format!("the provider type must be one of {}", PROVIDERS.join(", "))))
    }
}

/// A base URL without credentials, query or fragment, http(s), stored without a trailing slash.
pub fn check_base_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw.trim()).map_err(|e| bad(format!("the base URL `{}` is not a URL: {e}", raw.trim())))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the base URL must start with http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("the base URL must not carry credentials; give the upstream key as a key"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the base URL must not have a query or a fragment"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the base URL needs a host"));
    }
    if raw.len() > 500 {
        return Err(bad("the base URL is at most 500 characters"));
    }
    let mut url = url;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn check_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@'))
}

fn check_models(models: &[ModelRoute]) -> Result<Vec<ModelRoute>> {
    if models.is_empty() {
        return Err(bad("a channel serves at least one model (`*` for every model)"));
    }
    if models.len() > 500 {
        return Err(bad("a channel lists at most 500 models"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        let public = m.public.trim().to_owned();
        let upstream = m.upstream.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
        if public != ALL_MODELS && !check_model_name(&public) {
            return Err(bad(format!("`{public}` is not a model name (letters, digits and - _ . : / @)")));
        }
        if public == ALL_MODELS && upstream.is_some() {
            return Err(bad("`*` cannot be mapped to one upstream name"));
        }
        if let Some(u) = &upstream
            && !check_model_name(u)
        {
            return Err(bad(format!("`{u}` is not an upstream model name")));
        }
        if !seen.insert(public.clone()) {
            return Err(bad(format!("the model `{public}` is listed twice")));
        }
        out.push(ModelRoute { public, upstream });
    }
    Ok(out)
}

fn check_weight(weight: i32) -> Result<()> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(bad(format!("the weight must be between 1 and {MAX_WEIGHT}")))
    }
}

fn check_keys(keys: &[Secret]) -> Result<Vec<Secret>> {
    if keys.len() > 100 {
        return Err(bad("a channel holds at most 100 keys"));
    }
    let mut out = Vec::new();
    for k in keys {
        let k = k.expose().trim();
        if k.is_empty() {
            continue;
        }
        // Report no part of the key itself.
        if k.len() > 1024 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("an upstream key must be at most 1024 characters without spaces or control characters"));
        }
        out.push(Secret::new(k));
    }
    Ok(out)
}

fn check_headers(headers: &[(String, Secret)]) -> Result<Vec<(String, Secret)>> {
    if headers.len() > 32 {
        return Err(bad("a channel sets at most 32 extra headers"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            return Err(bad(format!("`{name}` is not a header name")));
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(bad(format!("the header `{name}` is set by the relay and cannot be configured")));
        }
        if HeaderValue::from_str(value.expose().trim()).is_err() {
            return Err(bad(format!("the value of the header `{name}` is not a valid header value")));
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("the header `{name}` is given twice")));
        }
        out.push((name, Secret::new(value.expose().trim())));
    }
    Ok(out)
}

fn check_timeouts(t: &Timeouts) -> Result<()> {
    for (label, v) in
        [("connect", t.connect_ms), ("first-byte", t.first_byte_ms), ("idle", t.idle_ms), ("total", t.total_ms)]
    {
        if v.is_some_and(|ms| !(1..=MAX_TIMEOUT_MS).contains(&ms)) {
            return Err(bad(format!("the {label} timeout must be between 1 and {MAX_TIMEOUT_MS} ms")));
        }
    }
    Ok(())
}

fn check_cost(label: &str, v: Option<i64>) -> Result<()> {
    if v.is_some_and(|p| !(0..=crate::money::MAX_AMOUNT).contains(&p)) {
        return Err(bad(format!("the {label} cost must be between 0 and {}", crate::money::MAX_AMOUNT)));
    }
    Ok(())
}

async fn check_ssrf(url: &Url, settings: &Settings) -> Result<()> {
    ssrf::check_url(url, settings.allow_private).await.map_err(Error::BadRequest)
}

fn sealed_headers(settings: &Settings, headers: &[(String, Secret)]) -> Result<(Option<String>, String)> {
    if headers.is_empty() {
        return Ok((None, String::new()));
    }
    let map: serde_json::Map<String, serde_json::Value> =
        headers.iter().map(|(n, v)| (n.clone(), serde_json::Value::String(v.expose().to_owned()))).collect();
    let sealed = settings.sealer()?.seal(&serde_json::Value::Object(map).to_string());
    let names = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",");
    Ok((Some(sealed), names))
}

// ---- reads --------------------------------------------------------------------------------

fn no_channel(id: i64) -> Error {
    Error::NotFound(format!("no channel with id {id}"))
}

async fn row(conn: &impl ConnectionTrait, id: i64) -> Result<channels::Model> {
    channels::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| no_channel(id))
}

async fn keys_of(conn: &impl ConnectionTrait, id: i64) -> Result<Vec<channel_keys::Model>> {
    Ok(channel_keys::Entity::find()
        .filter(channel_keys::Column::ChannelId.eq(id))
        .order_by_asc(channel_keys::Column::Id)
        .all(conn)
        .await?)
}

async fn view(conn: &impl ConnectionTrait, id: i64) -> Result<ChannelView> {
    let c = row(conn, id).await?;
    Ok(ChannelView::of(c, keys_of(conn, id).await?))
}

/// Every channel, by priority (highest first) then name.
pub async fn list(db: &Db) -> Result<Vec<ChannelView>> {
    let rows = channels::Entity::find()
        .order_by_desc(channels::Column::Priority)
        .order_by_asc(channels::Column::Name)
        .all(&db.read)
        .await?;
    let mut keys = channel_keys::Entity::find().order_by_asc(channel_keys::Column::Id).all(&db.read).await?;
    Ok(rows
        .into_iter()
        .map(|c| {
            let (mine, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut keys).into_iter().partition(|k| k.channel_id == c.id);
            keys = rest;
            ChannelView::of(c, mine)
        })
        .collect())
}

/// The channel with this id.
pub async fn get(db: &Db, id: i64) -> Result<ChannelView> {
    view(&db.read, id).await
}

/// The channel named `name` (an id in decimal is accepted too).
pub async fn find_by_name(db: &Db, name: &str) -> Result<ChannelView> {
    if let Ok(id) = name.trim().parse::<i64>() {
        return get(db, id).await;
    }
    let c = channels::Entity::find()
        .filter(channels::Column::Name.eq(name.trim()))
        .one(&db.read)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no channel named `{}`", name.trim())))?;
    let keys = keys_of(&db.read, c.id).await?;
    Ok(ChannelView::of(c, keys))
}

/// How many channels exist.
pub async fn count(conn: &impl ConnectionTrait) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(channels::Entity::find().count(conn).await?)
}

// ---- changes ------------------------------------------------------------------------------

async fn audited(
    conn: &impl ConnectionTrait,
    actor: &Actor,
    action: &str,
    id: i64,
    before: Option<&ChannelView>,
    after: Option<&ChannelView>,
) -> Result<()> {
    audit::record_from(
        conn,
        audit::Entry {
            actor_user_id: actor.user_id,
            action,
            target_type: "channel",
            target_id: id.to_string(),
            before: before.map(|v| json!(v)),
            after: after.map(|v| json!(v)),
        },
        actor.ip.as_deref(),
    )
    .await
}

/// Tells every instance's routing directory that channels changed (see the module doc).
pub async fn invalidate(cache: &Cache) {
    directory::changed_here();
    cache.set(VERSION_KEY, &crate::crypto::random_token(12), VERSION_TTL).await;
}

fn name_taken(name: &str) -> Error {
    Error::Conflict(format!("a channel named `{name}` already exists"))
}

async fn insert_keys(conn: &impl ConnectionTrait, sealer: &Sealer, channel_id: i64, keys: &[Secret]) -> Result<()> {
    let now = now_ms();
    for key in keys {
        channel_keys::ActiveModel {
            channel_id: Set(channel_id),
            ciphertext: Set(sealer.seal(key.expose())),
            hint: Set(key_hint(key.expose())),
            enabled: Set(true),
            disabled_reason: Set(None),
            disabled_at: Set(None),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// Creates a channel. A name in use is a `Conflict`; keys or headers without `ENCRYPTION_KEY`,
/// and a base URL on an internal address (unless allowed), are refused.
pub async fn create(
    db: &Db,
    cache: &Cache,
    settings: &Settings,
    actor: &Actor,
    new: NewChannel,
) -> Result<ChannelView> {
    let name = check_name(&new.name)?;
    let provider = check_provider(&new.provider)?;
    let url = check_base_url(&new.base_url)?;
    let models = check_models(&new.models)?;
    check_weight(new.weight)?;
    let keys = check_keys(&new.keys)?;
    let headers = check_headers(&new.headers)?;
    check_timeouts(&new.timeouts)?;
    check_cost("input", new.input_cost)?;
    check_cost("output", new.output_cost)?;
    let sealer = if keys.is_empty() { None } else { Some(settings.sealer()?) };
    let (sealed_headers, header_names) = sealed_headers(settings, &headers)?;
    check_ssrf(&url, settings).await?;

    let txn = db.begin().await?;
    if channels::Entity::find().filter(channels::Column::Name.eq(&name)).one(&txn).await?.is_some() {
        return Err(name_taken(&name));
    }
    let now = now_ms();
    let saved = channels::ActiveModel {
        name: Set(name.clone()),
        provider: Set(provider),
        base_url: Set(url.to_string()),
        models: Set(json!(models).to_string()),
        priority: Set(new.priority),
        weight: Set(new.weight),
        enabled: Set(new.enabled),
        headers: Set(sealed_headers),
        header_names: Set(header_names),
        connect_timeout_ms: Set(new.timeouts.connect_ms),
        first_byte_timeout_ms: Set(new.timeouts.first_byte_ms),
        idle_timeout_ms: Set(new.timeouts.idle_ms),
        total_timeout_ms: Set(new.timeouts.total_ms),
        input_cost: Set(new.input_cost),
        output_cost: Set(new.output_cost),
        disabled_reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(|e| if is_unique_violation(&e) { name_taken(&name) } else { Error::Database(e) })?;
    if let Some(sealer) = sealer {
        insert_keys(&txn, sealer, saved.id, &keys).await?;
    }
    let after = view(&txn, saved.id).await?;
    audited(&txn, actor, "channel.create", saved.id, None, Some(&after)).await?;
    txn.commit().await?;
    invalidate(cache).await;
    Ok(after)
}

/// Changes what the patch names. Returns the saved channel.
pub async fn update(
    db: &Db,
    cache: &Cache,
    settings: &Settings,
    actor: &Actor,
    id: i64,
    patch: ChannelPatch,
) -> Result<ChannelView> {
    let name = patch.name.as_deref().map(check_name).transpose()?;
    let provider = patch.provider.as_deref().map(check_provider).transpose()?;
    let url = patch.base_url.as_deref().map(check_base_url).transpose()?;
    let models = patch.models.as_deref().map(check_models).transpose()?;
    if let Some(w) = patch.weight {
        check_weight(w)?;
    }
    let keys = match &patch.keys {
        Some(KeyChange::Replace(k)) => Some((true, check_keys(k)?)),
        Some(KeyChange::Add(k)) => Some((false, check_keys(k)?)),
        Some(KeyChange::Enable(_)) | None => None,
    };
    let headers = patch.headers.as_deref().map(check_headers).transpose()?;
    if let Some(t) = &patch.timeouts {
        check_timeouts(t)?;
    }
    check_cost("input", patch.input_cost.flatten())?;
    check_cost("output", patch.output_cost.flatten())?;
    let sealer = match &keys {
        Some((_, k)) if !k.is_empty() => Some(settings.sealer()?),
        _ => None,
    };
    let sealed = headers.as_deref().map(|h| sealed_headers(settings, h)).transpose()?;
    if let Some(url) = &url {
        check_ssrf(url, settings).await?;
    }

    let txn = db.begin().await?;
    let current = row(&txn, id).await?;
    let before = ChannelView::of(current.clone(), keys_of(&txn, id).await?);
    let new_name = name.clone().unwrap_or_else(|| current.name.clone());
    if name.is_some()
        && channels::Entity::find()
            .filter(channels::Column::Name.eq(&new_name))
            .filter(channels::Column::Id.ne(id))
            .one(&txn)
            .await?
            .is_some()
    {
        return Err(name_taken(&new_name));
    }
    let mut am: channels::ActiveModel = current.into();
    if let Some(v) = name {
        am.name = Set(v);
    }
    if let Some(v) = provider {
        am.provider = Set(v);
    }
    if let Some(v) = url {
        am.base_url = Set(v.to_string());
    }
    if let Some(v) = models {
        am.models = Set(json!(v).to_string());
    }
    if let Some(v) = patch.priority {
        am.priority = Set(v);
    }
    if let Some(v) = patch.weight {
        am.weight = Set(v);
    }
    if let Some(v) = patch.enabled {
        am.enabled = Set(v);
        if v {
            am.disabled_reason = Set(None);
        }
    }
    if let Some((sealed, names)) = sealed {
        am.headers = Set(sealed);
        am.header_names = Set(names);
    }
    if let Some(t) = patch.timeouts {
        am.connect_timeout_ms = Set(t.connect_ms);
        am.first_byte_timeout_ms = Set(t.first_byte_ms);
        am.idle_timeout_ms = Set(t.idle_ms);
        am.total_timeout_ms = Set(t.total_ms);
    }
    if let Some(v) = patch.input_cost {
        am.input_cost = Set(v);
    }
    if let Some(v) = patch.output_cost {
        am.output_cost = Set(v);
    }
    am.updated_at = Set(now_ms());
    am.update(&txn)
        .await
        .map_err(|e| if is_unique_violation(&e) { name_taken(&new_name) } else { Error::Database(e) })?;
    if let Some((replace, new_keys)) = keys {
        if replace {
            channel_keys::Entity::delete_many().filter(channel_keys::Column::ChannelId.eq(id)).exec(&txn).await?;
        }
        if let Some(sealer) = sealer {
            insert_keys(&txn, sealer, id, &new_keys).await?;
        }
    }
    if let Some(KeyChange::Enable(ids)) = &patch.keys {
        let known: Vec<i64> = before.keys.iter().map(|k| k.id).collect();
        if let Some(unknown) = ids.iter().find(|k| !known.contains(k)) {
            return Err(bad(format!("the channel has no key with id {unknown}")));
        }
        channel_keys::Entity::update_many()
            .col_expr(channel_keys::Column::Enabled, sea_orm::sea_query::Expr::value(true))
            .col_expr(channel_keys::Column::DisabledReason, sea_orm::sea_query::Expr::value(Option::<String>::None))
            .col_expr(channel_keys::Column::DisabledAt, sea_orm::sea_query::Expr::value(Option::<i64>::None))
            .filter(channel_keys::Column::ChannelId.eq(id))
            .filter(channel_keys::Column::Id.is_in(ids.clone()))
            .exec(&txn)
            .await?;
    }
    let after = view(&txn, id).await?;
    audited(&txn, actor, "channel.update", id, Some(&before), Some(&after)).await?;
    txn.commit().await?;
    invalidate(cache).await;
    Ok(after)
}

/// Enables (clearing the disabled reason) or disables the channel.
pub async fn set_enabled(db: &Db, cache: &Cache, actor: &Actor, id: i64, enabled: bool) -> Result<ChannelView> {
    let txn = db.begin().await?;
    let current = row(&txn, id).await?;
    let before = ChannelView::of(current.clone(), keys_of(&txn, id).await?);
    let mut am: channels::ActiveModel = current.into();
    am.enabled = Set(enabled);
    am.disabled_reason = Set(if enabled { None } else { Some("disabled by an operator".into()) });
    am.updated_at = Set(now_ms());
    am.update(&txn).await?;
    let after = view(&txn, id).await?;
    let action = if enabled { "channel.enable" } else { "channel.disable" };
    audited(&txn, actor, action, id, Some(&before), Some(&after)).await?;
    txn.commit().await?;
    invalidate(cache).await;
    Ok(after)
}

/// Deletes the channel and its keys. Usage rows keep its id (and the audit log its last view).
pub async fn delete(db: &Db, cache: &Cache, actor: &Actor, id: i64) -> Result<ChannelView> {
    let txn = db.begin().await?;
    let before = view(&txn, id).await?;
    channel_keys::Entity::delete_many().filter(channel_keys::Column::ChannelId.eq(id)).exec(&txn).await?;
    channels::Entity::delete_by_id(id).exec(&txn).await?;
    audited(&txn, actor, "channel.delete", id, Some(&before), None).await?;
    txn.commit().await?;
    invalidate(cache).await;
    Ok(before)
}

/// Disables an upstream key the upstream refused (401/403) — and the channel when it has no
/// enabled key left — with the reason, an audit entry (no actor) and a warning. No key
/// material is logged or stored in the clear.
pub async fn disable_key(db: &Db, cache: &Cache, channel_id: i64, key_id: Option<i64>, status: u16) -> Result<()> {
    let reason = format!("the upstream refused the key (HTTP {status})");
    let txn = db.begin().await?;
    let Some(current) = channels::Entity::find_by_id(channel_id).one(&txn).await? else {
        return Ok(());
    };
    let before = ChannelView::of(current.clone(), keys_of(&txn, channel_id).await?);
    let now = now_ms();
    if let Some(key_id) = key_id {
        channel_keys::Entity::update_many()
            .col_expr(channel_keys::Column::Enabled, sea_orm::sea_query::Expr::value(false))
            .col_expr(channel_keys::Column::DisabledReason, sea_orm::sea_query::Expr::value(reason.clone()))
            .col_expr(channel_keys::Column::DisabledAt, sea_orm::sea_query::Expr::value(now))
            .filter(channel_keys::Column::Id.eq(key_id))
            .filter(channel_keys::Column::ChannelId.eq(channel_id))
            .exec(&txn)
            .await?;
    }
    let keys = keys_of(&txn, channel_id).await?;
    let channel_off = keys.iter().all(|k| !k.enabled);
    if channel_off && current.enabled {
        let mut am: channels::ActiveModel = current.clone().into();
        am.enabled = Set(false);
        am.disabled_reason = Set(Some(if key_id.is_some() {
            format!("every upstream key was refused (HTTP {status})")
        } else {
            reason.clone()
        }));
        am.updated_at = Set(now);
        am.update(&txn).await?;
    }
    let after = view(&txn, channel_id).await?;
    if after == before {
        // Another request disabled it first.
        return Ok(());
    }
    audited(&txn, &Actor::system(), "channel.auto_disable", channel_id, Some(&before), Some(&after)).await?;
    txn.commit().await?;
    invalidate(cache).await;
    tracing::warn!(
        channel.id = channel_id,
        channel.name = %after.name,
        key.id = key_id,
        upstream.status = status,
        channel.disabled = !after.enabled,
        "the upstream refused a channel key: key disabled"
    );
    Ok(())
}

/// Creates the channel `default` (models `*`) from `OPENAI_BASE_URL`/`OPENAI_API_KEY` when
/// either is set and no channel exists, so installs from before channels keep working.
pub async fn ensure_default(db: &Db, cache: &Cache, config: &Config) -> anyhow::Result<()> {
    if !(config.openai_base_url_explicit || config.openai_api_key.is_some()) || count(&db.read).await? > 0 {
        return Ok(());
    }
    let settings = Settings::from_config(config);
    let keys = config.openai_api_key.iter().cloned().collect();
    let new = NewChannel::new(
        DEFAULT_CHANNEL_NAME,
        OPENAI,
        config.openai_base_url.as_str(),
        vec![ModelRoute { public: ALL_MODELS.into(), upstream: None }],
        keys,
    );
    match create(db, cache, &settings, &Actor::system(), new).await {
        Ok(v) => {
            tracing::info!(channel.id = v.id, "created the channel `default` from OPENAI_BASE_URL/OPENAI_API_KEY");
            Ok(())
        }
        // Another instance created it at the same moment.
        Err(Error::Conflict(_)) => Ok(()),
        Err(Error::BadRequest(why)) => Err(anyhow::anyhow!("OPENAI_BASE_URL/OPENAI_API_KEY: {why}")),
        Err(e) => Err(e.into()),
    }
}

/// Refuses to start when channel keys exist but `ENCRYPTION_KEY` is missing or cannot decrypt
/// them (one key of each channel is tried).
pub async fn check_encryption_key(db: &Db, config: &Config) -> anyhow::Result<()> {
    let keys = channel_keys::Entity::find().order_by_asc(channel_keys::Column::Id).all(&db.read).await?;
    let sealed_headers: Vec<String> =
        channels::Entity::find().all(&db.read).await?.into_iter().filter_map(|c| c.headers).collect();
    let Some(sample) = keys.first().map(|k| k.ciphertext.clone()).or_else(|| sealed_headers.first().cloned()) else {
        return Ok(());
    };
    let Some(sealer) = &config.encryption_key else {
        anyhow::bail!(
            "ENCRYPTION_KEY: channels hold encrypted upstream keys but ENCRYPTION_KEY is not set; set the key they \
             were stored with"
        );
    };
    let mut seen = HashSet::new();
    let samples =
        std::iter::once(sample).chain(keys.iter().filter(|k| seen.insert(k.channel_id)).map(|k| k.ciphertext.clone()));
    for sealed in samples {
        if sealer.open(&sealed).is_err() {
            anyhow::bail!(
                "ENCRYPTION_KEY: it cannot decrypt the stored channel keys (a different key?); set the key they were \
                 stored with"
            );
        }
    }
    Ok(())
}

/// The result of a channel test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// The upstream's HTTP status; none when no answer came.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// What went wrong, redacted; none on success.
    pub error: Option<String>,
    /// The upstream model name asked for.
    pub model: Option<String>,
}

/// Sends a 1-token request to the channel's first model (for `*`, the first enabled catalogue
/// model) through the gateway's upstream client and SSRF guard, with the channel's first
/// enabled key. Audited as `channel.test`; health and keys are left as they are.
pub async fn test(db: &Db, gateway: &crate::gateway::Gateway, actor: &Actor, id: i64) -> Result<TestReport> {
    let channel = get(db, id).await?;
    let started = Instant::now();
    let report = match directory::load_one(db, gateway.channels.settings.sealer.as_ref(), id).await? {
        None => TestReport {
            status: None,
            latency_ms: 0,
            error: Some("the channel has no usable key (all disabled, or not decryptable)".into()),
            model: None,
        },
        Some(route) => {
            let upstream = match route.models.first() {
                Some(m) if m.public == ALL_MODELS => crate::models::enabled(&db.read)
                    .await?
                    .first()
                    .map(|m| (m.upstream_model.clone(), m.cap_field.clone())),
                Some(m) => {
                    let cap = crate::models::find_by_name(&db.read, &m.public).await.ok().map(|c| c.cap_field);
                    Some((
                        m.upstream.clone().unwrap_or_else(|| m.public.clone()),
                        cap.unwrap_or_else(|| crate::models::CAP_FIELDS[0].to_owned()),
                    ))
                }
                None => None,
            };
            match upstream {
                None => {
                    TestReport { status: None, latency_ms: 0, error: Some("no model to test with".into()), model: None }
                }
                Some((model, cap_field)) => {
                    let mut body = json!({ "model": model, "messages": [{ "role": "user", "content": "ping" }] });
                    let path = if route.provider == ANTHROPIC {
                        body["max_tokens"] = json!(1);
                        crate::gateway::protocol::Protocol::Messages.path()
                    } else {
                        body[cap_field.as_str()] = json!(1);
                        crate::gateway::protocol::Protocol::Chat.path()
                    };
                    let outcome = gateway.upstream.probe(&route, body.to_string().into(), path).await;
                    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    match outcome {
                        Ok(status) if (200..300).contains(&status) => {
                            TestReport { status: Some(status), latency_ms, error: None, model: Some(model) }
                        }
                        Ok(status) => TestReport {
                            status: Some(status),
                            latency_ms,
                            error: Some(format!("the upstream answered HTTP {status}")),
                            model: Some(model),
                        },
                        Err(why) => TestReport { status: None, latency_ms, error: Some(why), model: Some(model) },
                    }
                }
            }
        }
    };
    let after = json!({ "channel": channel.name, "report": report });
    audit::record_from(
        &db.write,
        audit::Entry {
            actor_user_id: actor.user_id,
            action: "channel.test",
            target_type: "channel",
            target_id: id.to_string(),
            before: None,
            after: Some(after),
        },
        actor.ip.as_deref(),
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_what_cannot_be_served() {
        assert!(check_name("").is_err() && check_name(&"x".repeat(65)).is_err() && check_name("12").is_err());
        assert_eq!(check_name("  primary ").unwrap(), "primary");
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("https://user:pw@api.example.com/v1").is_err());
        assert!(check_base_url("https://api.example.com/v1?x=1").is_err());
        assert_eq!(check_base_url("https://api.example.com/v1/").unwrap().as_str(), "https://api.example.com/v1");
        assert!(check_weight(0).is_err() && check_weight(1001).is_err() && check_weight(1000).is_ok());
        assert!(check_models(&[]).is_err());
        assert!(check_models(&[ModelRoute::parse("a"), ModelRoute::parse("a=b")]).is_err());
        assert!(check_models(&[ModelRoute::parse("*=x")]).is_err());
        assert_eq!(ModelRoute::parse("gpt-4o=gpt-4o-2024").upstream.as_deref(), Some("gpt-4o-2024"));
        assert!(check_headers(&[("Host".into(), Secret::new("x"))]).is_err());
        assert!(check_headers(&[("x-api-key".into(), Secret::new("v"))]).is_ok());
        assert!(check_keys(&[Secret::new("sk-a b")]).is_err());
    }

    #[test]
    fn hints_show_at_most_the_last_four_characters() {
        assert_eq!(key_hint("sk-upstream-secret-0123456789abcdef"), "sk-…cdef");
        assert_eq!(key_hint("plainkey-1234567890"), "…7890");
        assert_eq!(key_hint("sk-short"), "sk-…");
    }
}

//! The routing directory: each instance keeps the routable channels in memory (keys decrypted,
//! headers parsed) and reloads them from the database when the `channels_version` cache key
//! changes — at once after a change made by this instance, within a second after another
//! instance's change with Redis (the in-process layer keeps Redis entries for at most a second)
//! — and in any case every `RELOAD_EVERY`, which bounds staleness without Redis. Changes made
//! in this process also bump a process-wide generation, so they apply here at once whatever
//! the cache holds.
//!
//! Candidate order for a model: enabled channels of the inbound protocol's provider that serve
//! the model and are not cooling down, highest priority first; within one priority a weighted
//! random order (so the first pick is by weight, and failover goes on to the rest of the same
//! priority by weight, then to lower priorities). A multi-key channel rotates its keys round
//! robin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use url::Url;

use super::seal::Sealer;
use super::{ALL_MODELS, ModelRoute, Timeouts, VERSION_KEY, parse_models};
use crate::cache::Cache;
use crate::config::Secret;
use crate::db::Db;
use crate::db::entities::{channel_keys, channels};
use crate::error::Result;

/// The longest a directory goes without reloading from the database.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// One upstream key of a route, decrypted.
#[derive(Clone, Debug)]
pub struct RouteKey {
    pub id: i64,
    pub secret: Secret,
}

/// A routable channel as the gateway uses it.
#[derive(Debug)]
pub struct Route {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub base_url: Url,
    pub models: Vec<ModelRoute>,
    pub priority: i32,
    pub weight: i32,
    /// Empty for a keyless channel (no `Authorization` is sent).
    pub keys: Vec<RouteKey>,
    /// Extra request headers, all marked sensitive.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeouts: Timeouts,
}

impl Route {
    /// The upstream model name for catalogue model `public` with catalogue upstream name
    /// `catalogue_upstream`, when this channel serves it.
    pub fn upstream_name(&self, public: &str, catalogue_upstream: &str) -> Option<String> {
        let explicit = self.models.iter().find(|m| m.public == public);
        match explicit {
            Some(m) => Some(m.upstream.clone().unwrap_or_else(|| catalogue_upstream.to_owned())),
            None if self.models.iter().any(|m| m.public == ALL_MODELS) => Some(catalogue_upstream.to_owned()),
            None => None,
        }
    }

    /// `{base_url}/{path}`.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path.trim_start_matches('/'));
        url.set_path(&joined);
        url
    }
}

/// Bumped by every channel change in this process, so this process's directories reload at
/// once whatever the cache says.
static LOCAL_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Marks the directories of this process stale.
pub fn changed_here() {
    LOCAL_GENERATION.fetch_add(1, Ordering::AcqRel);
}

struct Snapshot {
    routes: Vec<Arc<Route>>,
    version: Option<Arc<str>>,
    generation: u64,
    loaded_at: Option<Instant>,
}

/// The routable channels of this instance.
pub struct Directory {
    sealer: Option<Sealer>,
    snapshot: RwLock<Arc<Snapshot>>,
    reloading: tokio::sync::Mutex<()>,
    /// Round-robin positions of multi-key channels, kept across reloads.
    rotation: Mutex<HashMap<i64, usize>>,
    /// Until when an absent version is taken as still absent.
    absent_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

impl Directory {
    pub fn new(sealer: Option<Sealer>) -> Self {
        Self {
            sealer,
            snapshot: RwLock::new(Arc::new(Snapshot {
                routes: Vec::new(),
                version: None,
                generation: 0,
                loaded_at: None,
            })),
            reloading: tokio::sync::Mutex::new(()),
            rotation: Mutex::new(HashMap::new()),
            absent_until: Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().map(|s| Arc::clone(&s)).unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// The routable channels, reloaded when stale (see the module doc). A database failure
    /// keeps serving the last good list; with none yet it is the error.
    pub async fn routes(&self, db: &Db, cache: &Cache) -> Result<Vec<Arc<Route>>> {
        let asked_at = Instant::now();
        let generation = LOCAL_GENERATION.load(Ordering::Acquire);
        let version = self.version(cache).await;
        let fresh = |s: &Snapshot| {
            s.loaded_at.is_some_and(|t| t.elapsed() < RELOAD_EVERY)
                && s.version == version
                && s.generation == generation
        };
        let current = self.current();
        if fresh(&current) {
            return Ok(current.routes.clone());
        }
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.current();
        // Reloaded by another request since this one looked: as fresh as what it saw.
        if fresh(&current) || current.loaded_at.is_some_and(|t| t >= asked_at) {
            return Ok(current.routes.clone());
        }
        match load_all(db, self.sealer.as_ref()).await {
            Ok(routes) => {
                let next =
                    Arc::new(Snapshot { routes: routes.clone(), version, generation, loaded_at: Some(Instant::now()) });
                if let Ok(mut slot) = self.snapshot.write() {
                    *slot = next;
                }
                Ok(routes)
            }
            Err(e) if current.loaded_at.is_some() => {
                tracing::warn!(error = %e, "cannot reload the channels; routing by the last list");
                Ok(current.routes.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// The current `channels_version`. An absent one is not asked for again for a second
    /// (the cache keeps no negative entries, and with Redis each miss would be a round trip).
    async fn version(&self, cache: &Cache) -> Option<Arc<str>> {
        let now = Instant::now();
        if self.absent_until.lock().is_ok_and(|until| until.is_some_and(|t| now < t)) {
            return None;
        }
        let found = cache.get(VERSION_KEY).await;
        if found.is_none()
            && let Ok(mut until) = self.absent_until.lock()
        {
            *until = Some(now + Duration::from_secs(1));
        }
        found
    }

    /// The next key of `route` (round robin), skipping `dead` ones; `Some(None)` for a keyless
    /// channel, `None` when every key is dead.
    pub fn next_key(&self, route: &Route, dead: &[i64]) -> Option<Option<RouteKey>> {
        if route.keys.is_empty() {
            return Some(None);
        }
        let start = {
            let mut rotation = self.rotation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let pos = rotation.entry(route.id).or_insert(0);
            let start = *pos;
            *pos = pos.wrapping_add(1);
            start
        };
        (0..route.keys.len())
            .map(|i| &route.keys[(start + i) % route.keys.len()])
            .find(|k| !dead.contains(&k.id))
            .map(|k| Some(k.clone()))
    }
}

/// Every routable channel: enabled, with at least one enabled key it can decrypt (or no keys
/// at all), and readable headers.
async fn load_all(db: &Db, sealer: Option<&Sealer>) -> Result<Vec<Arc<Route>>> {
    let rows = channels::Entity::find()
        .filter(channels::Column::Enabled.eq(true))
        .order_by_desc(channels::Column::Priority)
        .order_by_asc(channels::Column::Id)
        .all(&db.read)
        .await?;
    let keys = channel_keys::Entity::find().order_by_asc(channel_keys::Column::Id).all(&db.read).await?;
    let mut by_channel: HashMap<i64, Vec<channel_keys::Model>> = HashMap::new();
    for k in keys {
        by_channel.entry(k.channel_id).or_default().push(k);
    }
    Ok(rows
        .into_iter()
        .filter_map(|c| {
            let keys = by_channel.remove(&c.id).unwrap_or_default();
            route_of(c, &keys, sealer).map(Arc::new)
        })
        .collect())
}

/// The route of one channel whatever its state (for a test), when it has a usable key.
pub async fn load_one(db: &Db, sealer: Option<&Sealer>, id: i64) -> Result<Option<Route>> {
    let Some(c) = channels::Entity::find_by_id(id).one(&db.read).await? else { return Ok(None) };
    let keys = channel_keys::Entity::find()
        .filter(channel_keys::Column::ChannelId.eq(id))
        .order_by_asc(channel_keys::Column::Id)
        .all(&db.read)
        .await?;
    Ok(route_of(c, &keys, sealer))
}

fn route_of(c: channels::Model, keys: &[channel_keys::Model], sealer: Option<&Sealer>) -> Option<Route> {
    let base_url = Url::parse(&c.base_url).ok()?;
    let mut route_keys = Vec::new();
    for k in keys.iter().filter(|k| k.enabled) {
        match sealer.map(|s| s.open(&k.ciphertext)) {
            Some(Ok(secret)) => route_keys.push(RouteKey { id: k.id, secret: Secret::new(secret) }),
            _ => tracing::error!(channel.id = c.id, key.id = k.id, "a channel key cannot be decrypted; skipped"),
        }
    }
    if !keys.is_empty() && route_keys.is_empty() {
        return None;
    }
    let mut headers = Vec::new();
    if let Some(sealed) = &c.headers {
        let Some(Ok(text)) = sealer.map(|s| s.open(sealed)) else {
            tracing::error!(channel.id = c.id, "the channel's headers cannot be decrypted; channel skipped");
            return None;
        };
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).ok()?;
        for (name, value) in map {
            let (Ok(name), Some(Ok(mut value))) =
                (HeaderName::from_bytes(name.as_bytes()), value.as_str().map(HeaderValue::from_str))
            else {
                continue;
            };
            value.set_sensitive(true);
            headers.push((name, value));
        }
    }
    Some(Route {
        id: c.id,
        models: parse_models(&c.models),
        name: c.name,
        provider: c.provider,
        base_url,
        priority: c.priority,
        weight: c.weight.max(1),
        keys: route_keys,
        headers,
        timeouts: Timeouts {
            connect_ms: c.connect_timeout_ms,
            first_byte_ms: c.first_byte_timeout_ms,
            idle_ms: c.idle_timeout_ms,
            total_ms: c.total_timeout_ms,
        },
    })
}

/// A small generator for the weighted order (not for secrets), seeded from the OS.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Self {
        let mut b = [0u8; 8];
        crate::crypto::fill_random(&mut b);
        Self(u64::from_le_bytes(b) | 1)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Orders `candidates`: by priority (highest first), and within one priority a weighted random
/// order — each position drawn among the rest with probability proportional to weight.
pub fn order<T>(mut candidates: Vec<(Arc<Route>, T)>, rng: &mut Rng) -> Vec<(Arc<Route>, T)> {
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0.priority));
    let mut out = Vec::with_capacity(candidates.len());
    while !candidates.is_empty() {
        let top = candidates[0].0.priority;
        let same = candidates.iter().take_while(|c| c.0.priority == top).count();
        let mut group: Vec<_> = candidates.drain(..same).collect();
        while !group.is_empty() {
            let total: u64 = group.iter().map(|c| c.0.weight.max(1).unsigned_abs() as u64).sum();
            let mut pick = rng.below(total);
            let mut at = 0;
            for (i, c) in group.iter().enumerate() {
                let w = c.0.weight.max(1).unsigned_abs() as u64;
                if pick < w {
                    at = i;
                    break;
                }
                pick -= w;
            }
            out.push(group.remove(at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: i64, priority: i32, weight: i32, models: &[&str]) -> Arc<Route> {
        Arc::new(Route {
            id,
            name: format!("c{id}"),
            provider: "openai".into(),
            base_url: Url::parse("https://api.example.com/v1").unwrap(),
            models: models.iter().map(|m| ModelRoute::parse(m)).collect(),
            priority,
            weight,
            keys: Vec::new(),
            headers: Vec::new(),
            timeouts: Timeouts::default(),
        })
    }

    #[test]
    fn priority_first_then_weight() {
        let mut rng = Rng::seeded();
        let mut first = HashMap::new();
        for _ in 0..4000 {
            let c = vec![(route(1, 0, 1, &["*"]), ()), (route(2, 0, 3, &["*"]), ()), (route(3, -1, 1000, &["*"]), ())];
            let o = order(c, &mut rng);
            assert_eq!(o[2].0.id, 3, "the lower priority comes last");
            *first.entry(o[0].0.id).or_insert(0) += 1;
        }
        let share = f64::from(first[&2]) / 4000.0;
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 picked first {share}");
    }

    #[test]
    fn model_names_map_per_channel() {
        let r = route(1, 0, 1, &["gpt-4o=gpt-4o-2024-08-06", "mini"]);
        assert_eq!(r.upstream_name("gpt-4o", "gpt-4o").as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(r.upstream_name("mini", "gpt-4o-mini").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(r.upstream_name("other", "other"), None);
        assert_eq!(route(2, 0, 1, &["*"]).upstream_name("x", "up-x").as_deref(), Some("up-x"));
        assert_eq!(r.url("chat/completions").as_str(), "https://api.example.com/v1/chat/completions");
    }
}

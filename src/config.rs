//! Every setting, its environment name and default, validated once at start.
//!
//! Settings are read from the process environment (and `.env`, loaded by the binary). A bad
//! value fails start-up with a message that names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use crate::db::{Backend, DEFAULT_SQLITE_PATH};
use crate::money;

/// The currency prices are shown in when `CURRENCY` is not set.
pub const DEFAULT_CURRENCY: &str = "USD";
/// The smallest output cap sent when a client that named none is given what its funds cover.
pub const DEFAULT_MIN_AFFORDABLE_OUTPUT_TOKENS: i64 = 256;

/// A secret value whose `Debug` and `Display` print nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A setting that could not be used; `var` is the environment variable to fix.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { var, message: message.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// An OAuth application and the provider endpoints it talks to.
#[derive(Clone, Debug)]
pub struct OAuthProvider {
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_url: Url,
    pub token_url: Url,
    /// GitHub: the API base (for `/user` and `/user/emails`); Google: the userinfo endpoint.
    pub api_url: Url,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`: sqlite://, mysql:// (MariaDB too) or postgres://.
    pub database_url: String,
    /// `DATABASE_POOL_SIZE`: connections to MySQL/PostgreSQL (SQLite: the read pool).
    pub database_pool_size: u32,
    /// `AUTO_MIGRATE`: apply migrations when `serve` starts.
    pub auto_migrate: bool,
    /// `REDIS_URL`: shared cache for several instances; in-process cache when unset.
    pub redis_url: Option<String>,
    /// `REDIS_TIMEOUT_MS`: how long one Redis call may take before the instance carries on
    /// without Redis for a few seconds.
    pub redis_timeout: Duration,
    /// `NEXTAUTH_SECRET` / `AUTH_SECRET`: signs and encrypts cookies.
    pub auth_secret: Secret,
    /// True when no auth secret was configured and one was generated for this process.
    pub auth_secret_generated: bool,
    /// `GITHUB_ID`, `GITHUB_SECRET`, `GITHUB_AUTH_URL`, `GITHUB_TOKEN_URL`, `GITHUB_API_URL`.
    pub github: Option<OAuthProvider>,
    /// `GOOGLE_ID`, `GOOGLE_SECRET`, `GOOGLE_AUTH_URL`, `GOOGLE_TOKEN_URL`, `GOOGLE_USERINFO_URL`.
    pub google: Option<OAuthProvider>,
    /// `OPENAI_API_KEY`: the upstream credential.
    pub openai_api_key: Option<Secret>,
    /// `OPENAI_BASE_URL`: any OpenAI-compatible endpoint.
    pub openai_base_url: Url,
    /// True when `OPENAI_BASE_URL` was set (the default channel is created from it).
    pub openai_base_url_explicit: bool,
    /// `ENCRYPTION_KEY`: 32 bytes (base64 or hex) that encrypt channel keys and headers at rest.
    pub encryption_key: Option<crate::channels::seal::Sealer>,
    /// `ALLOW_PRIVATE_UPSTREAMS`: let channels reach loopback, private and link-local addresses.
    pub allow_private_upstreams: bool,
    /// `UPSTREAM_MAX_ATTEMPTS`: upstream attempts of one request at most, over all channels
    /// (failover and retries together).
    pub upstream_max_attempts: u32,
    /// `CHANNEL_FAILURE_THRESHOLD`: consecutive failures that cool a channel down.
    pub channel_failure_threshold: u32,
    /// `CHANNEL_COOLDOWN_SECS`: how long a channel is skipped after it cooled down.
    pub channel_cooldown: Duration,
    /// `CRON_SECRET`: bearer secret of the cron endpoint; the endpoint is off without a usable one.
    pub cron_secret: Option<Secret>,
    /// `LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// `PUBLIC_URL`: the address users reach; decides the `Secure` cookie flag and the OAuth
    /// callback address.
    pub public_url: Url,
    /// False when `PUBLIC_URL` was not set: the server then uses the address it bound.
    pub public_url_explicit: bool,
    /// `LOG_FORMAT`: pretty or json.
    pub log_format: LogFormat,
    /// `METRICS_TOKEN`: when set, `/metrics` asks for it as a bearer token.
    pub metrics_token: Option<Secret>,
    /// `METRICS_ADDR`: when set, `/metrics` is served on this address only, not on the public port.
    pub metrics_addr: Option<SocketAddr>,
    /// `SITE_NAME`: the product name on pages (default "Tollgate").
    pub site_name: String,
    /// `CURRENCY`: ISO 4217 code of the unit amounts are kept in (default `USD`). Amounts are
    /// integers of micro-units; the code only labels them.
    pub currency: String,
    /// `CURRENCY_SYMBOL`: the symbol shown before amounts (default from `CURRENCY`: `$` for USD,
    /// `¥` for CNY/JPY, `€` for EUR, `£` for GBP, else the code and a space).
    pub currency_symbol: String,
    /// `ADMIN_EMAILS`: comma-separated addresses that are made admins when they sign in.
    pub admin_emails: Vec<String>,
    /// `SIGNUP_CREDIT`: money given to a new user at first sign-in, in micro-units.
    pub signup_credit: i64,
    /// `SCHEDULER_ENABLED`: run the daily jobs and the sweeper in this instance.
    pub scheduler_enabled: bool,
    /// `EXPIRE_SUBSCRIPTIONS_AT`: UTC time of day (HH:MM) of the daily expiry run.
    pub expire_subscriptions_at: (u8, u8),
    /// `STALE_RESERVATION_SECS`: a pending reservation older than this is resolved by the sweeper.
    pub stale_reservation_secs: u64,
    /// `SWEEP_INTERVAL_SECS`: how often the sweeper looks for stale reservations.
    pub sweep_interval_secs: u64,
    /// `SHUTDOWN_GRACE_SECS`: how long shutdown waits for open requests and settlements.
    pub shutdown_grace_secs: u64,
    /// `REDIS_PREFIX`: prefix of every Redis key (several deployments can share one Redis).
    pub redis_prefix: String,
    /// `UPSTREAM_CONNECT_TIMEOUT_MS`.
    pub upstream_connect_timeout: Duration,
    /// `UPSTREAM_FIRST_BYTE_TIMEOUT_MS`: until the upstream's response head.
    pub upstream_first_byte_timeout: Duration,
    /// `UPSTREAM_IDLE_TIMEOUT_MS`: between two chunks of a stream.
    pub upstream_idle_timeout: Duration,
    /// `UPSTREAM_TOTAL_TIMEOUT_MS`: the whole upstream exchange.
    pub upstream_total_timeout: Duration,
    /// `UPSTREAM_MAX_RETRIES`: retries before the first byte (429, 5xx, timeouts, refused).
    pub upstream_max_retries: u32,
    /// `MAX_CONCURRENT_REQUESTS_PER_USER`: in-flight API requests per user (across instances with
    /// Redis, per instance without).
    pub max_concurrent_per_user: u32,
    /// `MAX_REQUEST_BYTES`: the largest request body accepted.
    pub max_request_bytes: usize,
    /// `HEADER_READ_TIMEOUT_MS`: how long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_MS`: how long a client may take to send a request body.
    pub body_read_timeout: Duration,
    /// `SESSION_IDLE_SECS`: a sign-in session unused this long ends.
    pub session_idle: Duration,
    /// `SESSION_MAX_AGE_SECS`: a sign-in session ends this long after sign-in, however used.
    pub session_max_age: Duration,
    /// `TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges of the reverse proxies in
    /// front of Tollgate; only their `X-Forwarded-For`/`Forwarded` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `MAX_CHOICES`: the largest `n` (choices per request) accepted; more is a 400.
    pub max_choices: u32,
    /// `MIN_AFFORDABLE_OUTPUT_TOKENS`: a client that names no output cap and cannot afford the
    /// model's is sent the largest cap its funds cover when it is at least this; 402 below.
    pub min_affordable_output_tokens: i64,
    /// `DEFAULT_USER_RPM`: requests per minute of a user whose own limit is unset (unset or 0:
    /// none). Global across instances with Redis, per instance without.
    pub default_user_rpm: Option<i64>,
    /// `DEFAULT_USER_TPM`: tokens per minute (worst case at admission, corrected at settlement)
    /// of a user whose own limit is unset (unset or 0: none).
    pub default_user_tpm: Option<i64>,
    /// `IDLE_CONNECTION_TIMEOUT_MS`: a client connection with no request in progress for this
    /// long is closed (HTTP/1 keep-alive, HTTP/2, and connections that never send a request).
    pub idle_connection_timeout: Duration,
    /// `HTTP2_KEEPALIVE_SECS`: interval of HTTP/2 keep-alive pings; a peer that does not answer
    /// one within this interval is disconnected.
    pub http2_keepalive: Duration,
    /// `MAX_CONNECTIONS`: open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// `PASSWORD_HASH_CONCURRENCY`: password hashes computed at once (each takes ~19 MiB);
    /// sign-in attempts beyond it get 429.
    pub password_hash_concurrency: usize,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: how long a request waits for a database connection (or,
    /// on SQLite, for a lock) before it is answered 503.
    pub database_acquire_timeout: Duration,
    /// `UPSTREAM_MAX_RETRY_WAIT_MS`: the longest upstream `Retry-After` waited out before a
    /// retry; a longer one is passed on to the client as a 429.
    pub upstream_max_retry_wait: Duration,
    /// `REDEEM_FAILURE_LIMIT`: failed redemption-code attempts a user may make in 15 minutes
    /// (an address may make three times as many); further attempts get 429.
    pub redeem_failure_limit: usize,
}

/// Retries of the same channel before the first byte when no other channel is left.
pub const DEFAULT_UPSTREAM_MAX_RETRIES: u32 = 2;
/// Attempts of one request over all channels, unless `UPSTREAM_MAX_RETRIES` asks for more.
pub const DEFAULT_UPSTREAM_MAX_ATTEMPTS: u32 = 3;
/// The most attempts `UPSTREAM_MAX_ATTEMPTS` may allow.
pub const MAX_UPSTREAM_ATTEMPTS: u32 = 20;
pub const DEFAULT_CHANNEL_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_CHANNEL_COOLDOWN_SECS: u64 = 30;

/// The minimum length of a usable `CRON_SECRET`.
pub const MIN_CRON_SECRET_LEN: usize = 16;
const MIN_AUTH_SECRET_LEN: usize = 32;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let database_url = get("DATABASE_URL").unwrap_or_else(|| format!("sqlite://{DEFAULT_SQLITE_PATH}"));
        Backend::from_url(&database_url).map_err(|m| invalid("DATABASE_URL", m))?;

        let database_pool_size: u32 = parse(&get, "DATABASE_POOL_SIZE", 20)?;
        if database_pool_size == 0 || database_pool_size > 1000 {
            return Err(invalid("DATABASE_POOL_SIZE", "must be between 1 and 1000"));
        }

        let redis_url = get("REDIS_URL");
        if let Some(u) = &redis_url
            && !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://"))
        {
            return Err(invalid("REDIS_URL", "must start with redis://, rediss:// or redis+unix://"));
        }

        let (auth_secret, auth_secret_generated) = match get("NEXTAUTH_SECRET").or_else(|| get("AUTH_SECRET")) {
            Some(s) if s.len() < MIN_AUTH_SECRET_LEN => {
                return Err(invalid(
                    "NEXTAUTH_SECRET",
                    format!("must be at least {MIN_AUTH_SECRET_LEN} characters (try `openssl rand -base64 32`)"),
                ));
            }
            Some(s) => (Secret::new(s), false),
            None => (Secret::new(crate::crypto::random_token(32)), true),
        };

        let github = oauth(
            &get,
            ["GITHUB_ID", "GITHUB_SECRET", "GITHUB_AUTH_URL", "GITHUB_TOKEN_URL", "GITHUB_API_URL"],
            [
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                "https://api.github.com",
            ],
        )?;
        let google = oauth(
            &get,
            ["GOOGLE_ID", "GOOGLE_SECRET", "GOOGLE_AUTH_URL", "GOOGLE_TOKEN_URL", "GOOGLE_USERINFO_URL"],
            [
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                "https://openidconnect.googleapis.com/v1/userinfo",
            ],
        )?;

        let openai_api_key = get("OPENAI_API_KEY").map(Secret::new);
        let openai_base_url = url(&get, "OPENAI_BASE_URL", "https://api.openai.com/v1")?;
        let openai_base_url_explicit = get("OPENAI_BASE_URL").is_some();
        let encryption_key = match get("ENCRYPTION_KEY") {
            Some(v) => Some(crate::channels::seal::Sealer::parse(&v).map_err(|m| invalid("ENCRYPTION_KEY", m))?),
            None => None,
        };
        let cron_secret = get("CRON_SECRET").map(Secret::new);

        let listen_addr: SocketAddr =
            parse(&get, "LISTEN_ADDR", "127.0.0.1:3000".parse().map_err(|_| invalid("LISTEN_ADDR", "bad default"))?)?;
        let public_url_explicit = get("PUBLIC_URL").is_some();
        let public_url = match get("PUBLIC_URL") {
            Some(_) => url(&get, "PUBLIC_URL", "")?,
            None => Url::parse(&format!("http://{listen_addr}")).map_err(|e| invalid("PUBLIC_URL", e.to_string()))?,
        };

        let log_format = match get("LOG_FORMAT").as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(invalid("LOG_FORMAT", format!("`{other}` is not one of pretty, json"))),
        };

        let metrics_token = get("METRICS_TOKEN").map(Secret::new);
        let metrics_addr = match get("METRICS_ADDR") {
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|e| invalid("METRICS_ADDR", e.to_string()))?),
            None => None,
        };

        let site_name = get("SITE_NAME").map(|s| s.trim().to_owned()).unwrap_or_else(|| "Tollgate".to_owned());
        if site_name.is_empty() || site_name.chars().count() > 64 {
            return Err(invalid("SITE_NAME", "must be 1 to 64 characters"));
        }
        let currency =
            get("CURRENCY").map(|c| c.trim().to_ascii_uppercase()).unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("CURRENCY", "must be a three-letter ISO 4217 code such as USD or CNY"));
        }
        let currency_symbol = match get("CURRENCY_SYMBOL") {
            Some(s) if s.chars().count() > 8 => return Err(invalid("CURRENCY_SYMBOL", "must be at most 8 characters")),
            Some(s) => s,
            None => money::default_symbol(&currency),
        };
        let admin_emails = match get("ADMIN_EMAILS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    crate::accounts::normalize_email(e)
                        .map_err(|_| invalid("ADMIN_EMAILS", format!("`{e}` is not an email address")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };

        let signup_credit = match get("SIGNUP_CREDIT") {
            Some(v) => money::parse_amount(&v).map_err(|e| invalid("SIGNUP_CREDIT", e.to_string()))?,
            None => 0,
        };

        let expire_subscriptions_at = match get("EXPIRE_SUBSCRIPTIONS_AT") {
            Some(v) => parse_hh_mm(&v)
                .ok_or_else(|| invalid("EXPIRE_SUBSCRIPTIONS_AT", "must be a UTC time of day as HH:MM"))?,
            None => (0, 0),
        };

        let stale_reservation_secs: u64 = parse(&get, "STALE_RESERVATION_SECS", 900)?;
        if stale_reservation_secs < 60 {
            return Err(invalid("STALE_RESERVATION_SECS", "must be at least 60"));
        }
        let ms = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
            let v: u64 = parse(&get, var, default)?;
            if v == 0 {
                return Err(invalid(var, "must be at least 1"));
            }
            Ok(Duration::from_millis(v))
        };
        let secs = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            let v: u64 = parse(&get, var, default)?;
            if v < 60 {
                return Err(invalid(var, "must be at least 60"));
            }
            Ok(v)
        };
        let upstream_connect_timeout = ms("UPSTREAM_CONNECT_TIMEOUT_MS", 10_000)?;
        let upstream_first_byte_timeout = ms("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", 300_000)?;
        let upstream_idle_timeout = ms("UPSTREAM_IDLE_TIMEOUT_MS", 120_000)?;
        let upstream_total_timeout = ms("UPSTREAM_TOTAL_TIMEOUT_MS", 600_000)?;
        if upstream_total_timeout.as_secs() + 60 > stale_reservation_secs {
            return Err(invalid(
                "STALE_RESERVATION_SECS",
                "must exceed UPSTREAM_TOTAL_TIMEOUT_MS by at least 60 s, or live requests would be swept",
            ));
        }
        let max_concurrent_per_user: u32 = parse(&get, "MAX_CONCURRENT_REQUESTS_PER_USER", 32)?;
        if max_concurrent_per_user == 0 {
            return Err(invalid("MAX_CONCURRENT_REQUESTS_PER_USER", "must be at least 1"));
        }
        let max_request_bytes: usize = parse(&get, "MAX_REQUEST_BYTES", 10 * 1024 * 1024)?;
        if max_request_bytes < 1024 {
            return Err(invalid("MAX_REQUEST_BYTES", "must be at least 1024"));
        }
        let mut trusted_proxies = Vec::new();
        for raw in get("TRUSTED_PROXIES").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = raw
                .parse::<ipnet::IpNet>()
                .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid("TRUSTED_PROXIES", format!("`{raw}` is not an address or CIDR range")))?;
            trusted_proxies.push(net);
        }
        let max_choices: u32 = parse(&get, "MAX_CHOICES", 8)?;
        if max_choices == 0 || max_choices > 128 {
            return Err(invalid("MAX_CHOICES", "must be between 1 and 128"));
        }
        let min_affordable_output_tokens: i64 =
            parse(&get, "MIN_AFFORDABLE_OUTPUT_TOKENS", DEFAULT_MIN_AFFORDABLE_OUTPUT_TOKENS)?;
        if min_affordable_output_tokens < 1 {
            return Err(invalid("MIN_AFFORDABLE_OUTPUT_TOKENS", "must be at least 1"));
        }
        let default_user_rpm: i64 = parse(&get, "DEFAULT_USER_RPM", 0)?;
        let default_user_tpm: i64 = parse(&get, "DEFAULT_USER_TPM", 0)?;
        if default_user_rpm < 0 {
            return Err(invalid("DEFAULT_USER_RPM", "must be 0 (no limit) or more"));
        }
        if default_user_tpm < 0 {
            return Err(invalid("DEFAULT_USER_TPM", "must be 0 (no limit) or more"));
        }
        let max_connections: usize = parse(&get, "MAX_CONNECTIONS", 10_000)?;
        if max_connections < 16 {
            return Err(invalid("MAX_CONNECTIONS", "must be at least 16"));
        }
        let password_hash_concurrency: usize = parse(&get, "PASSWORD_HASH_CONCURRENCY", 4)?;
        if password_hash_concurrency == 0 {
            return Err(invalid("PASSWORD_HASH_CONCURRENCY", "must be at least 1"));
        }
        let redeem_failure_limit: usize = parse(&get, "REDEEM_FAILURE_LIMIT", 10)?;
        if !(1..=100_000).contains(&redeem_failure_limit) {
            return Err(invalid("REDEEM_FAILURE_LIMIT", "must be between 1 and 100000"));
        }
        let http2_keepalive_secs: u64 = parse(&get, "HTTP2_KEEPALIVE_SECS", 30)?;
        if http2_keepalive_secs == 0 {
            return Err(invalid("HTTP2_KEEPALIVE_SECS", "must be at least 1"));
        }
        let sweep_interval_secs: u64 = parse(&get, "SWEEP_INTERVAL_SECS", 60)?;
        let upstream_max_retries: u32 = parse(&get, "UPSTREAM_MAX_RETRIES", DEFAULT_UPSTREAM_MAX_RETRIES)?;
        let upstream_max_attempts: u32 = parse(
            &get,
            "UPSTREAM_MAX_ATTEMPTS",
            DEFAULT_UPSTREAM_MAX_ATTEMPTS.max(upstream_max_retries.saturating_add(1)),
        )?;
        if !(1..=MAX_UPSTREAM_ATTEMPTS).contains(&upstream_max_attempts) {
            return Err(invalid("UPSTREAM_MAX_ATTEMPTS", format!("must be between 1 and {MAX_UPSTREAM_ATTEMPTS}")));
        }
        let channel_failure_threshold: u32 =
            parse(&get, "CHANNEL_FAILURE_THRESHOLD", DEFAULT_CHANNEL_FAILURE_THRESHOLD)?;
        if channel_failure_threshold == 0 {
            return Err(invalid("CHANNEL_FAILURE_THRESHOLD", "must be at least 1"));
        }
        let channel_cooldown_secs: u64 = parse(&get, "CHANNEL_COOLDOWN_SECS", DEFAULT_CHANNEL_COOLDOWN_SECS)?;
        if channel_cooldown_secs == 0 {
            return Err(invalid("CHANNEL_COOLDOWN_SECS", "must be at least 1"));
        }
        if sweep_interval_secs == 0 {
            return Err(invalid("SWEEP_INTERVAL_SECS", "must be at least 1"));
        }

        Ok(Self {
            database_url,
            database_pool_size,
            auto_migrate: boolean(&get, "AUTO_MIGRATE", true)?,
            redis_url,
            auth_secret,
            auth_secret_generated,
            github,
            google,
            openai_api_key,
            openai_base_url,
            openai_base_url_explicit,
            encryption_key,
            allow_private_upstreams: boolean(&get, "ALLOW_PRIVATE_UPSTREAMS", false)?,
            upstream_max_attempts,
            channel_failure_threshold,
            channel_cooldown: Duration::from_secs(channel_cooldown_secs),
            cron_secret,
            listen_addr,
            public_url,
            log_format,
            metrics_token,
            metrics_addr,
            site_name,
            currency,
            currency_symbol,
            admin_emails,
            signup_credit,
            scheduler_enabled: boolean(&get, "SCHEDULER_ENABLED", true)?,
            expire_subscriptions_at,
            stale_reservation_secs,
            sweep_interval_secs,
            shutdown_grace_secs: parse(&get, "SHUTDOWN_GRACE_SECS", 30)?,
            redis_prefix: get("REDIS_PREFIX").unwrap_or_else(|| "tollgate:".to_owned()),
            upstream_connect_timeout,
            upstream_first_byte_timeout,
            upstream_idle_timeout,
            upstream_total_timeout,
            upstream_max_retries,
            max_concurrent_per_user,
            max_request_bytes,
            session_idle: Duration::from_secs(secs("SESSION_IDLE_SECS", 7 * 24 * 3600)?),
            session_max_age: Duration::from_secs(secs("SESSION_MAX_AGE_SECS", 30 * 24 * 3600)?),
            public_url_explicit,
            header_read_timeout: ms("HEADER_READ_TIMEOUT_MS", 10_000)?,
            body_read_timeout: ms("BODY_READ_TIMEOUT_MS", 30_000)?,
            trusted_proxies,
            max_choices,
            min_affordable_output_tokens,
            default_user_rpm: (default_user_rpm > 0).then_some(default_user_rpm),
            default_user_tpm: (default_user_tpm > 0).then_some(default_user_tpm),
            idle_connection_timeout: ms("IDLE_CONNECTION_TIMEOUT_MS", 60_000)?,
            http2_keepalive: Duration::from_secs(http2_keepalive_secs),
            max_connections,
            password_hash_concurrency,
            database_acquire_timeout: ms("DATABASE_ACQUIRE_TIMEOUT_MS", 2_000)?,
            redis_timeout: ms("REDIS_TIMEOUT_MS", 250)?,
            upstream_max_retry_wait: ms("UPSTREAM_MAX_RETRY_WAIT_MS", 5_000)?,
            redeem_failure_limit,
        })
    }

    /// The cron secret when it is long enough to be used; `None` disables the endpoint.
    pub fn usable_cron_secret(&self) -> Option<&Secret> {
        self.cron_secret.as_ref().filter(|s| s.expose().len() >= MIN_CRON_SECRET_LEN)
    }

    /// Cookies get `Secure` unless the public address is plain http.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() != "http"
    }
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match get(var) {
        Some(v) => v.parse().map_err(|e| invalid(var, format!("`{v}`: {e}"))),
        None => Ok(default),
    }
}

fn boolean(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(invalid(var, format!("`{other}` is not a boolean (true/false)"))),
    }
}

fn url(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: &str) -> Result<Url, ConfigError> {
    let raw = get(var).unwrap_or_else(|| default.to_owned());
    let parsed = Url::parse(&raw).map_err(|e| invalid(var, format!("`{raw}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(var, "must be an http:// or https:// URL"));
    }
    Ok(parsed)
}

fn oauth(
    get: &impl Fn(&str) -> Option<String>,
    [id_var, secret_var, auth_var, token_var, api_var]: [&'static str; 5],
    [auth_default, token_default, api_default]: [&str; 3],
) -> Result<Option<OAuthProvider>, ConfigError> {
    let (id, secret) = match (get(id_var), get(secret_var)) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(invalid(secret_var, format!("must be set when {id_var} is set"))),
        (None, Some(_)) => return Err(invalid(id_var, format!("must be set when {secret_var} is set"))),
        (Some(id), Some(secret)) => (id, secret),
    };
    Ok(Some(OAuthProvider {
        client_id: id,
        client_secret: Secret::new(secret),
        auth_url: url(get, auth_var, auth_default)?,
        token_url: url(get, token_var, token_default)?,
        api_url: url(get, api_var, api_default)?,
    }))
}

fn parse_hh_mm(v: &str) -> Option<(u8, u8)> {
    let (h, m) = v.split_once(':')?;
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_url, "sqlite://data/tollgate.db");
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:3000");
        assert!(c.auth_secret_generated);
        assert!(c.github.is_none() && c.google.is_none());
        assert!(!c.secure_cookies());
        assert_eq!(c.expire_subscriptions_at, (0, 0));
        assert!(c.usable_cron_secret().is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("DATABASE_URL", "oracle://x")], "DATABASE_URL"),
            (&[("DATABASE_POOL_SIZE", "many")], "DATABASE_POOL_SIZE"),
            (&[("LISTEN_ADDR", "nowhere")], "LISTEN_ADDR"),
            (&[("NEXTAUTH_SECRET", "short")], "NEXTAUTH_SECRET"),
            (&[("GITHUB_ID", "abc")], "GITHUB_SECRET"),
            (&[("GOOGLE_SECRET", "abc")], "GOOGLE_ID"),
            (&[("OPENAI_BASE_URL", "ftp://x")], "OPENAI_BASE_URL"),
            (&[("LOG_FORMAT", "xml")], "LOG_FORMAT"),
            (&[("SIGNUP_CREDIT", "-1")], "SIGNUP_CREDIT"),
            (&[("EXPIRE_SUBSCRIPTIONS_AT", "25:00")], "EXPIRE_SUBSCRIPTIONS_AT"),
            (&[("AUTO_MIGRATE", "perhaps")], "AUTO_MIGRATE"),
            (&[("REDIS_URL", "http://x")], "REDIS_URL"),
            (&[("UPSTREAM_IDLE_TIMEOUT_MS", "0")], "UPSTREAM_IDLE_TIMEOUT_MS"),
            (&[("UPSTREAM_TOTAL_TIMEOUT_MS", "9000000")], "STALE_RESERVATION_SECS"),
            (&[("MAX_CONCURRENT_REQUESTS_PER_USER", "0")], "MAX_CONCURRENT_REQUESTS_PER_USER"),
            (&[("MAX_CHOICES", "0")], "MAX_CHOICES"),
            (&[("TRUSTED_PROXIES", "10.0.0.0/8, proxy.local")], "TRUSTED_PROXIES"),
            (&[("MAX_CONNECTIONS", "3")], "MAX_CONNECTIONS"),
            (&[("PASSWORD_HASH_CONCURRENCY", "0")], "PASSWORD_HASH_CONCURRENCY"),
            (&[("DATABASE_ACQUIRE_TIMEOUT_MS", "0")], "DATABASE_ACQUIRE_TIMEOUT_MS"),
            (&[("ENCRYPTION_KEY", "short")], "ENCRYPTION_KEY"),
            (&[("UPSTREAM_MAX_ATTEMPTS", "0")], "UPSTREAM_MAX_ATTEMPTS"),
            (&[("CHANNEL_FAILURE_THRESHOLD", "0")], "CHANNEL_FAILURE_THRESHOLD"),
            (&[("ALLOW_PRIVATE_UPSTREAMS", "maybe")], "ALLOW_PRIVATE_UPSTREAMS"),
        ];
        for (vars, var) in cases {
            let err = config(vars).unwrap_err();
            assert_eq!(err.var, *var, "{vars:?}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn auth_secret_alias_and_cron_secret_length() {
        let secret = "s".repeat(40);
        let c =
            config(&[("AUTH_SECRET", &secret), ("CRON_SECRET", "too-short"), ("PUBLIC_URL", "https://relay.example")])
                .unwrap();
        assert_eq!(c.auth_secret.expose(), secret);
        assert!(!c.auth_secret_generated);
        assert!(c.usable_cron_secret().is_none());
        assert!(c.secure_cookies());
        assert_eq!(format!("{:?}", c.auth_secret), "Secret([redacted])");
        let c = config(&[("CRON_SECRET", "0123456789abcdef")]).unwrap();
        assert!(c.usable_cron_secret().is_some());
    }

    #[test]
    fn oauth_endpoints_are_overridable() {
        let c =
            config(&[("GITHUB_ID", "id"), ("GITHUB_SECRET", "secret"), ("GITHUB_API_URL", "http://127.0.0.1:9/api")])
                .unwrap();
        let gh = c.github.unwrap();
        assert_eq!(gh.api_url.as_str(), "http://127.0.0.1:9/api");
        assert_eq!(gh.auth_url.as_str(), "https://github.com/login/oauth/authorize");
    }
}

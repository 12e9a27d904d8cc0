//! OAuth sign-in with GitHub and Google: authorization code flow with PKCE (S256) and a random
//! state, then the identity from GitHub's `/user` and `/user/emails` (primary *and* verified
//! email) or Google's userinfo (`email_verified`). Each attempt's state is also kept (hashed) in
//! `oauth_states` and spent by the callback, so it is accepted once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use sea_orm::{ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, QueryFilter, Set};
use serde::Deserialize;
use url::Url;

use super::signin::Identity;
use crate::clock::now_ms;
use crate::config::{Config, OAuthProvider};
use crate::crypto::{random_token, sha256_hex};
use crate::db::Db;
use crate::db::entities::oauth_states;

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    GitHub,
    Google,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "github" => Some(Self::GitHub),
            "google" => Some(Self::Google),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::Google => "google",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::GitHub => "GitHub",
            Self::Google => "Google",
        }
    }
}

/// A configured provider.
#[derive(Clone, Debug)]
pub struct Provider {
    pub kind: Kind,
    client: Client,
    api_url: Url,
}

/// Why a sign-in could not complete; the message is shown on the login page.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    Refused(String),
    /// The provider's account has no verified email address.
    #[error("{0}")]
    Unverified(String),
    #[error("the sign-in provider could not be reached or answered in an unexpected way")]
    Provider(String),
}

/// The per-attempt secrets kept (encrypted) in the browser between redirect and callback.
#[derive(Debug)]
pub struct Start {
    pub url: Url,
    pub state: String,
    pub verifier: String,
}

impl Provider {
    pub fn new(kind: Kind, settings: &OAuthProvider, public_url: &Url) -> anyhow::Result<Self> {
        let redirect = public_url.join(&format!("/api/auth/callback/{}", kind.name()))?;
        let client = BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(settings.client_secret.expose().to_owned()))
            .set_auth_uri(AuthUrl::from_url(settings.auth_url.clone()))
            .set_token_uri(TokenUrl::from_url(settings.token_url.clone()))
            .set_redirect_uri(RedirectUrl::from_url(redirect));
        Ok(Self { kind, client, api_url: settings.api_url.clone() })
    }

    /// The providers this configuration enables, in display order.
    pub fn all(config: &Config, public_url: &Url) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        if let Some(gh) = &config.github {
            out.push(Self::new(Kind::GitHub, gh, public_url)?);
        }
        if let Some(g) = &config.google {
            out.push(Self::new(Kind::Google, g, public_url)?);
        }
        Ok(out)
    }

    /// Where to send the browser, with a fresh state and PKCE verifier.
    pub fn start(&self) -> Start {
        let verifier = PkceCodeVerifier::new(random_token(48));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let state = random_token(24);
        let scopes: &[&str] = match self.kind {
            Kind::GitHub => &["read:user", "user:email"],
            Kind::Google => &["openid", "email", "profile"],
        };
        let state_for_url = state.clone();
        let (url, _) = self
            .client
            .authorize_url(move || CsrfToken::new(state_for_url))
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())))
            .set_pkce_challenge(challenge)
            .url();
        Start { url, state, verifier: verifier.secret().clone() }
    }

    /// Exchanges the code (proving the PKCE verifier) and reads the verified identity.
    pub async fn finish(&self, http: &reqwest::Client, code: &str, verifier: &str) -> Result<Identity, OAuthError> {
        let token = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&Http(http.clone()))
            .await
            .map_err(|e| match e {
                oauth2::RequestTokenError::ServerResponse(r) => {
                    OAuthError::Refused(format!("the provider refused the sign-in ({})", r.error()))
                }
                other => OAuthError::Provider(other.to_string()),
            })?;
        let access = token.access_token().secret();
        match self.kind {
            Kind::GitHub => self.github_identity(http, access).await,
            Kind::Google => self.google_identity(http, access).await,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        http: &reqwest::Client,
        url: Url,
        access: &str,
    ) -> Result<T, OAuthError> {
        let res = http
            .get(url)
            .bearer_auth(access)
            .header("accept", "application/json")
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
        if !res.status().is_success() {
            return Err(OAuthError::Provider(format!("status {}", res.status())));
        }
        res.json().await.map_err(|e| OAuthError::Provider(e.without_url().to_string()))
    }

    async fn github_identity(&self, http: &reqwest::Client, access: &str) -> Result<Identity, OAuthError> {
        #[derive(Deserialize)]
        struct User {
            id: i64,
            login: Option<String>,
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Email {
            email: String,
            primary: bool,
            verified: bool,
        }
        let base = api_base(&self.api_url);
        let user: User = Self::get_json(http, join(&base, "user")?, access).await?;
        let emails: Vec<Email> = Self::get_json(http, join(&base, "user/emails")?, access).await?;
        let email = emails.into_iter().find(|e| e.primary && e.verified).map(|e| e.email).ok_or_else(|| {
            OAuthError::Unverified("your GitHub account has no verified primary email address".into())
        })?;
        Ok(Identity { provider: "github", account_id: user.id.to_string(), email, name: user.name.or(user.login) })
    }

    async fn google_identity(&self, http: &reqwest::Client, access: &str) -> Result<Identity, OAuthError> {
        #[derive(Deserialize)]
        struct UserInfo {
            sub: String,
            email: Option<String>,
            #[serde(default)]
            email_verified: bool,
            name: Option<String>,
        }
        let info: UserInfo = Self::get_json(http, self.api_url.clone(), access).await?;
        let email = info
            .email
            .filter(|_| info.email_verified)
            .ok_or_else(|| OAuthError::Unverified("your Google account has no verified email address".into()))?;
        Ok(Identity { provider: "google", account_id: info.sub, email, name: info.name })
    }
}

fn api_base(url: &Url) -> Url {
    let mut base = url.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base
}

fn join(base: &Url, path: &str) -> Result<Url, OAuthError> {
    base.join(path).map_err(|e| OAuthError::Provider(e.to_string()))
}

/// The OAuth token request through our reqwest client (no redirects followed).
struct Http(reqwest::Client);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|e| HttpError(e.to_string()))?;
            let res = tokio::time::timeout(Duration::from_secs(15), self.0.execute(request))
                .await
                .map_err(|_| HttpError("the provider timed out".into()))?
                .map_err(|e| HttpError(e.without_url().to_string()))?;
            let mut builder = oauth2::http::Response::builder().status(res.status().as_u16());
            for (name, value) in res.headers() {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
            let body = res.bytes().await.map_err(|e| HttpError(e.to_string()))?;
            builder.body(body.to_vec()).map_err(|e| HttpError(e.to_string()))
        })
    }
}

/// How long an OAuth attempt may take, from the redirect to the provider to its callback.
pub const STATE_TTL_MS: i64 = 10 * 60 * 1000;

/// Keeps the SHA-256 of a new attempt's `state` until the provider calls back.
pub async fn remember_state(db: &Db, state: &str) -> Result<(), DbErr> {
    oauth_states::ActiveModel { state_hash: Set(sha256_hex(state)), created_at: Set(now_ms()) }
        .insert(&db.write)
        .await?;
    Ok(())
}

/// Spends `state`: true when it was issued here less than `ttl_ms` ago and not spent before.
/// One conditional `DELETE`, so of two callbacks with the same state (on any instances) exactly
/// one gets true.
pub async fn spend_state(db: &Db, state: &str, ttl_ms: i64) -> Result<bool, DbErr> {
    let gone = oauth_states::Entity::delete_many()
        .filter(oauth_states::Column::StateHash.eq(sha256_hex(state)))
        .filter(oauth_states::Column::CreatedAt.gt(now_ms() - ttl_ms))
        .exec(&db.write)
        .await?;
    Ok(gone.rows_affected == 1)
}

/// Removes states older than `ttl_ms` (attempts abandoned at the provider). Returns how many.
pub async fn purge_states(db: &Db, ttl_ms: i64) -> Result<u64, DbErr> {
    let gone = oauth_states::Entity::delete_many()
        .filter(oauth_states::Column::CreatedAt.lte(now_ms() - ttl_ms))
        .exec(&db.write)
        .await?;
    Ok(gone.rows_affected)
}

//! API keys, scopes and rate limits. A key is `lf_<id>_<secret>`: the id
//! is the lookup, only the secret's SHA-256 is stored, and the key is shown
//! once, when it is made. Every `/api/v1` request names a key
//! (`Authorization: Bearer <key>` or `X-API-Key: <key>`); its scope must
//! cover the route's (admin ⊃ write ⊃ read); each key spends from its own
//! token bucket, sized by its scope's `api.rate_limits`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::api::{Rate, RateLimits};
use crate::metrics::internal_events::ApiRateLimited;
use crate::store::{ApiKeyRecord, ApiKeys, Store, StoreError};

use super::problem::Problem;
use super::ApiState;

crate::events::string_enum!(
    /// What a key may do: read, also write (POST /events), also admin
    /// (models, forecast runs).
    Scope {
        Read => "read",
        Write => "write",
        Admin => "admin",
    }
);

impl Scope {
    fn covers(self, needed: Scope) -> bool {
        self >= needed
    }

    fn rate(self, limits: &RateLimits) -> Rate {
        match self {
            Scope::Read => limits.read,
            Scope::Write => limits.write,
            Scope::Admin => limits.admin,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// A new key: the record to store, and the key to show once.
pub fn new_key(name: &str, scope: Scope, now: i64) -> (ApiKeyRecord, String) {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex(&id), hex(&secret));
    let record = ApiKeyRecord {
        key_id: id.clone(),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        secret_sha256: secret_hash(&secret),
        created_at: now,
        revoked_at: None,
    };
    (record, format!("lf_{id}_{secret}"))
}

/// Makes a key, stores its hash and returns the key itself.
pub async fn create_key(
    store: &Store,
    name: &str,
    scope: Scope,
    now: i64,
) -> Result<(ApiKeyRecord, String), StoreError> {
    let (record, key) = new_key(name, scope, now);
    store.insert_api_key(&record).await?;
    Ok((record, key))
}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The authenticated key of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub scope: Scope,
}

async fn authenticate(store: &Store, headers: &HeaderMap) -> Result<Caller, Problem> {
    let unauthorized = |detail: &str| {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            .with_header("www-authenticate", "Bearer realm=\"leadflow\"".into())
    };
    let Some(key) = presented(headers) else {
        return Err(unauthorized(
            "no API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>` (leadflow apikey create)",
        ));
    };
    let parsed = key
        .strip_prefix("lf_")
        .and_then(|rest| rest.split_once('_'));
    let Some((id, secret)) = parsed else {
        return Err(unauthorized(
            "the API key is not of the form lf_<id>_<secret>",
        ));
    };
    let record = store.api_key(id).await.map_err(Problem::from)?;
    let Some(record) = record.filter(|r| constant_time_eq(&r.secret_sha256, &secret_hash(secret)))
    else {
        return Err(unauthorized("unknown API key"));
    };
    if record.revoked_at.is_some() {
        return Err(unauthorized("the API key was revoked"));
    }
    let scope = record
        .scope
        .parse()
        .map_err(|_| unauthorized("the API key has an unknown scope"))?;
    Ok(Caller {
        key_id: record.key_id,
        scope,
    })
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One token bucket per key.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a request may spend, after it asked.
struct Budget {
    allowed: bool,
    remaining: u32,
    /// Seconds until a token is back (when refused) or the bucket is full.
    retry_after: f64,
    reset: f64,
}

impl RateLimiter {
    fn spend(&self, key: &str, rate: Rate, now: Instant) -> Budget {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let burst = rate.burst as f64;
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(burst);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        Budget {
            allowed,
            remaining: bucket.tokens.floor() as u32,
            retry_after: ((1.0 - bucket.tokens).max(0.0)) / rate.per_second,
            reset: (burst - bucket.tokens) / rate.per_second,
        }
    }
}

/// The state of a route group's guard: the API and the scope it needs.
pub type Guard = (Arc<ApiState>, Scope);

/// Authenticates, rate-limits and checks the scope of a request; the
/// budget goes back in `RateLimit-*` headers on every answer.
pub async fn require(
    State((api, needed)): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&api.store, request.headers()).await {
        Ok(caller) => caller,
        Err(problem) => return problem.into_response(),
    };
    let rate = caller.scope.rate(&api.config.api.rate_limits);
    let budget = api.limiter.spend(&caller.key_id, rate, Instant::now());
    let headers = [
        ("ratelimit-limit", rate.burst.to_string()),
        ("ratelimit-remaining", budget.remaining.to_string()),
        ("ratelimit-reset", (budget.reset.ceil() as u64).to_string()),
    ];
    let mut response = if !budget.allowed {
        api.metrics.emit(ApiRateLimited {
            scope: caller.scope.as_str(),
        });
        let seconds = budget.retry_after.ceil().max(1.0) as u64;
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this key may make {} requests per second ({} at once); retry in {seconds} s",
                rate.per_second, rate.burst
            ),
        )
        .with_header("retry-after", seconds.to_string())
        .into_response()
    } else if !caller.scope.covers(needed) {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route needs a key with scope {}; this key's scope is {}",
                needed.as_str(),
                caller.scope.as_str()
            ),
        )
        .into_response()
    } else {
        request.extensions_mut().insert(caller);
        next.run(request).await
    };
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_refuses_past_its_burst_and_refills_at_its_rate() {
        let limiter = RateLimiter::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        let spent: Vec<bool> = (0..4)
            .map(|_| limiter.spend("k", rate, t0).allowed)
            .collect();
        assert_eq!(spent, vec![true, true, true, false]);
        let refused = limiter.spend("k", rate, t0);
        assert!(
            (refused.retry_after - 0.5).abs() < 1e-9,
            "{}",
            refused.retry_after
        );
        // Another key has its own bucket.
        assert!(limiter.spend("other", rate, t0).allowed);
        let later = t0 + Duration::from_millis(500);
        let after = limiter.spend("k", rate, later);
        assert!(after.allowed);
        assert_eq!(after.remaining, 0);
    }

    #[test]
    fn keys_are_checked_by_their_hash_and_scopes_nest() {
        let (record, key) = new_key("ci", Scope::Write, 0);
        assert!(key.starts_with(&format!("lf_{}_", record.key_id)));
        let secret = key.rsplit('_').next().unwrap();
        assert_eq!(record.secret_sha256, secret_hash(secret));
        assert!(!record.secret_sha256.contains(secret));
        assert!(Scope::Admin.covers(Scope::Write) && Scope::Write.covers(Scope::Read));
        assert!(!Scope::Read.covers(Scope::Write) && !Scope::Write.covers(Scope::Admin));
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(presented(&headers), Some("abc"));
        headers.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented(&headers), Some("xyz"));
    }
}

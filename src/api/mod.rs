//! The processor's HTTP endpoints: `/metrics` (Prometheus text), `/health`
//! (the process serves requests), `/ready` (it owns partitions), all open,
//! and the REST API under `/api/v1` (docs/API.md), documented by the
//! OpenAPI 3.1 document at `/api/v1/openapi.json` that [`openapi`] generates
//! from the handlers.
//!
//! Every `/api/v1` route sits behind [`keys::require`] with the scope it
//! needs; errors are problem details ([`problem`]); bodies are capped at
//! `api.max_body_bytes`.

mod gdpr;
pub mod keys;
mod leads;
mod models;
pub mod openapi;
pub mod problem;
mod reports;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use rdkafka::producer::FutureProducer;

use crate::codec::Codec;
use crate::config::Config;
use crate::metrics::internal_events::ApiRequestAnswered;
use crate::metrics::Metrics;
use crate::ml::ActiveModel;
use crate::store::{Models, Store};

use keys::{RateLimiter, Scope};
use problem::Problem;

/// What the REST API works with.
pub struct ApiState {
    pub config: Config,
    pub store: Arc<Store>,
    pub codec: Arc<Codec>,
    pub metrics: Arc<Metrics>,
    /// Publishes `POST /events` (acks from all in-sync replicas, idempotent).
    pub producer: FutureProducer,
    pub limiter: RateLimiter,
    pub jobs: models::Jobs,
    /// The active model, for the top factors of `GET /leads/{id}`.
    model: tokio::sync::Mutex<Option<Arc<ActiveModel>>>,
}

impl ApiState {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        codec: Arc<Codec>,
        metrics: Arc<Metrics>,
        producer: FutureProducer,
    ) -> ApiState {
        ApiState {
            config,
            store,
            codec,
            metrics,
            producer,
            limiter: RateLimiter::default(),
            jobs: models::Jobs::default(),
            model: tokio::sync::Mutex::new(None),
        }
    }

    /// The active model, loaded again when the registry's active version changed.
    async fn active_model(&self) -> Result<Option<Arc<ActiveModel>>, Problem> {
        let version = self.store.active_model_version().await?;
        let mut held = self.model.lock().await;
        if held.as_ref().map(|m| m.version) != version {
            *held = match crate::registry::load_active(self.store.as_ref()).await {
                Ok(model) => model.map(Arc::new),
                Err(e) => {
                    tracing::warn!(error = %e, "REST API: loading the active model");
                    None
                }
            };
        }
        Ok(held.clone())
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// The REST API, on the processor; the delivery worker serves none.
    pub api: Option<Arc<ApiState>>,
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    if state.metrics.has_assigned_partitions() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no partitions assigned\n")
    }
}

/// Counts and times each answer by its route template.
async fn observe(State(api): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    api.metrics.emit(ApiRequestAnswered {
        route: &route,
        status: response.status().as_u16(),
        seconds: started.elapsed().as_secs_f64(),
    });
    response
}

async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
}

async fn no_route() -> Problem {
    Problem::not_found("no such route under /api/v1 (see /api/v1/openapi.json)")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method (see /api/v1/openapi.json)",
    )
}

/// The `/api/v1` routes, each group behind the scope it needs.
fn api_router(api: Arc<ApiState>) -> Router {
    let guard = |scope: Scope| middleware::from_fn_with_state((api.clone(), scope), keys::require);
    let read = Router::new()
        .route("/leads", get(leads::list))
        .route("/leads/{id}", get(leads::one))
        .route("/leads/{id}/timeline", get(leads::timeline))
        .route("/analytics/funnel", get(reports::funnel))
        .route("/analytics/time-in-stage", get(reports::time_in_stage))
        .route("/analytics/breakdown", get(reports::breakdown))
        .route("/analytics/daily", get(reports::daily))
        .route("/analytics/pipeline", get(reports::pipeline))
        .route("/analytics/history", get(reports::history))
        .route("/forecasts", get(reports::forecasts))
        .route("/forecasts/latest", get(reports::latest_forecast))
        .route("/models", get(models::list))
        .route("/models/{version}", get(models::one))
        .route("/jobs/{id}", get(models::job))
        .route("/experiments", get(reports::experiments))
        .route_layer(guard(Scope::Read));
    let write = Router::new()
        .route("/events", post(leads::post_event))
        .route_layer(guard(Scope::Write));
    let admin = Router::new()
        .route("/forecasts", post(reports::run_forecasts))
        .route("/models/{version}/activate", post(models::activate))
        .route("/models/retrain", post(models::retrain))
        .route("/leads/{id}", delete(gdpr::erase))
        .route("/leads/{id}/export", get(gdpr::export))
        .route_layer(guard(Scope::Admin));
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(read)
        .merge(write)
        .merge(admin)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api.config.api.max_body_bytes))
        .layer(middleware::from_fn_with_state(api.clone(), observe))
        .with_state(api)
}

pub fn router(state: HttpState) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state.clone());
    if let Some(api) = state.api {
        router = router.nest("/api/v1", api_router(api));
    }
    router
}

/// Binds `listen` and serves in the background; returns the bound address
/// (useful with port 0).
pub async fn serve(listen: &str, state: HttpState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(addr)
}

/// A page of rows and the cursor of the next one.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The page size asked for, within `api.max_page_size`.
fn page_size(config: &Config, asked: Option<u32>) -> Result<i64, Problem> {
    let api = &config.api;
    match asked {
        None => Ok(api.default_page_size as i64),
        Some(n) if (1..=api.max_page_size).contains(&n) => Ok(n as i64),
        Some(n) => Err(Problem::bad_request(
            "invalid_query",
            format!(
                "limit {n} is outside 1..={} (api.max_page_size)",
                api.max_page_size
            ),
        )),
    }
}

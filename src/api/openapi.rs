//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers'
//! `#[utoipa::path]` annotations and the response types.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::problem::Problem;
use super::{gdpr, leads, models, reports};

/// The errors every route may answer with, as problem details.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Problems {
    #[response(
        status = 400,
        description = "A malformed query, path or body, an unknown filter, a page over the limit",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 401,
        description = "No API key, or an unknown or revoked one",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "The key's scope does not cover the route",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "No such lead, model, forecast or job",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 410,
        description = "The lead was erased (GDPR); only its tombstone is kept",
        content_type = "application/problem+json"
    )]
    Gone(Problem),
    #[response(
        status = 413,
        description = "The body is over api.max_body_bytes",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "The body is not application/json",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
    #[response(
        status = 422,
        description = "The body is JSON but not a valid request (an event the processor would dead-letter)",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
    #[response(
        status = 429,
        description = "Over the key's rate limit; Retry-After says when to come back",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
    #[response(
        status = 503,
        description = "The database or the broker is unavailable; retry",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "leadflow REST API",
        description = "Leads, analytics, forecasts, models, experiments and GDPR erasure of a leadflow processor. Every route needs an API key (`leadflow apikey create`); errors are RFC 9457 problem details. See docs/API.md."
    ),
    paths(
        leads::list, leads::one, leads::timeline, leads::post_event,
        reports::funnel, reports::time_in_stage, reports::breakdown, reports::daily,
        reports::pipeline, reports::history,
        reports::forecasts, reports::latest_forecast, reports::run_forecasts,
        models::list, models::one, models::activate, models::retrain, models::job,
        reports::experiments, gdpr::erase, gdpr::export,
    ),
    components(schemas(Problem)),
    modifiers(&Security),
    tags(
        (name = "leads"), (name = "events"), (name = "analytics"), (name = "forecasts"),
        (name = "models"), (name = "experiments"), (name = "gdpr"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, made once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes")
    })
}

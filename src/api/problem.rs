//! Errors as RFC 9457 problem details (`application/problem+json`), and
//! the extractors that turn a malformed query, path or body into one (a
//! 4xx that says what is wrong) instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem detail (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:leadflow:problem:<slug>`; the slugs are listed in docs/API.md.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What is wrong with this request.
    pub detail: String,
    /// Extra headers (Retry-After, the rate-limit budget); not in the body.
    #[serde(skip)]
    #[schema(ignore)]
    pub headers: Vec<(&'static str, String)>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:leadflow:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Problem {
        self.headers.push((name, value));
        self
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        tracing::warn!(error = %e, "REST API: store error");
        if e.is_transient() {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
            .with_header("retry-after", "1".into())
        } else {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("plain data");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        response
    }
}

/// `Query<T>` whose rejection is a problem (400, naming the parameter).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(query_problem(e)),
        }
    }
}

fn query_problem(e: QueryRejection) -> Problem {
    Problem::bad_request("invalid_query", e.body_text())
}

/// `Path<T>` whose rejection is a problem (400).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(path_problem(e)),
        }
    }
}

fn path_problem(e: PathRejection) -> Problem {
    Problem::bad_request("invalid_path", e.body_text())
}

/// `Json<T>` whose rejection is a problem: 415 without a JSON content type,
/// 413 over `api.max_body_bytes`, 400 for bad JSON or a wrong field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(e) => Err(json_problem(e)),
        }
    }
}

fn json_problem(e: JsonRejection) -> Problem {
    let (status, slug) = match e.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json"),
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        _ => (StatusCode::BAD_REQUEST, "invalid_body"),
    };
    Problem::new(status, slug, e.body_text())
}

//! The `/metrics` route, a listener for processes without an HTTP server of their own, and
//! the middleware that counts HTTP requests by route.

use crate::families::{http, Labels};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::time::Instant;

/// The content type of [`crate::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], crate::encode()).into_response()
}

/// `GET /metrics`, to merge into a service's router (add [`track`] with `Router::layer` to
/// count its requests).
pub fn router() -> Router {
    Router::new().route("/metrics", get(metrics))
}

/// Serves `/metrics` alone on `addr` (the `--metrics ADDR` of processes without an HTTP
/// server) on the current tokio runtime, until the process ends; returns the bound address.
pub async fn listen(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router().layer(axum::middleware::from_fn(track));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics on /metrics");
    Ok(bound)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Middleware (`Router::layer(axum::middleware::from_fn(track))`) counting each answer by
/// route template, method and status, and timing it to the response head. The route is the
/// template (`/v1/accounts/{id}`), never the path a client sent, so labels stay bounded;
/// requests no route matched count as `unmatched`.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    let labels: Labels = vec![
        ("route", route.clone()),
        ("method", method.to_string()),
        ("status", status.as_u16().to_string()),
    ];
    let m = http();
    m.requests.get_or_create(&labels).inc();
    if status.is_client_error() || status.is_server_error() {
        m.errors.get_or_create(&labels).inc();
    }
    m.duration
        .get_or_create(&vec![("route", route)])
        .observe(start.elapsed().as_secs_f64());
    response
}

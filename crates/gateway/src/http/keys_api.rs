//! Spending keys through the API: `GET /v1/key` shows the caller's key, its spend and
//! limits; `POST /v1/keys` mints a child key with a smaller budget (an agent paying its
//! sub-agents), which pays from the same account and whose spend counts against its parent.

use super::{
    authenticate, json_response, parse_object, read_body, with_log, wrong_type, ApiError, AppState,
    Fields, LogInfo,
};
use crate::keys::{ChildRequest, KeyError, KeyRecord};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn key_object(rec: &KeyRecord) -> Value {
    let p = &rec.policy;
    json!({
        "id": rec.id,
        "object": "api_key",
        "label": rec.label,
        "parent": p.parent,
        "account": rec.account.to_string(),
        "created": rec.created_ms / 1000,
        "budget": p.budget.map(|b| b.units().to_string()),
        "requests_per_minute": p.requests_per_minute,
        "expires_at": p.expires_ms.map(|e| e / 1000),
        "models": p.models,
    })
}

/// `GET /v1/key`.
pub(super) async fn get_key(State(app): AppState, headers: HeaderMap) -> Response {
    let rec = match authenticate(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let u = app.keys.usage(&rec.id);
    let mut v = key_object(&rec);
    v["spent"] = json!(u.spent.to_string());
    v["reserved"] = json!(u.reserved.to_string());
    v["remaining"] = json!(u.remaining.map(|r| r.to_string()));
    let info = LogInfo {
        key_id: Some(rec.id),
        ..LogInfo::default()
    };
    with_log(json_response(StatusCode::OK, &v), info)
}

fn amount(f: &Fields<'_>, k: &str) -> Result<Option<u128>, ApiError> {
    match f.get(k) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(|u| Some(u128::from(u))).ok_or_else(|| {
            ApiError::invalid(format!(
                "Invalid '{k}': expected a non-negative integer of base units."
            ))
            .param(k)
            .code("invalid_value")
        }),
        Some(Value::String(s)) => s.parse::<u128>().map(Some).map_err(|_| {
            ApiError::invalid(format!(
                "Invalid '{k}': expected a non-negative integer of base units."
            ))
            .param(k)
            .code("invalid_value")
        }),
        Some(v) => Err(wrong_type(k, "an integer or a decimal string", v)),
    }
}

fn parse_child(body: &serde_json::Map<String, Value>) -> Result<ChildRequest, ApiError> {
    let f = Fields(body);
    let label = f.string("label")?.unwrap_or("").to_string();
    if label.len() > 256 {
        return Err(ApiError::invalid("Invalid 'label': at most 256 bytes.")
            .param("label")
            .code("invalid_value"));
    }
    let Some(budget) = amount(&f, "budget")? else {
        return Err(ApiError::invalid("Missing required parameter: 'budget'.")
            .param("budget")
            .code("missing_required_parameter"));
    };
    let requests_per_minute = match f.integer("requests_per_minute")? {
        None => None,
        Some(v) => Some(u32::try_from(v).map_err(|_| {
            ApiError::invalid("Invalid 'requests_per_minute': out of range.")
                .param("requests_per_minute")
                .code("invalid_value")
        })?),
    };
    let expires_ms = match f.integer("expires_at")? {
        None => None,
        Some(v) => Some(
            u64::try_from(v)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| {
                    ApiError::invalid("Invalid 'expires_at': expected unix seconds.")
                        .param("expires_at")
                        .code("invalid_value")
                })?,
        ),
    };
    let models = match f.get("models") {
        None => None,
        Some(Value::Array(items)) if items.len() <= crate::routing::MAX_LISTED => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    v => Err(wrong_type(&format!("models[{i}]"), "a non-empty string", v)),
                })
                .collect::<Result<Vec<String>, ApiError>>()?,
        ),
        Some(v) => {
            return Err(wrong_type(
                "models",
                "an array of at most 32 model names",
                v,
            ))
        }
    };
    Ok(ChildRequest {
        label,
        budget,
        requests_per_minute,
        expires_ms,
        models,
    })
}

/// `POST /v1/keys`: mints a child of the calling key; the secret is in the answer only.
pub(super) async fn create_key(State(app): AppState, req: Request) -> Response {
    let rec = match authenticate(&app, req.headers()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let info = LogInfo {
        key_id: Some(rec.id.clone()),
        ..LogInfo::default()
    };
    // Minting writes to the key file: it counts against the key's request rate.
    let _permit = match app
        .limiter
        .admit_key(&rec.id, rec.policy.requests_per_minute)
    {
        Ok(p) => p,
        Err(l) => return with_log(ApiError::rate_limited(l).into_response(), info),
    };
    let parsed = match read_body(req, app.limits.max_body_bytes).await {
        Ok(b) => parse_object(&b).and_then(|o| parse_child(&o)),
        Err(e) => Err(e),
    };
    let child = match parsed {
        Ok(c) => c,
        Err(e) => return with_log(e.into_response(), info),
    };
    let resp = match app.keys.create_child(&rec, child) {
        Ok((secret, child)) => {
            tracing::info!(parent = %rec.id, child = %child.id, "child key minted");
            let mut v = key_object(&child);
            v["key"] = json!(secret);
            json_response(StatusCode::OK, &v)
        }
        Err(KeyError::Refused { param, message }) => ApiError::invalid(message)
            .param(param)
            .code("invalid_value")
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "minting a child key failed");
            ApiError::internal("The key store failed; try again.").into_response()
        }
    };
    with_log(resp, info)
}

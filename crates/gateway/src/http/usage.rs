//! Usage a client can reconcile: `usage` carries the cost in base units, the provider and
//! the receipt id, and `GET /v1/receipts/{id}` returns the signed receipt behind a charge.

use super::choices::Totals;
use super::{authenticate, json_response, with_log, ApiError, AppState, LogInfo, INVALID};
use crate::backend::ReceiptRef;
use crate::keys::KeyStore;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// OpenAI's usage object plus `cost` (base units, decimal string: the sum of every receipt's
/// charge), and `provider` and `receipt_id` of the receipt that finished the first choice.
pub(super) fn usage_json(t: &Totals) -> Value {
    let cost: u128 = t
        .receipts
        .iter()
        .map(ReceiptRef::charged_units)
        .fold(0u128, u128::saturating_add);
    json!({
        "prompt_tokens": t.usage.prompt_tokens,
        "completion_tokens": t.usage.completion_tokens,
        "total_tokens": t.usage.total_tokens,
        "cost": cost.to_string(),
        "provider": t.primary.as_ref().map(|r| r.provider.clone()),
        "receipt_id": t.primary.as_ref().map(|r| r.receipt.clone()),
    })
}

/// Keeps each signed receipt for its paying key (a failure is logged: the answer stands).
pub(super) fn save_receipts(keys: &KeyStore, key_id: &str, receipts: &[ReceiptRef]) {
    for r in receipts {
        let Some(doc) = &r.signed else { continue };
        if let Err(e) = keys.save_receipt(key_id, &r.receipt, &doc.to_string()) {
            tracing::error!(receipt = %r.receipt, error = %e, "receipt not stored");
        }
    }
}

/// `GET /v1/receipts/{id}`: the signed receipt, to the key that paid for it or a key above
/// that one; anyone else gets 404, as for an unknown id.
pub(super) async fn get_receipt(
    State(app): AppState,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let rec = match authenticate(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let info = LogInfo {
        key_id: Some(rec.id.clone()),
        ..LogInfo::default()
    };
    let not_found = |id: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            INVALID,
            format!("No receipt with id '{id}' for this API key."),
        )
        .param("id")
        .code("receipt_not_found")
        .into_response()
    };
    let id = match id {
        Ok(Path(id)) => id.to_ascii_lowercase(),
        Err(_) => return with_log(not_found(""), info),
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return with_log(not_found(&id), info);
    }
    let resp = match app.keys.receipt(&id) {
        Ok(Some((payer, doc))) if app.keys.chain(&payer).contains(&rec.id) => {
            match serde_json::from_str::<Value>(&doc) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => {
                    tracing::error!(receipt = %id, error = %e, "stored receipt unreadable");
                    ApiError::internal("The gateway failed to read the receipt.").into_response()
                }
            }
        }
        Ok(_) => not_found(&id),
        Err(e) => {
            tracing::error!(receipt = %id, error = %e, "receipt store failed");
            ApiError::internal("The gateway failed to read the receipt.").into_response()
        }
    };
    with_log(resp, info)
}

//! The keys API (SPEC §9): the operator creates program keys, a program key creates and
//! revokes the partner keys of its program. A secret is shown once, in the answer that
//! creates it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::admin::parse_known;
use super::api::Call;
use super::Edge;
use crate::access::keys::{generate, hash_secret};
use crate::access::{ApiKey, KeyScope};
use crate::http::{self, ApiError, HttpResponse};
use crate::registry::may_create;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    scope: KeyScope,
    program_id: String,
    #[serde(default)]
    partner_id: Option<String>,
    name: String,
    #[serde(default, with = "crate::events::rfc3339_millis_opt")]
    expires_at: Option<DateTime<Utc>>,
}

/// A key as the API shows it: never its secret or hash.
fn key_view(k: &ApiKey, last_used_ms: Option<i64>) -> serde_json::Value {
    let time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    serde_json::json!({
        "id": k.id, "scope": k.scope, "program_id": k.program_id,
        "partner_id": k.partner_id, "name": k.name,
        "created_at": time(Some(k.created_at)), "created_by": k.created_by,
        "expires_at": time(k.expires_at), "revoked_at": time(k.revoked_at),
        "last_used_at": time(last_used_ms.and_then(DateTime::from_timestamp_millis)),
    })
}

impl Edge {
    pub(crate) async fn create_key(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let body: KeyRequest = parse_known(&call.body)?;
        if !may_create(call.principal.key().map(|k| k.scope), body.scope) {
            return Err(ApiError::forbidden(
                "a program key creates the partner keys of its program only",
            ));
        }
        let now = Utc::now();
        let (id, secret) = generate();
        let key = ApiKey {
            id,
            scope: body.scope,
            program_id: body.program_id,
            partner_id: body.partner_id,
            name: body.name,
            hash: hash_secret(&secret),
            created_at: now,
            expires_at: body.expires_at,
            revoked_at: None,
            created_by: call.principal.actor(),
        };
        self.registry.create_key(key.clone(), now).await?;
        let mut view = key_view(&key, None);
        view["key"] = secret.into();
        Ok(http::json(StatusCode::CREATED, &view))
    }

    pub(crate) async fn list_keys(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let program = match call.query.as_slice() {
            [(k, v)] if k == "program_id" => v.clone(),
            _ => {
                return Err(ApiError::invalid(
                    "program_id",
                    "is required (and the only parameter)",
                ))
            }
        };
        if self.registry.program(&program).is_none() {
            return Err(ApiError::not_found("program not found"));
        }
        let keys: Vec<Arc<ApiKey>> = self.registry.keys_of(&program);
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        let uses = self
            .registry
            .store()
            .key_uses(&ids)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        let views: Vec<serde_json::Value> = keys
            .iter()
            .zip(uses.into_iter().chain(std::iter::repeat(None)))
            .map(|(k, used)| key_view(k, used))
            .collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "keys": views }),
        ))
    }

    pub(crate) async fn revoke_key(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let key = self
            .registry
            .revoke_key(call.param("id"), Utc::now())
            .await?;
        Ok(http::json(StatusCode::OK, &key_view(&key, None)))
    }
}

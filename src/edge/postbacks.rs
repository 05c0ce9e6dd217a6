//! A partner's own signed endpoints (SPEC §9.1): at most five, each with its own secret,
//! receiving the events of §3.6 that concern that partner only, delivered by the same
//! machinery as the program's webhooks. Registered with a key, they never reach the
//! operator's network.

use std::sync::Arc;

use hyper::StatusCode;

use super::admin::{parse_known, webhook_view};
use super::api::Call;
use super::Edge;
use crate::http::{self, ApiError, HttpResponse};
use crate::registry::{Partner, Webhook};

impl Edge {
    /// The partner's postback named `name`.
    fn postback(&self, me: &Partner, name: &str) -> Option<Arc<Webhook>> {
        let full = Webhook::postback_name(&me.id, name);
        self.registry
            .webhooks(&me.program_id)
            .into_iter()
            .find(|w| w.name == full && w.partner_id.as_deref() == Some(me.id.as_str()))
    }

    pub(crate) fn list_postbacks(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let hooks: Vec<serde_json::Value> = self
            .registry
            .webhooks(&me.program_id)
            .iter()
            .filter(|w| w.partner_id.as_deref() == Some(me.id.as_str()))
            .map(|w| webhook_view(w))
            .collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "postbacks": hooks }),
        ))
    }

    pub(crate) async fn put_postback(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let mut hook: Webhook = parse_known(&call.body)?;
        hook.partner_id = Some(me.id.clone());
        hook.restricted = call.principal.key().is_some();
        if hook.restricted {
            self.reachable(&hook.url).await?;
        }
        let name = Webhook::postback_name(&me.id, call.param("name"));
        let created = self
            .registry
            .put_webhook(&me.program_id, &name, hook)
            .await?;
        let w = self
            .postback(me, call.param("name"))
            .ok_or_else(|| ApiError::internal("postback vanished"))?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(http::json(status, &webhook_view(&w)))
    }

    pub(crate) fn get_postback(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let w = self
            .postback(me, call.param("name"))
            .ok_or_else(|| ApiError::not_found("postback not found"))?;
        Ok(http::json(StatusCode::OK, &webhook_view(&w)))
    }

    pub(crate) async fn delete_postback(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let w = self
            .postback(me, call.param("name"))
            .ok_or_else(|| ApiError::not_found("postback not found"))?;
        self.registry
            .delete_webhook(&me.program_id, &w.name)
            .await?;
        Ok(http::text(StatusCode::NO_CONTENT, "text/plain", ""))
    }
}

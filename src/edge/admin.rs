//! The registry API (SPEC §3.3): programs, partners, links and webhook endpoints.
//! Access is decided before these run (`api.rs`).

use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::Call;
use super::Edge;
use crate::http::{self, ApiError, HttpResponse};
use crate::registry::{
    Link, LinkEntry, LinkPatch, Partner, PartnerPatch, Program, RegistryError, Webhook,
};

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(i) => ApiError::invalid(i.field, i.message),
            RegistryError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            RegistryError::Conflict(m) => ApiError::conflict(m),
            RegistryError::Store(s) => ApiError::unavailable(s.to_string(), 1),
        }
    }
}

/// Parses a JSON body; type errors name the field path.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    http::strict_json(body)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            // A missing required field is reported at the top level by serde.
            let msg = inner.to_string();
            match msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split_once('`'))
            {
                Some((field, _)) => ApiError::invalid(field, "is required"),
                None => ApiError::malformed(msg),
            }
        } else {
            ApiError::invalid(path, inner.to_string())
        }
    })
}

/// [`parse`], refusing keys the types would ignore at any depth (an unknown key inside
/// `attribution`, say): whatever is sent must be understood.
pub(crate) fn parse_known<T: DeserializeOwned + serde::Serialize>(
    body: &[u8],
) -> Result<T, ApiError> {
    let value: T = parse(body)?;
    let given: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::malformed(e.to_string()))?;
    let understood =
        serde_json::to_value(&value).map_err(|e| ApiError::malformed(e.to_string()))?;
    match http::unknown_key(&given, &understood) {
        Some(key) => Err(ApiError::invalid(key, "unknown field")),
        None => Ok(value),
    }
}

/// A program as the API shows it: the secret is write-only.
#[derive(Serialize)]
struct ProgramView<'a> {
    #[serde(flatten)]
    program: &'a Program,
}

/// A webhook endpoint or postback as the API shows it: the secret is write-only.
pub(crate) fn webhook_view(w: &Webhook) -> serde_json::Value {
    let mut v = serde_json::json!({
        "program_id": w.program_id, "name": w.short_name(), "url": w.url, "events": w.events,
    });
    if let Some(p) = &w.partner_id {
        v["partner_id"] = p.clone().into();
    }
    v
}

fn program_view(p: &Program) -> serde_json::Value {
    let mut v = serde_json::to_value(ProgramView { program: p }).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "secret".into(),
            serde_json::Value::String("(hidden)".into()),
        );
        if o.contains_key("stripe_webhook_secret") {
            o.insert("stripe_webhook_secret".into(), "(hidden)".into());
        }
    }
    v
}

/// `201` for a new resource, `200` for a replaced one.
pub(crate) fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

impl Edge {
    pub(crate) fn link_view(&self, entry: &LinkEntry) -> serde_json::Value {
        let mut v = serde_json::to_value(&entry.link).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "url".into(),
                format!(
                    "{}/r/{}",
                    self.config.edge.public_url.trim_end_matches('/'),
                    entry.link.code
                )
                .into(),
            );
        }
        v
    }

    pub(crate) async fn put_program(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let id = call.param("id");
        if call.principal.program().is_some() && self.registry.program(id).is_none() {
            // Program keys change their own program; only the operator creates one.
            return Err(ApiError::not_found("program not found"));
        }
        let program: Program = parse_known(&call.body)?;
        let created = self.registry.put_program(id, program).await?;
        let p = self
            .registry
            .program(id)
            .ok_or_else(|| ApiError::internal("program vanished"))?;
        Ok(http::json(put_status(created), &program_view(&p)))
    }

    pub(crate) fn get_program(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let p = self
            .registry
            .program(call.param("id"))
            .ok_or_else(|| ApiError::not_found("program not found"))?;
        Ok(http::json(StatusCode::OK, &program_view(&p)))
    }

    pub(crate) async fn put_partner(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let id = call.param("id");
        let partner: Partner = parse_known(&call.body)?;
        let before = self.registry.partner(id);
        let created = self.registry.put_partner(id, partner).await?;
        let p = self
            .registry
            .partner(id)
            .ok_or_else(|| ApiError::internal("partner vanished"))?;
        if !created {
            self.record_manual_tier(before.as_deref(), &p).await;
        }
        Ok(http::json(put_status(created), &*p))
    }

    pub(crate) fn get_partner(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let p = self
            .registry
            .partner(call.param("id"))
            .ok_or_else(|| ApiError::not_found("partner not found"))?;
        Ok(http::json(StatusCode::OK, &*p))
    }

    pub(crate) async fn patch_partner(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let patch: PartnerPatch = parse(&call.body)?;
        let before = self.registry.partner(call.param("id"));
        let p = self.registry.patch_partner(call.param("id"), patch).await?;
        self.record_manual_tier(before.as_deref(), &p).await;
        Ok(http::json(StatusCode::OK, &*p))
    }

    /// A tier set by hand is a row of `partner_tiers` (`manual`) and a
    /// `partner.tier_changed` event. The registry's history is what pays; the row is
    /// its report, so a ledger that cannot take it now is logged, not refused.
    async fn record_manual_tier(&self, before: Option<&Partner>, after: &Partner) {
        let (Some(ledger), Some(before)) = (&self.ledger, before) else {
            return;
        };
        if before.tier == after.tier {
            return;
        }
        let Some(change) = after.tier_history.last() else {
            return;
        };
        let Some(program) = self.registry.program(&after.program_id) else {
            return;
        };
        let default = &program.commission.default_tier;
        let m = crate::engine::tiers::TierMove {
            from: change.at,
            tier: after.tier.clone().unwrap_or_else(|| default.clone()),
            previous: before.tier.clone().unwrap_or_else(|| default.clone()),
            figures: Default::default(),
        };
        let row = crate::sink::TierRow::new(&after.program_id, &after.id, &m, "manual");
        if let Err(e) = ledger.record_tiers(&[row]).await {
            tracing::warn!(partner = %after.id, error = %e, "a manual tier change was not recorded in partner_tiers");
        }
    }

    pub(crate) async fn create_link(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let link: Link = parse_known(&call.body)?;
        let entry = self.registry.create_link(link).await?;
        Ok(http::json(StatusCode::CREATED, &self.link_view(&entry)))
    }

    pub(crate) fn get_link(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let entry = self
            .registry
            .link(call.param("code"))
            .ok_or_else(|| ApiError::not_found("link not found"))?;
        Ok(http::json(StatusCode::OK, &self.link_view(&entry)))
    }

    pub(crate) async fn patch_link(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let patch: LinkPatch = parse(&call.body)?;
        let entry = self.registry.patch_link(call.param("code"), patch).await?;
        Ok(http::json(StatusCode::OK, &self.link_view(&entry)))
    }

    pub(crate) async fn put_webhook(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let (id, name) = (call.param("id"), call.param("name"));
        let mut hook: Webhook = parse_known(&call.body)?;
        hook.restricted = call.principal.key().is_some();
        if hook.restricted {
            self.reachable(&hook.url).await?;
        }
        let created = self.registry.put_webhook(id, name, hook).await?;
        let w = self
            .program_hook(id, name)
            .ok_or_else(|| ApiError::internal("webhook vanished"))?;
        Ok(http::json(put_status(created), &webhook_view(&w)))
    }

    /// A program's own endpoint (not a partner's postback) by name.
    fn program_hook(&self, program: &str, name: &str) -> Option<std::sync::Arc<Webhook>> {
        self.registry
            .webhooks(program)
            .into_iter()
            .find(|w| w.name == name && w.partner_id.is_none())
    }

    /// Refuses an endpoint URL of the operator's network (SPEC §9), naming `url`.
    pub(crate) async fn reachable(&self, url: &str) -> Result<(), ApiError> {
        crate::access::ssrf::check_url(url, &self.config.webhooks.allowed_private_hosts)
            .await
            .map_err(|why| ApiError::invalid("url", why))
    }

    pub(crate) fn get_webhook(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let w = self
            .program_hook(call.param("id"), call.param("name"))
            .ok_or_else(|| ApiError::not_found("webhook not found"))?;
        Ok(http::json(StatusCode::OK, &webhook_view(&w)))
    }

    pub(crate) async fn delete_webhook(&self, call: Call) -> Result<HttpResponse, ApiError> {
        if self
            .program_hook(call.param("id"), call.param("name"))
            .is_none()
        {
            return Err(ApiError::not_found("webhook not found"));
        }
        self.registry
            .delete_webhook(call.param("id"), call.param("name"))
            .await?;
        Ok(http::text(StatusCode::NO_CONTENT, "text/plain", ""))
    }

    pub(crate) fn list_webhooks(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let id = call.param("id");
        if self.registry.program(id).is_none() {
            return Err(ApiError::not_found("program not found"));
        }
        let hooks: Vec<serde_json::Value> = self
            .registry
            .webhooks(id)
            .iter()
            .filter(|w| w.partner_id.is_none())
            .map(|w| webhook_view(w))
            .collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "webhooks": hooks }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_fields() {
        let e = parse::<Program>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("currency"));
        let e = parse::<Program>(
            br#"{"name":"x","currency":"USD","secret":"s","fallback_url":"u","lookback_days":"ten"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("lookback_days"));
        let e = parse::<Program>(b"{not json").unwrap_err();
        assert_eq!(e.code, "malformed_json");
        let e = parse::<Partner>(br#"{"program_id":"p","status":"retired"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("status"));
    }
}

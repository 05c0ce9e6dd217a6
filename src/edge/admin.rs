//! The registry API (SPEC §3.3): programs, partners and links behind a bearer token.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Edge;
use crate::http::{self, ApiError, HttpResponse, MAX_BODY_BYTES};
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
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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

/// A webhook endpoint as the API shows it: the secret is write-only.
fn webhook_view(w: &Webhook) -> serde_json::Value {
    serde_json::json!({
        "program_id": w.program_id, "name": w.name, "url": w.url, "events": w.events,
    })
}

fn program_view(p: &Program) -> serde_json::Value {
    let mut v = serde_json::to_value(ProgramView { program: p }).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "secret".into(),
            serde_json::Value::String("(hidden)".into()),
        );
    }
    v
}

impl Edge {
    fn link_view(&self, entry: &LinkEntry) -> serde_json::Value {
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

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        crate::signature::constant_time_eq(given.as_bytes(), self.config.admin.token.as_bytes())
    }

    pub(crate) async fn admin(&self, req: Request<Incoming>, rest: &[String]) -> HttpResponse {
        if !self.authorized(&req) {
            return ApiError::unauthorized("missing or wrong bearer token").into_response();
        }
        match self.admin_inner(req, rest).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    async fn admin_inner(
        &self,
        req: Request<Incoming>,
        rest: &[String],
    ) -> Result<HttpResponse, ApiError> {
        let method = req.method().clone();
        let parts: Vec<&str> = rest.iter().map(String::as_str).collect();
        let req = match parts.first() {
            Some(&"commissions") | Some(&"payouts") => {
                return match self.lifecycle_route(req, &parts).await {
                    Some(r) => r,
                    None => Err(ApiError::not_found("no such route")),
                };
            }
            _ => req,
        };
        match (method, parts.as_slice()) {
            (Method::PUT, ["programs", id]) => {
                let program: Program = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let created = self.registry.put_program(id, program).await?;
                let p = self
                    .registry
                    .program(id)
                    .ok_or_else(|| ApiError::internal("program vanished"))?;
                Ok(http::json(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &program_view(&p),
                ))
            }
            (Method::GET, ["programs", id]) => {
                let p = self
                    .registry
                    .program(id)
                    .ok_or_else(|| ApiError::not_found("program not found"))?;
                Ok(http::json(StatusCode::OK, &program_view(&p)))
            }
            (Method::PUT, ["partners", id]) => {
                let partner: Partner = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let created = self.registry.put_partner(id, partner).await?;
                let p = self
                    .registry
                    .partner(id)
                    .ok_or_else(|| ApiError::internal("partner vanished"))?;
                Ok(http::json(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &*p,
                ))
            }
            (Method::GET, ["partners", id]) => {
                let p = self
                    .registry
                    .partner(id)
                    .ok_or_else(|| ApiError::not_found("partner not found"))?;
                Ok(http::json(StatusCode::OK, &*p))
            }
            (Method::PATCH, ["partners", id]) => {
                let patch: PartnerPatch = parse(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let p = self.registry.patch_partner(id, patch).await?;
                Ok(http::json(StatusCode::OK, &*p))
            }
            (Method::POST, ["links"]) => {
                let link: Link = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let entry = self.registry.create_link(link).await?;
                Ok(http::json(StatusCode::CREATED, &self.link_view(&entry)))
            }
            (Method::GET, ["links", code]) => {
                let entry = self
                    .registry
                    .link(code)
                    .ok_or_else(|| ApiError::not_found("link not found"))?;
                Ok(http::json(StatusCode::OK, &self.link_view(&entry)))
            }
            (Method::PATCH, ["links", code]) => {
                let patch: LinkPatch = parse(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let entry = self.registry.patch_link(code, patch).await?;
                Ok(http::json(StatusCode::OK, &self.link_view(&entry)))
            }
            (Method::PUT, ["programs", id, "webhooks", name]) => {
                let hook: Webhook = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
                let created = self.registry.put_webhook(id, name, hook).await?;
                let w = self
                    .registry
                    .webhooks(id)
                    .into_iter()
                    .find(|w| w.name == *name)
                    .ok_or_else(|| ApiError::internal("webhook vanished"))?;
                Ok(http::json(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &webhook_view(&w),
                ))
            }
            (Method::GET, ["programs", id, "webhooks", name]) => {
                let w = self
                    .registry
                    .webhooks(id)
                    .into_iter()
                    .find(|w| w.name == *name)
                    .ok_or_else(|| ApiError::not_found("webhook not found"))?;
                Ok(http::json(StatusCode::OK, &webhook_view(&w)))
            }
            (Method::DELETE, ["programs", id, "webhooks", name]) => {
                self.registry.delete_webhook(id, name).await?;
                Ok(http::text(StatusCode::NO_CONTENT, "text/plain", ""))
            }
            (Method::GET, ["programs", id, "webhooks"]) => {
                if self.registry.program(id).is_none() {
                    return Err(ApiError::not_found("program not found"));
                }
                let hooks: Vec<serde_json::Value> = self
                    .registry
                    .webhooks(id)
                    .iter()
                    .map(|w| webhook_view(w))
                    .collect();
                Ok(http::json(
                    StatusCode::OK,
                    &serde_json::json!({ "webhooks": hooks }),
                ))
            }
            (_, ["programs", _, "webhooks", _]) => {
                Err(ApiError::method_not_allowed("GET, PUT, DELETE"))
            }
            (_, ["programs", _, "webhooks"]) => Err(ApiError::method_not_allowed("GET")),
            (_, ["programs", _]) => Err(ApiError::method_not_allowed("GET, PUT")),
            (_, ["partners", _]) => Err(ApiError::method_not_allowed("GET, PUT, PATCH")),
            (_, ["links", _]) => Err(ApiError::method_not_allowed("GET, PATCH")),
            (_, ["links"]) => Err(ApiError::method_not_allowed("POST")),
            _ => Err(ApiError::not_found("no such route")),
        }
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

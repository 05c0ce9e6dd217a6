//! The access layer of the keyed API (SPEC §9): authenticate, check the role against
//! the route's, take from the key's budget, find the tenant of the resource and refuse
//! another tenant's as if it were missing, then run the route's handler. Handlers see
//! a [`Call`] and never check access themselves.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request};

use super::routes::{Check, Op, Route};
use super::Edge;
use crate::access::principal::authenticate;
use crate::access::{Principal, Role};
use crate::analytics::Scope;
use crate::http::{self, ApiError, HttpResponse, MAX_BODY_BYTES};
use crate::registry::Partner;

/// A keyed request, authenticated and admitted.
pub(crate) struct Call {
    pub principal: Principal,
    params: Vec<(String, String)>,
    /// The query's parameters, decoded, each at most once (`partner_id` of the partner
    /// API taken out: it chose [`Call::partner`]).
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The partner the partner API acts for.
    pub partner: Option<Arc<Partner>>,
    /// Whose rows a report reads (routes with [`Check::Reader`]).
    pub scope: Option<Scope>,
}

impl Call {
    /// A path parameter of the route's template.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// The partner acted for (routes with [`Check::Me`] always have one).
    pub fn me(&self) -> Result<&Arc<Partner>, ApiError> {
        self.partner
            .as_ref()
            .ok_or_else(|| ApiError::internal("the partner API has no partner"))
    }

    /// Whether the client asked for CSV.
    pub fn wants_csv(&self) -> bool {
        self.headers
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))
    }
}

/// The query string's parameters, percent-decoded, each at most once.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()).into_owned() {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::invalid(k, "given more than once"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn take(query: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let i = query.iter().position(|(k, _)| k == name)?;
    Some(query.remove(i).1)
}

impl Edge {
    /// Runs a keyed route: every refusal is decided here, before its handler. Writes
    /// of an authenticated caller are recorded in `api_audit`, whatever the answer.
    pub(crate) async fn keyed(
        &self,
        route: &'static Route,
        roles: &[Role],
        params: Vec<(String, String)>,
        req: Request<Incoming>,
    ) -> HttpResponse {
        let principal = match authenticate(
            req.headers(),
            &self.config.admin.token,
            &self.registry,
            Utc::now(),
        ) {
            Ok(p) => p,
            Err(e) => return refused("unauthorized", ApiError::unauthorized(e.to_string())),
        };
        let resp = match self.admitted(route, roles, &principal, params, req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        if route.writes() {
            self.audit.record(&principal, route, resp.status().as_u16());
        }
        resp
    }

    async fn admitted(
        &self,
        route: &'static Route,
        roles: &[Role],
        principal: &Principal,
        params: Vec<(String, String)>,
        req: Request<Incoming>,
    ) -> Result<HttpResponse, ApiError> {
        if !roles.contains(&principal.role()) {
            return Err(counted(
                "forbidden",
                ApiError::forbidden(format!(
                    "a {} key cannot use this route",
                    principal.role().as_str()
                )),
            ));
        }
        if let Some(key) = principal.key() {
            self.budgets
                .take(&key.id, Instant::now())
                .map_err(|secs| counted("rate_limited", ApiError::too_many(secs)))?;
            self.key_uses.note(&self.registry, &key.id);
        }
        let query = query_pairs(req.uri().query().unwrap_or(""))?;
        let headers = req.headers().clone();
        let body = if route.writes() {
            http::read_body(req, MAX_BODY_BYTES).await?
        } else {
            Bytes::new()
        };
        let mut call = Call {
            principal: principal.clone(),
            params,
            query,
            headers,
            body,
            partner: None,
            scope: None,
        };
        for check in route.checks {
            self.admit(*check, route, &mut call)
                .await
                .map_err(|e| counted("not_found", e))?;
        }
        self.run(route.op, call).await
    }

    /// One tenant check; `Err` is the answer the route gives for a missing resource.
    async fn admit(&self, check: Check, route: &Route, call: &mut Call) -> Result<(), ApiError> {
        if check == Check::Me {
            call.partner = Some(self.me(call)?);
            return Ok(());
        }
        if check == Check::Reader {
            call.scope = Some(self.reader(call)?);
            return Ok(());
        }
        let Some(own) = call.principal.program().map(str::to_string) else {
            return Ok(()); // the operator reaches every tenant
        };
        let (owner, missing) = match check {
            Check::ProgramPath => (Some(call.param("id").to_string()), "program not found"),
            Check::PartnerPath => {
                let found = self.registry.partner(call.param("id"));
                match found {
                    // A new partner: its program is the body's (checked next).
                    None if route.method == hyper::Method::PUT => return Ok(()),
                    found => (found.map(|p| p.program_id.clone()), "partner not found"),
                }
            }
            Check::LinkPath => (
                self.registry
                    .link(call.param("code"))
                    .map(|l| l.link.program_id.clone()),
                "link not found",
            ),
            Check::KeyPath => (
                self.registry
                    .key(call.param("id"))
                    .map(|k| k.program_id.clone()),
                "key not found",
            ),
            Check::DisputePath => (
                self.dispute_program(call.param("id")).await?,
                "dispute not found",
            ),
            Check::BodyProgram => match body_program(&call.body)? {
                Some(p) => (Some(p), "program not found"),
                None => return Ok(()), // the handler names the missing field
            },
            Check::QueryProgram => match call.query.iter().find(|(k, _)| k == "program_id") {
                Some((_, p)) => (Some(p.clone()), "program not found"),
                None => return Ok(()),
            },
            Check::Me | Check::Reader => return Ok(()),
        };
        if owner.as_deref() == Some(own.as_str()) {
            Ok(())
        } else {
            Err(ApiError::not_found(missing))
        }
    }

    /// The partner a partner-API call acts for: a partner key's own; for the operator
    /// and program keys, `?partner_id=` (of the key's program).
    fn me(&self, call: &mut Call) -> Result<Arc<Partner>, ApiError> {
        let asked = take(&mut call.query, "partner_id");
        let missing = || ApiError::not_found("partner not found");
        let id = match (call.principal.role(), call.principal.key(), asked) {
            (Role::Partner, Some(key), asked) => {
                let own = key.partner_id.clone().unwrap_or_default();
                if asked.is_some_and(|a| a != own) {
                    return Err(missing());
                }
                own
            }
            (_, _, Some(asked)) => asked,
            (_, _, None) => {
                return Err(ApiError::invalid(
                    "partner_id",
                    "is required when acting for a partner",
                ))
            }
        };
        let partner = self.registry.partner(&id).ok_or_else(missing)?;
        match call.principal.program() {
            Some(own) if own != partner.program_id => Err(missing()),
            _ => Ok(partner),
        }
    }

    /// Whose rows a report reads: the program (a key's own; the operator names it),
    /// and one partner of it for a partner key (its own) or a `?partner_id=`. Another
    /// tenant's program or partner answers as a missing one.
    fn reader(&self, call: &Call) -> Result<Scope, ApiError> {
        let asked = |name: &str| {
            call.query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let program_id = match (call.principal.program(), asked("program_id")) {
            (Some(own), Some(p)) if p != own => {
                return Err(ApiError::not_found("program not found"))
            }
            (Some(own), _) => own.to_string(),
            (None, Some(p)) => p,
            (None, None) => return Err(ApiError::invalid("program_id", "required")),
        };
        if self.registry.program(&program_id).is_none() {
            return Err(ApiError::not_found("program not found"));
        }
        let missing = || ApiError::not_found("partner not found");
        let partner_id = match (
            call.principal.role(),
            call.principal.key(),
            asked("partner_id"),
        ) {
            (Role::Partner, Some(key), asked) => {
                let own = key.partner_id.clone().unwrap_or_default();
                if asked.is_some_and(|a| a != own) {
                    return Err(missing());
                }
                Some(own)
            }
            (_, _, Some(p)) => {
                let found = self
                    .registry
                    .partner(&p)
                    .filter(|x| x.program_id == program_id);
                Some(found.ok_or_else(missing)?.id.clone())
            }
            (_, _, None) => None,
        };
        Ok(Scope {
            program_id,
            partner_id,
        })
    }

    async fn run(&self, op: Op, call: Call) -> Result<HttpResponse, ApiError> {
        match op {
            Op::PutProgram => self.put_program(call).await,
            Op::GetProgram => self.get_program(call),
            Op::ListWebhooks => self.list_webhooks(call),
            Op::ListPromoCodes => self.list_promo_codes(call),
            Op::PutPromoCode => self.put_promo_code(call).await,
            Op::PutWebhook => self.put_webhook(call).await,
            Op::GetWebhook => self.get_webhook(call),
            Op::DeleteWebhook => self.delete_webhook(call).await,
            Op::PutPartner => self.put_partner(call).await,
            Op::GetPartner => self.get_partner(call),
            Op::PatchPartner => self.patch_partner(call).await,
            Op::CreateLink => self.create_link(call).await,
            Op::GetLink => self.get_link(call),
            Op::PatchLink => self.patch_link(call).await,
            Op::ListCommissions => self.list_commissions(call).await,
            Op::Review => self.review(call).await,
            Op::CreatePayout => self.create_payout(call).await,
            Op::GetPayout => self.get_payout(call).await,
            Op::CreateKey => self.create_key(call).await,
            Op::ListKeys => self.list_keys(call).await,
            Op::RevokeKey => self.revoke_key(call).await,
            Op::Me => self.my_profile(call).await,
            Op::MyLinks => self.my_links(call),
            Op::CreateMyLink => self.create_my_link(call).await,
            Op::MyCommissions => self.my_commissions(call).await,
            Op::Analytics => self.analytics_report(call).await,
            Op::MyBalance => self.my_balance(call).await,
            Op::MyPayouts => self.my_payouts(call).await,
            Op::MyPayout => self.my_payout(call).await,
            Op::OpenDispute => self.open_dispute(call).await,
            Op::MyDisputes => self.my_disputes(call).await,
            Op::ListDisputes => self.list_disputes(call).await,
            Op::ResolveDispute => self.resolve_dispute(call).await,
            Op::ListPostbacks => self.list_postbacks(call),
            Op::PutPostback => self.put_postback(call).await,
            Op::GetPostback => self.get_postback(call),
            Op::DeletePostback => self.delete_postback(call).await,
            Op::Redirect
            | Op::Conversions
            | Op::StripeEvents
            | Op::TlJs
            | Op::Dashboard
            | Op::DashboardJs
            | Op::DashboardCss
            | Op::Healthz
            | Op::Readyz
            | Op::Metrics => Err(ApiError::internal("not a keyed route")),
        }
    }
}

/// Counts a refusal of the access layer by reason.
fn counted(reason: &'static str, e: ApiError) -> ApiError {
    metrics::counter!(crate::metrics::EDGE_ACCESS_REFUSED_TOTAL, "reason" => reason).increment(1);
    e
}

fn refused(reason: &'static str, e: ApiError) -> HttpResponse {
    counted(reason, e).into_response()
}

/// The body's top-level `program_id`, when the body is a JSON object that has one as a
/// string. The body is checked strictly first: a key given twice cannot show the
/// check one program and the handler another.
fn body_program(body: &[u8]) -> Result<Option<String>, ApiError> {
    http::strict_json(body)?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::malformed(e.to_string()))?;
    Ok(value
        .get("program_id")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

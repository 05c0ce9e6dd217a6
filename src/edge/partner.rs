//! The partner API (SPEC §9.1): what one partner sees of its program — its profile,
//! its links, its ledger rows, its balance and its payouts. The partner is chosen by
//! the access layer (`api.rs`): a partner key's own, or `?partner_id=` for the operator
//! and program keys acting for one.

use chrono::Utc;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::parse_known;
use super::api::Call;
use super::lifecycle::filter_of;
use super::Edge;
use crate::http::{self, ApiError, HttpResponse};
use crate::ledger::partner::{payouts_of, Balance};
use crate::ledger::LedgerError;
use crate::registry::{Link, LinkStatus};

/// A link a partner makes for itself: program and partner are its own.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MyLink {
    #[serde(default)]
    code: String,
    destination: String,
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    utm_source: Option<String>,
    #[serde(default)]
    utm_medium: Option<String>,
    #[serde(default)]
    utm_campaign: Option<String>,
    #[serde(default)]
    utm_term: Option<String>,
    #[serde(default)]
    utm_content: Option<String>,
    #[serde(default)]
    sub_ids: Vec<String>,
}

impl Edge {
    pub(crate) async fn my_profile(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let program = self
            .registry
            .program(&me.program_id)
            .ok_or_else(|| ApiError::not_found("program not found"))?;
        let mut view = serde_json::json!({
            "id": me.id, "program_id": me.program_id, "name": me.name,
            "status": me.status, "tier_set_by_hand": !me.tier_auto,
            "parent_id": me.parent_id,
            "program": {"id": program.id, "name": program.name, "currency": program.currency},
            "links": self.registry.links_of(&me.id).len(),
        });
        let tier =
            super::tiers::tier_view(self.ledger.as_deref(), &program, me, Utc::now()).await?;
        if let (Some(view), Some(tier)) = (view.as_object_mut(), tier.as_object()) {
            view.extend(tier.clone());
        }
        Ok(http::json(StatusCode::OK, &view))
    }

    pub(crate) fn my_links(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let links: Vec<serde_json::Value> = self
            .registry
            .links_of(&me.id)
            .iter()
            .map(|l| self.link_view(l))
            .collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "links": links }),
        ))
    }

    pub(crate) async fn create_my_link(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let body: MyLink = parse_known(&call.body)?;
        let program = self
            .registry
            .program(&me.program_id)
            .ok_or_else(|| ApiError::not_found("program not found"))?;
        if !program.allows_destination(&body.destination) {
            return Err(ApiError::invalid(
                "destination",
                "must be on one of the program's allowed hosts (allowed_destinations)",
            ));
        }
        let link = Link {
            code: body.code,
            program_id: me.program_id.clone(),
            partner_id: me.id.clone(),
            destination: body.destination,
            campaign: body.campaign,
            utm_source: body.utm_source,
            utm_medium: body.utm_medium,
            utm_campaign: body.utm_campaign,
            utm_term: body.utm_term,
            utm_content: body.utm_content,
            sub_ids: body.sub_ids,
            status: LinkStatus::Active,
        };
        let entry = self.registry.create_link(link).await?;
        Ok(http::json(StatusCode::CREATED, &self.link_view(&entry)))
    }

    pub(crate) async fn my_commissions(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        if let Some((k, _)) = call
            .query
            .iter()
            .find(|(k, _)| k == "program_id" || k == "partner_id")
        {
            return Err(ApiError::invalid(k.clone(), "unknown parameter"));
        }
        let mut params = vec![
            ("program_id".to_string(), me.program_id.clone()),
            ("partner_id".to_string(), me.id.clone()),
        ];
        params.extend(call.query.iter().cloned());
        let filter = filter_of(&params)?;
        let rows = self
            .ledger()?
            .view
            .entries(&filter)
            .await
            .map_err(LedgerError::from)?;
        let next = (rows.len() == filter.limit)
            .then(|| rows.last().map(|e| e.commission_id.to_string()))
            .flatten();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({"commissions": rows, "next_cursor": next}),
        ))
    }

    pub(crate) async fn my_balance(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        no_parameters(&call)?;
        let currency = self
            .registry
            .program(&me.program_id)
            .map(|p| p.currency.clone())
            .unwrap_or_default();
        let rows = self
            .ledger()?
            .partner_entries(&me.program_id, &me.id)
            .await?;
        Ok(http::json(StatusCode::OK, &Balance::of(&currency, &rows)))
    }

    pub(crate) async fn my_payouts(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        no_parameters(&call)?;
        let rows = self
            .ledger()?
            .partner_entries(&me.program_id, &me.id)
            .await?;
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "payouts": payouts_of(&rows) }),
        ))
    }

    pub(crate) async fn my_payout(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        no_parameters(&call)?;
        let missing = || ApiError::not_found("payout not found");
        let id = Uuid::parse_str(call.param("id")).map_err(|_| missing())?;
        let mut payout = self
            .ledger()?
            .get_payout(&me.program_id, id)
            .await
            .map_err(|e| match e {
                LedgerError::NotFound(_) => missing(),
                e => e.into(),
            })?;
        // Only its own line: a batch the partner is not in is not its payout.
        payout.lines.retain(|l| l.partner_id == me.id);
        if payout.lines.is_empty() {
            return Err(missing());
        }
        Ok(if call.wants_csv() {
            http::text(StatusCode::OK, "text/csv; charset=utf-8", payout.csv())
        } else {
            http::json(StatusCode::OK, &payout)
        })
    }
}

/// Refuses query parameters on routes that take none (beyond `partner_id`).
fn no_parameters(call: &Call) -> Result<(), ApiError> {
    match call.query.first() {
        Some((k, _)) => Err(ApiError::invalid(k.clone(), "unknown parameter")),
        None => Ok(()),
    }
}

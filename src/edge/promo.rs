//! Promo codes over HTTP (SPEC §10.3): a program names which partner each of its codes
//! credits, and lists them. Program scope; the registry does the checks.

use hyper::StatusCode;

use super::admin::{parse_known, put_status};
use super::api::Call;
use super::Edge;
use crate::http::{self, ApiError, HttpResponse};
use crate::registry::PromoCode;

impl Edge {
    pub(crate) async fn put_promo_code(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let mut code: PromoCode = parse_known(&call.body)?;
        code.program_id = call.param("id").to_string();
        code.code = call.param("code").to_string();
        let created = self.registry.put_promo_code(code.clone()).await?;
        let stored = self
            .registry
            .promo_code(&code.program_id, &code.code)
            .ok_or_else(|| ApiError::internal("promo code vanished"))?;
        Ok(http::json(put_status(created), &*stored))
    }

    pub(crate) fn list_promo_codes(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let id = call.param("id");
        if self.registry.program(id).is_none() {
            return Err(ApiError::not_found("program not found"));
        }
        let codes = self.registry.promo_codes_of(id);
        let codes: Vec<&PromoCode> = codes.iter().map(|c| &**c).collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "promo_codes": codes }),
        ))
    }
}

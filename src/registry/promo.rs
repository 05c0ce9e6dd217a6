//! Promo codes in the registry (SPEC §10.3): a code of a program names the partner a
//! conversion carrying it credits. Codes are case-insensitive and unique per program:
//! stored under their lower-cased form, shown as first written.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Entity, Invalid, Registry, RegistryError};

/// Most codes one program may hold: every accepted value has a bound.
pub const MAX_PROMO_CODES_PER_PROGRAM: usize = 10_000;

/// One promo code of a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoCode {
    /// From the path.
    #[serde(default)]
    pub program_id: String,
    /// From the path, as written there.
    #[serde(default)]
    pub code: String,
    pub partner_id: String,
}

impl PromoCode {
    /// The form codes are compared in.
    pub fn canonical(code: &str) -> String {
        code.to_lowercase()
    }

    /// Its key in the registry: program and canonical code.
    pub fn key(&self) -> (String, String) {
        (self.program_id.clone(), Self::canonical(&self.code))
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if self.code.is_empty() || self.code.len() > 64 || !self.code.chars().all(ok) {
            return Err(Invalid::new("code", "must be 1-64 of A-Z a-z 0-9 _ . -"));
        }
        if self.partner_id.is_empty() {
            return Err(Invalid::new("partner_id", "is required"));
        }
        Ok(())
    }
}

impl Registry {
    /// The program's code `code`, in any case.
    pub fn promo_code(&self, program_id: &str, code: &str) -> Option<Arc<PromoCode>> {
        let key = (program_id.to_string(), PromoCode::canonical(code));
        self.promo_codes.get(&key).map(|e| Arc::clone(e.value()))
    }

    /// The program's codes, by canonical code.
    pub fn promo_codes_of(&self, program_id: &str) -> Vec<Arc<PromoCode>> {
        let mut codes: Vec<Arc<PromoCode>> = self
            .promo_codes
            .iter()
            .filter(|e| e.key().0 == program_id)
            .map(|e| Arc::clone(e.value()))
            .collect();
        codes.sort_by_key(|c| PromoCode::canonical(&c.code));
        codes
    }

    /// Creates or replaces a code (its partner must be the program's); `true` when new.
    pub async fn put_promo_code(&self, code: PromoCode) -> Result<bool, RegistryError> {
        code.validate()?;
        let _w = self.writes.lock().await;
        self.refresh().await?;
        if self.program(&code.program_id).is_none() {
            return Err(RegistryError::NotFound("program"));
        }
        if self
            .partner(&code.partner_id)
            .is_none_or(|p| p.program_id != code.program_id)
        {
            return Err(Invalid::new("partner_id", "no such partner in the program").into());
        }
        let existing = self.promo_code(&code.program_id, &code.code);
        if existing.is_none()
            && self.promo_codes_of(&code.program_id).len() >= MAX_PROMO_CODES_PER_PROGRAM
        {
            return Err(RegistryError::Conflict(format!(
                "the program has {MAX_PROMO_CODES_PER_PROGRAM} promo codes"
            )));
        }
        // The first spelling stays: a code is one code, whatever its case.
        let code = match &existing {
            Some(e) => PromoCode {
                code: e.code.clone(),
                ..code
            },
            None => code,
        };
        self.put(Entity::PromoCode(code)).await?;
        Ok(existing.is_none())
    }
}

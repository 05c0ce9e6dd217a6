//! `GET /tl.js` (SPEC §11.2): the merchant's page keeps the referral click id in a
//! first-party cookie and hands it to checkout with `touchline.clickId()`.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{HeaderMap, StatusCode};

use crate::http::{self, HttpResponse};

/// The script as served: small enough to inline in a page's critical path.
pub const SCRIPT: &str = include_str!("../../assets/tl.js");

/// Cached for a day by browsers and CDNs; the ETag lets them revalidate cheaply.
const CACHE: &str = "public, max-age=86400";

/// The script's ETag: its length and a short hash, fixed for a build.
fn etag() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(SCRIPT.as_bytes());
    format!("\"{}-{}\"", SCRIPT.len(), hex::encode(&digest[..8]))
}

/// The script, or `304` when the caller holds this build's copy.
pub fn serve(headers: &HeaderMap) -> HttpResponse {
    let tag = etag();
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        http::text(StatusCode::NOT_MODIFIED, "application/javascript", "")
    } else {
        http::text(
            StatusCode::OK,
            "application/javascript; charset=utf-8",
            SCRIPT,
        )
    };
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, v);
    }
    if fresh {
        h.remove(CONTENT_TYPE);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_two_kilobytes() {
        assert!(SCRIPT.len() < 2048, "tl.js is {} bytes", SCRIPT.len());
    }

    #[test]
    fn cached_for_a_day_and_revalidated_by_etag() {
        let first = serve(&HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[CACHE_CONTROL], CACHE);
        let tag = first.headers()[ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(IF_NONE_MATCH, tag);
        assert_eq!(serve(&again).status(), StatusCode::NOT_MODIFIED);
    }
}

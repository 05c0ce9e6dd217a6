//! The static files the edge serves, built into the binary: `GET /tl.js` (SPEC §11.2),
//! which keeps the referral click id in a first-party cookie on the merchant's pages, and
//! the operator's dashboard (`/dashboard`, its script and style), which draws the
//! analytics API's reports for whoever types a key into it.

use hyper::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, StatusCode};

use crate::http::{self, HttpResponse};

/// One built-in file and how it is cached.
pub struct Asset {
    pub body: &'static str,
    content_type: &'static str,
    cache: &'static str,
    /// The Content-Security-Policy of a dashboard file (and no Referer leaves it).
    policy: Option<&'static str>,
}

/// tl.js: small enough to inline in a page's critical path; cached for a day by
/// browsers and CDNs, the ETag lets them revalidate cheaply.
pub const TL_JS: Asset = Asset {
    body: include_str!("../../assets/tl.js"),
    content_type: "application/javascript; charset=utf-8",
    cache: "public, max-age=86400",
    policy: None,
};

/// The dashboard always revalidates, so a new build's page never meets an old script.
const DASHBOARD_CACHE: &str = "no-cache";

pub const DASHBOARD_HTML: Asset = Asset {
    body: include_str!("../../assets/dashboard.html"),
    content_type: "text/html; charset=utf-8",
    cache: DASHBOARD_CACHE,
    policy: Some(DASHBOARD_POLICY),
};

pub const DASHBOARD_JS: Asset = Asset {
    body: include_str!("../../assets/dashboard.js"),
    content_type: "application/javascript; charset=utf-8",
    cache: DASHBOARD_CACHE,
    policy: Some(DASHBOARD_POLICY),
};

pub const DASHBOARD_CSS: Asset = Asset {
    body: include_str!("../../assets/dashboard.css"),
    content_type: "text/css; charset=utf-8",
    cache: DASHBOARD_CACHE,
    policy: Some(DASHBOARD_POLICY),
};

/// The dashboard loads only its own script and style and talks only to this origin; no
/// other page may frame it (the page holds a key while open).
const DASHBOARD_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The file's ETag: its length and a short hash, fixed for a build.
fn etag(asset: &Asset) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(asset.body.as_bytes());
    format!("\"{}-{}\"", asset.body.len(), hex::encode(&digest[..8]))
}

/// The file, or `304` when the caller holds this build's copy.
pub fn serve(asset: &Asset, headers: &HeaderMap) -> HttpResponse {
    let tag = etag(asset);
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        http::text(StatusCode::NOT_MODIFIED, asset.content_type, "")
    } else {
        http::text(StatusCode::OK, asset.content_type, asset.body)
    };
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, v);
    }
    if let Some(policy) = asset.policy {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
        h.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
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
    fn tl_js_is_under_two_kilobytes() {
        assert!(
            TL_JS.body.len() < 2048,
            "tl.js is {} bytes",
            TL_JS.body.len()
        );
    }

    #[test]
    fn tl_js_is_cached_for_a_day_and_revalidated_by_etag() {
        let first = serve(&TL_JS, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[CACHE_CONTROL], "public, max-age=86400");
        let tag = first.headers()[ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(IF_NONE_MATCH, tag);
        assert_eq!(serve(&TL_JS, &again).status(), StatusCode::NOT_MODIFIED);
        // Another file's tag is not this one's.
        let mut other = HeaderMap::new();
        other.insert(
            IF_NONE_MATCH,
            serve(&DASHBOARD_JS, &HeaderMap::new()).headers()[ETAG].clone(),
        );
        assert_eq!(serve(&TL_JS, &other).status(), StatusCode::OK);
    }

    #[test]
    fn the_dashboard_loads_only_its_own_files() {
        let page = serve(&DASHBOARD_HTML, &HeaderMap::new());
        let policy = page.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
        for file in ["/dashboard.js", "/dashboard.css"] {
            assert!(DASHBOARD_HTML.body.contains(file), "the page names {file}");
        }
        // No inline script or handler the policy would block, no foreign origin.
        assert!(!DASHBOARD_HTML.body.contains("<script>"));
        assert!(!DASHBOARD_HTML.body.contains("onclick"));
        assert!(!DASHBOARD_HTML.body.contains("https://"));
        // Values are written as text, never parsed as markup.
        assert!(!DASHBOARD_JS.body.contains("innerHTML"));
    }
}

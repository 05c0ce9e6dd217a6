//! `GET|HEAD /r/{code}` (SPEC §3.1): the hot path. Everything here is in memory: one
//! registry lookup per entity, one SHA-256, one JSON encoding and a non-blocking enqueue.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, REFERER, SET_COOKIE, USER_AGENT,
};
use hyper::{Method, Request, Response, StatusCode};
use uuid::Uuid;

use super::Edge;
use crate::events::{to_millis, ClickEvent, ClickStatus, EVENT_VERSION};
use crate::http::HttpResponse;
use crate::metrics as m;
use crate::registry::{LinkEntry, LinkStatus, PartnerStatus};

/// Cookie carrying the visitor id.
pub const VISITOR_COOKIE: &str = "tl_vid";
/// Query parameter carrying the click id to the merchant.
pub const CLICK_PARAM: &str = "tl_click";

const NOT_FOUND_PAGE: &str =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Link not found</title></head>\
<body><h1>Link not found</h1><p>This referral link does not exist.</p></body></html>\n";

/// Substrings of user agents of crawlers, link previewers and HTTP libraries.
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "facebookcatalog",
    "embedly",
    "preview",
    "whatsapp",
    "telegram",
    "skypeuripreview",
    "discord",
    "slack",
    "bingpreview",
    "headlesschrome",
    "lighthouse",
    "pingdom",
    "uptime",
    "monitor",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "okhttp",
    "java/",
    "libwww",
    "httpclient",
    "axios/",
    "node-fetch",
    "scrapy",
    "phantomjs",
];

/// Is this request from a bot (SPEC §3.1): HEAD, no user agent, or a known marker.
pub fn is_bot(method: &Method, user_agent: &str) -> bool {
    if *method == Method::HEAD || user_agent.trim().is_empty() {
        return true;
    }
    let ua = user_agent.to_ascii_lowercase();
    BOT_MARKERS.iter().any(|marker| ua.contains(marker))
}

/// The visitor id from a valid `tl_vid` cookie.
fn visitor_from_cookies<B>(req: &Request<B>) -> Option<Uuid> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("tl_vid="))
        .find_map(|v| Uuid::parse_str(v.trim_matches('"')).ok())
        .filter(|u| !u.is_nil())
}

/// The client address: the socket peer, or the first `X-Forwarded-For` entry when the
/// edge sits behind a trusted proxy.
fn client_ip<B>(req: &Request<B>, peer: SocketAddr, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    peer.ip()
}

/// Longest user agent stored with a click, in characters.
pub const MAX_USER_AGENT: usize = 512;
/// Longest referer stored with a click, in characters.
pub const MAX_REFERER: usize = 1024;
/// Longest `utm_*` value stored with a click, in characters.
pub const MAX_UTM: usize = 256;

/// A header as text: bytes that are not UTF-8 become U+FFFD (a browser's non-ASCII user
/// agent is still a browser, not an empty agent).
fn header_text<B>(
    req: &Request<B>,
    name: hyper::header::HeaderName,
    max: usize,
    field: &'static str,
) -> String {
    let raw = req
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .unwrap_or_default();
    stored(&raw, max, field).to_string()
}

/// A value cut to `max` characters at a char boundary, so that what a visitor sends
/// cannot bloat events and tables; each cut is counted.
fn stored<'a>(s: &'a str, max: usize, field: &'static str) -> &'a str {
    match s.char_indices().nth(max) {
        Some((i, _)) => {
            metrics::counter!(m::EDGE_TRUNCATED_FIELDS_TOTAL, "field" => field).increment(1);
            &s[..i]
        }
        None => s,
    }
}

/// UTM values as sent on to the merchant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Utm {
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
}

/// The redirect target: the link's destination with the visit's query merged in (the
/// visit's parameters win, the destination's own and the link's UTM defaults fill gaps)
/// and `tl_click` added. Only the registered destination's host is ever used.
pub fn build_location(
    entry: &LinkEntry,
    incoming_query: Option<&str>,
    click_id: Uuid,
) -> (String, Utm) {
    let incoming: Vec<(String, String)> = incoming_query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| k != CLICK_PARAM)
                .collect()
        })
        .unwrap_or_default();
    let has = |params: &[(String, String)], key: &str| params.iter().any(|(k, _)| k == key);
    let mut params: Vec<(String, String)> = entry
        .query
        .iter()
        .filter(|(k, _)| !has(&incoming, k) && k != CLICK_PARAM)
        .cloned()
        .collect();
    params.extend(incoming);
    for (key, value) in entry.link.utm_defaults() {
        if let Some(v) = value {
            if !has(&params, key) {
                params.push((key.to_string(), v.to_string()));
            }
        }
    }
    // Stored at most MAX_UTM characters; the redirect passes them on whole.
    let utm_value = |key: &'static str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| stored(v, MAX_UTM, key).to_string())
    };
    let utm = Utm {
        source: utm_value("utm_source"),
        medium: utm_value("utm_medium"),
        campaign: utm_value("utm_campaign"),
        term: utm_value("utm_term"),
        content: utm_value("utm_content"),
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        query.append_pair(k, v);
    }
    query.append_pair(CLICK_PARAM, &click_id.to_string());
    let mut location = format!("{}?{}", entry.base, query.finish());
    if let Some(f) = &entry.fragment {
        location.push('#');
        location.push_str(f);
    }
    (location, utm)
}

fn not_found() -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(NOT_FOUND_PAGE.as_bytes())));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Edge {
    /// Answers `GET|HEAD /r/{code}`; public so that benches can drive it without a socket.
    // Long on purpose: the hot path (SPEC §8), kept in one frame so that nothing on it
    // allocates or calls through more than it must.
    pub fn redirect<B>(&self, req: &Request<B>, code: &str, peer: SocketAddr) -> HttpResponse {
        let Some(entry) = self.registry.link(code) else {
            return not_found();
        };
        let link = &entry.link;
        let (Some(program), partner) = (
            self.registry.program(&link.program_id),
            self.registry.partner(&link.partner_id),
        ) else {
            return not_found();
        };
        let status = match (link.status, partner.as_ref().map(|p| p.status)) {
            (_, Some(PartnerStatus::Banned)) => ClickStatus::Banned,
            (LinkStatus::Paused, _) | (_, Some(PartnerStatus::Paused)) | (_, None) => {
                ClickStatus::Paused
            }
            (LinkStatus::Active, Some(PartnerStatus::Active)) => ClickStatus::Ok,
        };
        let click_id = Uuid::now_v7();
        let visitor_id = visitor_from_cookies(req).unwrap_or_else(Uuid::new_v4);
        let user_agent = header_text(req, USER_AGENT, MAX_USER_AGENT, "user_agent");
        let bot = is_bot(req.method(), &user_agent);

        let (location, utm) = if status == ClickStatus::Ok {
            build_location(&entry, req.uri().query(), click_id)
        } else {
            (program.fallback_url.clone(), Utm::default())
        };

        let ip = client_ip(req, peer, self.config.edge.trust_forwarded_for);
        let referer = header_text(req, REFERER, MAX_REFERER, "referer");
        let event = ClickEvent {
            v: EVENT_VERSION,
            click_id,
            ts: to_millis(Utc::now()),
            program_id: link.program_id.clone(),
            partner_id: link.partner_id.clone(),
            link_code: link.code.clone(),
            campaign: link.campaign.clone(),
            visitor_id,
            ip_hash: self.ip_hash(&ip.to_string()),
            user_agent,
            referer: (!referer.is_empty()).then_some(referer),
            utm_source: utm.source,
            utm_medium: utm.medium,
            utm_campaign: utm.campaign,
            utm_term: utm.term,
            utm_content: utm.content,
            sub_ids: link.sub_ids.clone(),
            is_bot: bot,
            status,
            registry_version: self.registry.version(),
        };
        match serde_json::to_vec(&event) {
            Ok(payload) => {
                let key = visitor_id.to_string();
                if self.bus.publish_click(key.as_bytes(), &payload).is_err() {
                    metrics::counter!(m::EDGE_CLICK_BUFFER_OVERFLOW_TOTAL).increment(1);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode click event"),
        }
        metrics::counter!(m::EDGE_CLICKS_TOTAL, "status" => status.as_str(), "bot" => if bot { "true" } else { "false" })
            .increment(1);

        let mut cookie = format!(
            "{VISITOR_COOKIE}={visitor_id}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            program.lookback_secs()
        );
        if self.config.edge.secure_cookie {
            cookie.push_str("; Secure");
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::FOUND;
        let h = resp.headers_mut();
        // Both values come from validated URLs and our own ids; a value that still fails
        // to encode falls back to the program's fallback, never to anything from the request.
        match HeaderValue::from_str(&location) {
            Ok(v) => h.insert(LOCATION, v),
            Err(_) => h.insert(
                LOCATION,
                HeaderValue::from_str(&program.fallback_url)
                    .unwrap_or(HeaderValue::from_static("/")),
            ),
        };
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(SET_COOKIE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Link;

    fn entry(destination: &str) -> LinkEntry {
        let link = Link {
            code: "abc".into(),
            program_id: "p".into(),
            partner_id: "a".into(),
            destination: destination.into(),
            campaign: None,
            utm_source: Some("partner".into()),
            utm_medium: Some("affiliate".into()),
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            sub_ids: Vec::new(),
            status: LinkStatus::Active,
        };
        LinkEntry::new(link)
    }

    #[test]
    fn query_merge_incoming_wins_defaults_fill_gaps() {
        let id = Uuid::from_u128(1);
        let (loc, utm) = build_location(
            &entry("https://shop.example/p?ref=x&utm_source=dest#top"),
            Some("utm_source=news&gclid=1&tl_click=forged"),
            id,
        );
        assert_eq!(
            loc,
            "https://shop.example/p?ref=x&utm_source=news&gclid=1&utm_medium=affiliate&tl_click=00000000-0000-0000-0000-000000000001#top"
        );
        assert_eq!(utm.source.as_deref(), Some("news"));
        assert_eq!(utm.medium.as_deref(), Some("affiliate"));
        assert_eq!(utm.campaign, None);
    }

    #[test]
    fn request_cannot_choose_the_host() {
        let id = Uuid::from_u128(2);
        for q in [
            "url=https://evil.example",
            "@evil.example",
            "%2F%2Fevil.example",
            "next=//evil.example",
        ] {
            let (loc, _) = build_location(&entry("https://shop.example/"), Some(q), id);
            assert!(loc.starts_with("https://shop.example/?"), "{loc}");
            let uri: hyper::Uri = loc.parse().unwrap();
            assert_eq!(uri.host(), Some("shop.example"));
        }
    }

    #[test]
    fn bots() {
        assert!(is_bot(&Method::HEAD, "Mozilla/5.0"));
        assert!(is_bot(&Method::GET, ""));
        assert!(is_bot(
            &Method::GET,
            "Mozilla/5.0 (compatible; Googlebot/2.1)"
        ));
        assert!(is_bot(&Method::GET, "facebookexternalhit/1.1"));
        assert!(is_bot(&Method::GET, "Slackbot-LinkExpanding 1.0"));
        assert!(is_bot(&Method::GET, "curl/8.5.0"));
        assert!(!is_bot(
            &Method::GET,
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
        ));
    }

    #[test]
    fn cookies_and_forwarded_for() {
        let vid = Uuid::new_v4();
        let req = Request::builder()
            .header(COOKIE, format!("a=b; tl_vid={vid}; c=d"))
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
            .body(())
            .unwrap();
        assert_eq!(visitor_from_cookies(&req), Some(vid));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(client_ip(&req, peer, false).to_string(), "127.0.0.1");
        assert_eq!(client_ip(&req, peer, true).to_string(), "203.0.113.7");
        let bad = Request::builder()
            .header(COOKIE, "tl_vid=not-a-uuid")
            .body(())
            .unwrap();
        assert_eq!(visitor_from_cookies(&bad), None);
    }
}

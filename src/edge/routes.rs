//! The route table: every route of the edge once, with the roles it takes and how the
//! access layer (`api.rs`) finds the tenant of what it touches (SPEC §9). README's and
//! the OpenAPI document's route × scope tables are checked against this one.

use hyper::Method;

use crate::access::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential: redirects and the operational endpoints.
    Public,
    /// The program's HMAC signature (SPEC §3.2), not a key.
    Signed,
    /// A bearer credential of one of these roles; other roles get `403`.
    Roles(&'static [Role]),
}

/// How the tenant of a route's resource is found; a program or partner key reaching
/// another tenant's resource is answered as if it did not exist (`404`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The path's `{id}` is the program.
    ProgramPath,
    /// The path's `{id}` is a partner: its program must be the key's.
    PartnerPath,
    /// The path's `{code}` is a link of the key's program.
    LinkPath,
    /// The path's `{id}` is an API key of the key's program.
    KeyPath,
    /// The path's `{id}` is a dispute of the key's program.
    DisputePath,
    /// The body's `program_id` is the key's program.
    BodyProgram,
    /// The query's `program_id` is the key's program.
    QueryProgram,
    /// The partner acted for: a partner key's own, or `?partner_id=` of the key's
    /// program (the operator and program keys act for a partner that way).
    Me,
    /// Whose rows a report reads (SPEC §9.2): the query's `program_id` (a key's own
    /// program when absent) and, for a partner key, only its own rows; the operator and
    /// program keys may narrow to one partner with `?partner_id=`.
    Reader,
}

/// What a route does; `api.rs` maps each to its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Redirect,
    Conversions,
    StripeEvents,
    TlJs,
    Dashboard,
    DashboardJs,
    DashboardCss,
    Healthz,
    Readyz,
    Metrics,
    PutProgram,
    GetProgram,
    ListWebhooks,
    PutWebhook,
    GetWebhook,
    DeleteWebhook,
    PutPartner,
    GetPartner,
    PatchPartner,
    CreateLink,
    GetLink,
    PatchLink,
    ListCommissions,
    Review,
    CreatePayout,
    GetPayout,
    CreateKey,
    ListKeys,
    RevokeKey,
    Me,
    MyLinks,
    CreateMyLink,
    MyCommissions,
    MyBalance,
    MyPayouts,
    MyPayout,
    OpenDispute,
    MyDisputes,
    ListPostbacks,
    PutPostback,
    GetPostback,
    DeletePostback,
    ListDisputes,
    ResolveDispute,
    ListPromoCodes,
    PutPromoCode,
    Analytics,
}

/// One route: method, template (matchit syntax, as documented), access, checks, op.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub template: &'static str,
    pub access: Access,
    pub checks: &'static [Check],
    pub op: Op,
}

impl Route {
    /// Whether a call changes something (and is recorded in `api_audit`).
    pub fn writes(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD)
    }
}

const MERCHANT: Access = Access::Roles(&[Role::Operator, Role::Program]);
const PARTNER: Access = Access::Roles(&[Role::Operator, Role::Program, Role::Partner]);

const fn route(
    method: Method,
    template: &'static str,
    access: Access,
    checks: &'static [Check],
    op: Op,
) -> Route {
    Route {
        method,
        template,
        access,
        checks,
        op,
    }
}

use Check::*;

/// Every route of the edge. One line a route: the table is read as a table.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    route(Method::GET, "/r/{code}", Access::Public, &[], Op::Redirect),
    route(Method::HEAD, "/r/{code}", Access::Public, &[], Op::Redirect),
    route(Method::POST, "/api/v1/conversions", Access::Signed, &[], Op::Conversions),
    route(Method::POST, "/api/v1/integrations/stripe/{id}", Access::Signed, &[], Op::StripeEvents),
    route(Method::GET, "/tl.js", Access::Public, &[], Op::TlJs),
    // The page holds no data: it asks the analytics API with the key typed into it.
    route(Method::GET, "/dashboard", Access::Public, &[], Op::Dashboard),
    route(Method::GET, "/dashboard.js", Access::Public, &[], Op::DashboardJs),
    route(Method::GET, "/dashboard.css", Access::Public, &[], Op::DashboardCss),
    route(Method::GET, "/healthz", Access::Public, &[], Op::Healthz),
    route(Method::GET, "/readyz", Access::Public, &[], Op::Readyz),
    route(Method::GET, "/metrics", Access::Public, &[], Op::Metrics),
    route(Method::PUT, "/api/v1/programs/{id}", MERCHANT, &[ProgramPath], Op::PutProgram),
    route(Method::GET, "/api/v1/programs/{id}", MERCHANT, &[ProgramPath], Op::GetProgram),
    route(Method::GET, "/api/v1/programs/{id}/webhooks", MERCHANT, &[ProgramPath], Op::ListWebhooks),
    route(Method::PUT, "/api/v1/programs/{id}/webhooks/{name}", MERCHANT, &[ProgramPath], Op::PutWebhook),
    route(Method::GET, "/api/v1/programs/{id}/webhooks/{name}", MERCHANT, &[ProgramPath], Op::GetWebhook),
    route(Method::DELETE, "/api/v1/programs/{id}/webhooks/{name}", MERCHANT, &[ProgramPath], Op::DeleteWebhook),
    route(Method::GET, "/api/v1/programs/{id}/promo_codes", MERCHANT, &[ProgramPath], Op::ListPromoCodes),
    route(Method::PUT, "/api/v1/programs/{id}/promo_codes/{code}", MERCHANT, &[ProgramPath], Op::PutPromoCode),
    route(Method::PUT, "/api/v1/partners/{id}", MERCHANT, &[PartnerPath, BodyProgram], Op::PutPartner),
    route(Method::GET, "/api/v1/partners/{id}", MERCHANT, &[PartnerPath], Op::GetPartner),
    route(Method::PATCH, "/api/v1/partners/{id}", MERCHANT, &[PartnerPath], Op::PatchPartner),
    route(Method::POST, "/api/v1/links", MERCHANT, &[BodyProgram], Op::CreateLink),
    route(Method::GET, "/api/v1/links/{code}", MERCHANT, &[LinkPath], Op::GetLink),
    route(Method::PATCH, "/api/v1/links/{code}", MERCHANT, &[LinkPath], Op::PatchLink),
    route(Method::GET, "/api/v1/commissions", MERCHANT, &[QueryProgram], Op::ListCommissions),
    route(Method::POST, "/api/v1/commissions/review", MERCHANT, &[BodyProgram], Op::Review),
    route(Method::POST, "/api/v1/payouts", MERCHANT, &[BodyProgram], Op::CreatePayout),
    route(Method::GET, "/api/v1/payouts/{id}", MERCHANT, &[QueryProgram], Op::GetPayout),
    route(Method::POST, "/api/v1/keys", MERCHANT, &[BodyProgram], Op::CreateKey),
    route(Method::GET, "/api/v1/keys", MERCHANT, &[QueryProgram], Op::ListKeys),
    route(Method::DELETE, "/api/v1/keys/{id}", MERCHANT, &[KeyPath], Op::RevokeKey),
    route(Method::GET, "/api/v1/disputes", MERCHANT, &[QueryProgram], Op::ListDisputes),
    route(Method::POST, "/api/v1/disputes/{id}/resolve", MERCHANT, &[DisputePath], Op::ResolveDispute),
    route(Method::GET, "/api/v1/me", PARTNER, &[Me], Op::Me),
    route(Method::GET, "/api/v1/me/links", PARTNER, &[Me], Op::MyLinks),
    route(Method::POST, "/api/v1/me/links", PARTNER, &[Me], Op::CreateMyLink),
    route(Method::GET, "/api/v1/me/commissions", PARTNER, &[Me], Op::MyCommissions),
    route(Method::GET, "/api/v1/me/balance", PARTNER, &[Me], Op::MyBalance),
    route(Method::GET, "/api/v1/me/payouts", PARTNER, &[Me], Op::MyPayouts),
    route(Method::GET, "/api/v1/me/payouts/{id}", PARTNER, &[Me], Op::MyPayout),
    route(Method::POST, "/api/v1/me/disputes", PARTNER, &[Me], Op::OpenDispute),
    route(Method::GET, "/api/v1/me/disputes", PARTNER, &[Me], Op::MyDisputes),
    route(Method::GET, "/api/v1/me/postbacks", PARTNER, &[Me], Op::ListPostbacks),
    route(Method::PUT, "/api/v1/me/postbacks/{name}", PARTNER, &[Me], Op::PutPostback),
    route(Method::GET, "/api/v1/me/postbacks/{name}", PARTNER, &[Me], Op::GetPostback),
    route(Method::DELETE, "/api/v1/me/postbacks/{name}", PARTNER, &[Me], Op::DeletePostback),
    route(Method::GET, "/api/v1/analytics/{report}", PARTNER, &[Reader], Op::Analytics),
];

/// What a request path and method find in the table.
pub enum Found<'a> {
    Route(&'static Route, Vec<(String, String)>),
    /// The path exists, the method does not: `405` with `Allow`.
    Method(&'static str, &'a str),
    None,
}

/// The table behind a path matcher.
pub struct Router {
    paths: matchit::Router<usize>,
    /// Per template: its routes and their methods for `Allow`.
    groups: Vec<(&'static str, Vec<&'static Route>, String)>,
}

impl Router {
    /// Builds the matcher over [`ROUTES`].
    pub fn new() -> Self {
        let mut groups: Vec<(&'static str, Vec<&'static Route>, String)> = Vec::new();
        for r in ROUTES {
            match groups.iter_mut().find(|g| g.0 == r.template) {
                Some(g) => g.1.push(r),
                None => groups.push((r.template, vec![r], String::new())),
            }
        }
        let mut paths = matchit::Router::new();
        for (i, g) in groups.iter_mut().enumerate() {
            let mut methods: Vec<&str> = g.1.iter().map(|r| r.method.as_str()).collect();
            methods.sort_unstable();
            g.2 = methods.join(", ");
            // The table is a constant: a template the matcher refuses is a bug.
            paths
                .insert(g.0, i)
                .unwrap_or_else(|e| panic!("route {} does not fit the matcher: {e}", g.0));
        }
        Router { paths, groups }
    }

    pub fn find(&self, method: &Method, path: &str) -> Found<'_> {
        let Ok(m) = self.paths.at(path) else {
            return Found::None;
        };
        let (template, routes, allow) = &self.groups[*m.value];
        match routes.iter().find(|r| r.method == *method) {
            Some(r) => Found::Route(
                r,
                m.params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            None => Found::Method(template, allow),
        }
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_by_its_own_template() {
        let router = Router::new();
        for r in ROUTES {
            let path = r
                .template
                .replace("{code}", "abc")
                .replace("{id}", "x1")
                .replace("{name}", "n");
            match router.find(&r.method, &path) {
                Found::Route(found, _) => assert!(std::ptr::eq(found, r), "{path}"),
                _ => panic!("{} {path} not found", r.method),
            }
        }
        assert!(matches!(
            router.find(&Method::GET, "/api/v1/nothing"),
            Found::None
        ));
        assert!(matches!(
            router.find(&Method::GET, "/api/v1/programs/"),
            Found::None
        ));
        match router.find(&Method::POST, "/api/v1/partners/a") {
            Found::Method(t, allow) => {
                assert_eq!(t, "/api/v1/partners/{id}");
                assert_eq!(allow, "GET, PATCH, PUT");
            }
            _ => panic!("405 expected"),
        }
        match router.find(&Method::GET, "/api/v1/programs/acme/webhooks/crm") {
            Found::Route(_, params) => assert_eq!(
                params,
                vec![
                    ("id".to_string(), "acme".to_string()),
                    ("name".to_string(), "crm".to_string())
                ]
            ),
            _ => panic!("found expected"),
        }
    }

    #[test]
    fn keyed_routes_name_how_their_tenant_is_found() {
        for r in ROUTES {
            if let Access::Roles(roles) = r.access {
                assert!(roles.contains(&Role::Operator), "{}", r.template);
                assert!(
                    !r.checks.is_empty(),
                    "{} {} has no tenant check",
                    r.method,
                    r.template
                );
                // Partner keys reach the partner API, which always knows its partner,
                // and the reports, which read a partner key's own rows only.
                assert_eq!(
                    roles.contains(&Role::Partner),
                    r.checks.contains(&Check::Me) || r.checks.contains(&Check::Reader),
                    "{}",
                    r.template
                );
            }
        }
    }
}

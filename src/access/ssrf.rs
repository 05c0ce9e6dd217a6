//! No requests into the operator's network (SPEC §9): an endpoint or postback that a
//! program or partner key registers must not reach loopback, link-local, private or
//! unspecified addresses. Checked when it is registered, and again when delivery
//! connects, on the address the name resolves to then (a name may point elsewhere by
//! the time it is used: DNS rebinding). Deliveries never follow redirects.
//! `webhooks.allowed_private_hosts` lists the operator's exceptions.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;

/// Why an address is refused; `None` for a public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if a == 0 {
        // 0.0.0.0/8 reaches the host itself on Linux.
        Some("an unspecified address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // 100.64/10 is the carriers' and clouds' shared internal space.
        Some("a private address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a private address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if let Some(v4) = ip.to_ipv4() {
        // ::a.b.c.d (IPv4-compatible) carries a v4 address too.
        forbidden_v4(v4).filter(|_| first == 0)
    } else {
        None
    }
}

/// The host of an http(s) URL, without brackets; `None` when it has none.
pub fn host_of(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

/// Whether `host` is on the operator's list of exceptions.
pub fn allowed(host: &str, exceptions: &[String]) -> bool {
    exceptions.iter().any(|e| e.eq_ignore_ascii_case(host))
}

/// Why `host` (a literal address or a name that plainly means this machine) is
/// refused without asking DNS.
pub fn literal(host: &str) -> Option<&'static str> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return forbidden(ip);
    }
    let name = host.trim_end_matches('.');
    (name == "localhost" || name.ends_with(".localhost")).then_some("a loopback address")
}

/// The registration check of `url`: its host must not be, or resolve to, an address of
/// the operator's network. A name that does not resolve now is accepted: delivery
/// checks it again on every connection.
pub async fn check_url(url: &str, exceptions: &[String]) -> Result<(), String> {
    let Some(host) = host_of(url) else {
        return Err("has no host".into());
    };
    if allowed(&host, exceptions) {
        return Ok(());
    }
    if let Some(why) = literal(&host) {
        return Err(format!("must not point at {why} ({host})"));
    }
    let lookup = tokio::net::lookup_host((host.as_str(), 443));
    if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
        for a in addrs {
            if let Some(why) = forbidden(a.ip()) {
                return Err(format!(
                    "must not point at {why} ({host} resolves to {})",
                    a.ip()
                ));
            }
        }
    }
    Ok(())
}

/// The resolver of restricted deliveries: a name's addresses, without those of the
/// operator's network; a name left with none fails to connect.
#[derive(Clone)]
pub struct GuardedResolver {
    exceptions: Arc<Vec<String>>,
}

impl GuardedResolver {
    pub fn new(exceptions: Vec<String>) -> Self {
        GuardedResolver {
            exceptions: Arc::new(exceptions),
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let exceptions = Arc::clone(&self.exceptions);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allowed(&host, &exceptions) {
                return Ok(resolved.into_iter());
            }
            let kept: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| forbidden(a.ip()).is_none())
                .collect();
            if kept.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to addresses of the operator's network"),
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_of_the_operators_network_is_refused() {
        for ip in [
            "127.0.0.1",
            "127.5.0.1",
            "::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "169.254.169.254",
            "fe80::1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(
                forbidden(ip.parse().unwrap()).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "8.8.8.8",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_none(), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn registration_refuses_literals_and_names_of_this_machine() {
        for url in [
            "http://127.0.0.1:8123/",
            "http://[::1]:6379/",
            "http://localhost:6379/",
            "http://LOCALHOST./x",
            "http://api.localhost/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://[fe80::1]/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            assert!(check_url(url, &[]).await.is_err(), "{url} must be refused");
        }
        assert!(check_url("http://127.0.0.1:9000/", &["127.0.0.1".into()])
            .await
            .is_ok());
        assert!(check_url("https://crm.example/hooks", &[]).await.is_ok());
    }

    #[tokio::test]
    async fn the_connect_time_resolver_drops_the_operators_addresses() {
        let mut r = GuardedResolver::new(vec![]);
        let name: Name = "localhost".parse().unwrap();
        let err = tower_service::Service::call(&mut r, name)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let mut open = GuardedResolver::new(vec!["localhost".into()]);
        let name: Name = "localhost".parse().unwrap();
        assert!(tower_service::Service::call(&mut open, name).await.is_ok());
    }
}

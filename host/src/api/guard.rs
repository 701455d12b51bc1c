//! Cross-origin safety for the public API: which `Host` and `Origin` a request may carry.
//!
//! A page on another site can make a browser send requests to the gateway on loopback: a
//! `text/plain` POST needs no CORS preflight, and DNS rebinding (a name that first resolves to
//! the attacker's server, then to 127.0.0.1) makes the page same-origin with the gateway, so it
//! can read the answers too. Two checks close that, on every route:
//!
//! - **Host.** The `Host` header must name the gateway: its bound address, or, bound to a
//!   loopback address, `localhost`, `127.0.0.1` or `[::1]`, with the bound port; or one of
//!   `server.allowed_hosts` (`name`, any port; `name:port`, that port), for a gateway reached
//!   through a proxy or a DNS name. A rebinding page sends its own name, and is refused. Bound
//!   to an unspecified address (`0.0.0.0`, `::`, which requires the token) without
//!   `allowed_hosts`, the gateway cannot know its names and checks no `Host`.
//! - **Origin.** Without `server.api_token`, a request whose `Origin` is not the gateway's own
//!   (by the same rule as `Host`) is refused: browsers send `Origin` on cross-origin requests,
//!   and the status page, served by the gateway itself, sends its own. With a token, a browser
//!   cannot attach it to a cross-origin request without a preflight the gateway never grants.
//!
//! Both refusals are 403 with the JSON error naming the header. Bodies must also be
//! `application/json` (the send route checks it), which a cross-origin form cannot send.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;
use crate::config::ServerConfig;

/// The names the public API answers to.
#[derive(Debug)]
pub struct Guard {
    /// `(host, port)`: `None` as port matches any. `None` as a whole: no `Host` check.
    hosts: Option<Vec<(String, Option<u16>)>>,
    /// Whether `Origin` is checked (no token is configured).
    check_origin: bool,
}

impl Guard {
    /// The names for a gateway bound to `local` with `server`'s settings.
    pub fn new(local: SocketAddr, server: &ServerConfig) -> Guard {
        let port = Some(local.port());
        let mut hosts: Vec<(String, Option<u16>)> = server
            .allowed_hosts
            .iter()
            .map(|h| {
                let (name, port) = split_authority(h, None);
                (name.to_owned(), port)
            })
            .collect();
        let ip = local.ip();
        let checked = if ip.is_unspecified() {
            !hosts.is_empty()
        } else {
            hosts.push((ip.to_string(), port));
            if ip.is_loopback() {
                for name in ["localhost", "127.0.0.1", "::1"] {
                    hosts.push((name.to_owned(), port));
                }
            }
            true
        };
        Guard {
            hosts: checked.then_some(hosts),
            check_origin: server.api_token.is_none(),
        }
    }

    /// Whether `authority` (`host[:port]`, as in `Host`; `default_port` when it has none)
    /// names this gateway.
    fn allows(&self, authority: &str, default_port: u16) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let (name, port) = split_authority(authority, Some(default_port));
        let name = name.to_ascii_lowercase();
        hosts
            .iter()
            .any(|(h, p)| *h == name && (p.is_none() || *p == port))
    }
}

/// `host[:port]` -> (`host` without IPv6 brackets, port); `default` when no port is given.
fn split_authority(authority: &str, default: Option<u16>) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port.or(default));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok().or(default)),
        _ => (authority, default),
    }
}

fn refused(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// The middleware: refuses a request whose `Host` or `Origin` does not name the gateway.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if guard.hosts.is_some() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !guard.allows(host, 80) {
            tracing::debug!(host, "refused a request for another host");
            return refused(format!(
                "the Host header {host:?} does not name this gateway (its address, or server.allowed_hosts)"
            ));
        }
    }
    if guard.check_origin
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("null");
        let own = match origin.split_once("://") {
            Some(("http", authority)) => guard.allows(authority, 80),
            Some(("https", authority)) => guard.allows(authority, 443),
            _ => false,
        };
        if !own {
            tracing::debug!(origin, "refused a cross-origin request");
            return refused(format!(
                "requests from the origin {origin:?} are refused: it is not this gateway's own (set server.api_token to serve other origins' scripts with a token)"
            ));
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(token: Option<&str>, allowed: &[&str]) -> ServerConfig {
        let mut config = crate::config::Config::parse("", std::path::Path::new("h.toml"))
            .unwrap()
            .server;
        config.api_token = token.map(str::to_owned);
        config.allowed_hosts = allowed.iter().map(|h| (*h).to_owned()).collect();
        config
    }

    #[test]
    fn loopback_names_with_the_bound_port_only() {
        let guard = Guard::new("127.0.0.1:8642".parse().unwrap(), &server(None, &[]));
        for ok in [
            "127.0.0.1:8642",
            "localhost:8642",
            "LOCALHOST:8642",
            "[::1]:8642",
        ] {
            assert!(guard.allows(ok, 80), "{ok}");
        }
        for bad in [
            "evil.example:8642",
            "127.0.0.1:8643",
            "localhost",
            "",
            "[::1]",
        ] {
            assert!(!guard.allows(bad, 80), "{bad}");
        }
    }

    #[test]
    fn configured_names_and_unspecified_addresses() {
        let guard = Guard::new(
            "0.0.0.0:8642".parse().unwrap(),
            &server(Some("t"), &["hermes.example.org", "proxy:8080"]),
        );
        assert!(guard.allows("hermes.example.org", 80));
        assert!(guard.allows("hermes.example.org:8642", 80));
        assert!(guard.allows("proxy:8080", 80));
        assert!(!guard.allows("proxy:8081", 80));
        assert!(!guard.allows("127.0.0.1:8642", 80));
        let open = Guard::new("0.0.0.0:8642".parse().unwrap(), &server(Some("t"), &[]));
        assert!(open.allows("anything:1", 80));
    }
}

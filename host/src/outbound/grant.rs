//! Where a subscriber may send HTTP requests: its `grants.http` entries,
//! parsed once at the config's edge, matched against every request.

use std::net::IpAddr;

/// One `grants.http` entry: `scheme://host[:port]`, where the host is a
/// name, `*.` and a name (any name under it, not the name itself), or an
/// IP literal. Without a port, the scheme's default port only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub https: bool,
    pub host: GrantedHost,
    pub port: u16,
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantedHost {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any name ending in `.<suffix>`.
    Under(String),
    /// This address, which may then be private or loopback.
    Address(IpAddr),
}

/// Where a request goes, from its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Lowercase name, or an IP literal's text without brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The target of `uri`, or `None` if it names no host.
    pub fn of(uri: &http::Uri) -> Option<Target> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let authority = uri.authority()?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Target { https, host, port })
    }

    /// The host as an address, if it is an IP literal.
    pub fn address(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl HttpGrant {
    /// Parses one entry, e.g. `https://api.example.com`,
    /// `https://*.example.org`, `http://127.0.0.1:8080`; the message says
    /// what is wrong and what is expected.
    pub fn parse(text: &str) -> Result<HttpGrant, String> {
        const SHAPE: &str = "expected scheme://host[:port], e.g. \"https://api.example.com\", \
                             \"https://*.example.org\" or \"http://127.0.0.1:8080\"";
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "{text:?}: only http and https are granted; {SHAPE}"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!("{text:?}: a grant is a scheme, a host and a port, not a path or credentials; {SHAPE}"));
        }
        // The port is the digits after the last `:` outside brackets.
        let (name, port) = match rest.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535; {SHAPE}"))?;
                (name, port)
            }
            _ => (rest, if https { 443 } else { 80 }),
        };
        let name = name.to_ascii_lowercase();
        let name = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(v6) => v6.to_string(),
            None if name.contains(':') => {
                return Err(format!(
                    "{text:?}: an IPv6 address goes in brackets, e.g. \"http://[::1]:8080\""
                ))
            }
            None => name,
        };
        if name.is_empty() {
            return Err(format!("{text:?}: no host; {SHAPE}"));
        }
        let host = if let Ok(ip) = name.parse::<IpAddr>() {
            GrantedHost::Address(ip)
        } else if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || !suffix.contains('.') {
                return Err(format!(
                    "{text:?}: a wildcard covers the names under a domain of two labels or more, e.g. \"https://*.example.org\""
                ));
            }
            GrantedHost::Under(suffix.trim_end_matches('.').to_string())
        } else if name.contains('*') {
            return Err(format!(
                "{text:?}: `*` only as the whole first label (\"*.example.org\")"
            ));
        } else {
            GrantedHost::Name(name.trim_end_matches('.').to_string())
        };
        Ok(HttpGrant { https, host, port })
    }

    /// Whether this grant covers a request to `target`.
    pub fn allows(&self, target: &Target) -> bool {
        if self.https != target.https || self.port != target.port {
            return false;
        }
        match &self.host {
            GrantedHost::Name(name) => *name == target.host,
            GrantedHost::Under(suffix) => target
                .host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            GrantedHost::Address(ip) => target.address() == Some(*ip),
        }
    }

    /// Whether this grant names `ip` literally: only then may a request
    /// reach a private, loopback or link-local address.
    pub fn names_address(&self, ip: IpAddr) -> bool {
        self.host == GrantedHost::Address(ip)
    }
}

impl std::fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            GrantedHost::Name(name) => write!(f, "{scheme}://{name}:{}", self.port),
            GrantedHost::Under(suffix) => write!(f, "{scheme}://*.{suffix}:{}", self.port),
            GrantedHost::Address(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}", self.port),
            GrantedHost::Address(ip) => write!(f, "{scheme}://{ip}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Target {
        Target::of(&uri.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_grant_is_scheme_host_and_port() {
        let api = HttpGrant::parse("https://API.example.com").unwrap();
        assert!(api.allows(&target("https://api.example.com/v1/charge")));
        assert!(api.allows(&target("https://api.example.com:443/")));
        assert!(
            !api.allows(&target("http://api.example.com/")),
            "the scheme counts"
        );
        assert!(
            !api.allows(&target("https://api.example.com:8443/")),
            "the port counts"
        );
        assert!(!api.allows(&target("https://api.example.com.evil.net/")));
        assert!(!api.allows(&target("https://evil-api.example.com/")));

        let local = HttpGrant::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.allows(&target("http://127.0.0.1:8080/hook")));
        assert!(!local.allows(&target("http://127.0.0.1:8081/hook")));
        assert!(
            !local.allows(&target("http://localhost:8080/hook")),
            "a name is not its address"
        );
        assert!(local.names_address("127.0.0.1".parse().unwrap()));

        let v6 = HttpGrant::parse("http://[::1]:9000").unwrap();
        assert!(v6.allows(&target("http://[::1]:9000/")));
    }

    #[test]
    fn a_wildcard_covers_the_names_under_a_domain_only() {
        let under = HttpGrant::parse("https://*.example.org").unwrap();
        assert!(under.allows(&target("https://a.example.org/")));
        assert!(under.allows(&target("https://a.b.example.org/")));
        assert!(!under.allows(&target("https://example.org/")));
        assert!(!under.allows(&target("https://badexample.org/")));
        assert!(!under.names_address("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn what_is_not_a_grant_says_why() {
        for bad in [
            "ftp://example.com",
            "example.com",
            "https://",
            "https://example.com/path",
            "https://user@example.com",
            "https://*.com",
            "https://a.*.example.com",
            "https://example.com:99999",
            "https://example.com:",
        ] {
            let err = HttpGrant::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}

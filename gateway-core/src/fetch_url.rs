//! URLs the sidecars fetch from (an issuer's JWKS and discovery documents).
//!
//! Judged on the URL as the `url` crate (WHATWG) parses it, the same parser the
//! HTTP client uses, never on the text: `http://localhost:1@evil.example/` reads
//! as "localhost" to a prefix check but connects to `evil.example`.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a URL may not be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchUrlError {
    #[error("not a URL: {0}")]
    Unparsable(#[from] url::ParseError),
    #[error("scheme `{0}` is not allowed (https, or http to localhost)")]
    Scheme(String),
    /// Credentials in a URL end up in logs and can disguise the real host.
    #[error("a user name or password in the URL is not allowed")]
    Userinfo,
    #[error("plain http is allowed only to localhost, 127.0.0.1 or [::1], not `{0}`")]
    PlainHttp(String),
}

/// Parses a URL keys may be fetched from: `https`, or plain `http` to a loopback
/// host (local development and tests), without user name or password. The
/// returned URL is normalized; fetch that one, not the original text.
pub fn parse(text: &str) -> Result<Url, FetchUrlError> {
    let url = Url::parse(text)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchUrlError::Userinfo);
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" => match url.host() {
            Some(Host::Domain("localhost")) => Ok(url),
            Some(Host::Ipv4(ip)) if ip == Ipv4Addr::LOCALHOST => Ok(url),
            Some(Host::Ipv6(ip)) if ip == Ipv6Addr::LOCALHOST => Ok(url),
            host => Err(FetchUrlError::PlainHttp(
                host.map(|h| h.to_string()).unwrap_or_default(),
            )),
        },
        other => Err(FetchUrlError::Scheme(other.to_owned())),
    }
}

/// `text` fit for an error message or a log line: credentials masked, and
/// nothing of a text that does not even parse (it could be anything).
pub fn redacted(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return "<not a URL>".to_owned();
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which these have.
        let _ = url.set_password(None);
        let _ = url.set_username("***");
    }
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_and_loopback_http_are_allowed() {
        for (text, normalized) in [
            ("https://idp.example/jwks", "https://idp.example/jwks"),
            ("HTTPS://Example.com/jwks", "https://example.com/jwks"),
            ("http://localhost/jwks", "http://localhost/jwks"),
            ("http://127.0.0.1:8080/jwks", "http://127.0.0.1:8080/jwks"),
            ("http://[::1]:8080/jwks", "http://[::1]:8080/jwks"),
        ] {
            let url = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.as_str(), normalized);
        }
    }

    #[test]
    fn a_host_that_only_looks_local_is_refused() {
        // The userinfo trick: the host is evil.example, "localhost:1" the credentials.
        assert_eq!(
            parse("http://localhost:1@evil.example/jwks"),
            Err(FetchUrlError::Userinfo)
        );
        for (text, host) in [
            (
                "http://localhost.evil.example/jwks",
                "localhost.evil.example",
            ),
            (
                "http://127.0.0.1.evil.example/jwks",
                "127.0.0.1.evil.example",
            ),
            ("http://idp.example/jwks", "idp.example"),
            ("http://127.0.0.2/jwks", "127.0.0.2"),
        ] {
            assert_eq!(
                parse(text),
                Err(FetchUrlError::PlainHttp(host.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn credentials_and_other_schemes_are_refused() {
        assert_eq!(
            parse("https://user@idp.example/"),
            Err(FetchUrlError::Userinfo)
        );
        assert_eq!(
            parse("https://user:secret@idp.example/"),
            Err(FetchUrlError::Userinfo)
        );
        assert_eq!(
            parse("file:///etc/passwd"),
            Err(FetchUrlError::Scheme("file".into()))
        );
        assert_eq!(
            parse("ftp://idp.example/jwks"),
            Err(FetchUrlError::Scheme("ftp".into()))
        );
        assert!(matches!(
            parse("idp.example/jwks"),
            Err(FetchUrlError::Unparsable(_))
        ));
    }

    #[test]
    fn errors_say_why_and_never_show_credentials() {
        let err = parse("http://localhost:1@evil.example/").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "a user name or password in the URL is not allowed"
        );
        assert_eq!(
            redacted("http://localhost:1@evil.example/jwks"),
            "http://***@evil.example/jwks"
        );
        assert_eq!(
            redacted("https://idp.example/jwks"),
            "https://idp.example/jwks"
        );
        assert_eq!(redacted("http://user:pw@[::1/"), "<not a URL>");
    }
}

//! `replication.postgres_url` (docs/operations/many-gateways.md): parsing and checking the libpq-style
//! URL (`sslmode` split off, since tokio-postgres knows only some of its values), and
//! showing it without its password. Plain functions of strings, so the configuration
//! checks it (`config.rs`) and the replication task connects with it (`replication.rs`)
//! without either depending on the other.

/// `sslmode`, as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The URL without its password (`user:***@host`), for showing it.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// Splits `sslmode` off the URL's query (tokio-postgres knows only some of its values).
fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Prefer;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                        "replication.postgres_url: sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    ))
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// The checks `Config::validate` makes for every command (of `replication.postgres_url`
/// and `replication.ca_file`): the URL, `sslmode`, and a
/// CA file where one is needed. The files themselves are read by `serve` and
/// `check-config` (`Settings::from_config`), not by every CLI command, which may run as
/// a user the credential is not for.
pub fn check(postgres_url: &str, ca_file: &str) -> Result<(), String> {
    parse(postgres_url, ca_file).map(|_| ())
}

/// The URL, parsed and checked; the password in it, if any; the `sslmode`.
pub fn parse(
    postgres_url: &str,
    ca_file: &str,
) -> Result<(tokio_postgres::Config, Option<String>, SslMode), String> {
    let url_password = redact_secret_of(postgres_url);
    let scrub = |msg: String| match &url_password {
        Some(p) if !p.is_empty() => msg.replace(p.as_str(), "***"),
        _ => msg,
    };
    if !(postgres_url.starts_with("postgresql://") || postgres_url.starts_with("postgres://")) {
        return Err("replication.postgres_url: must be a postgresql:// URL (libpq style)".into());
    }
    let (url, ssl) = split_sslmode(postgres_url).map_err(scrub)?;
    let pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        scrub(format!(
            "replication.postgres_url: not a valid PostgreSQL URL: {e}"
        ))
    })?;
    if pg.get_user().is_none() {
        return Err(
            "replication.postgres_url: must name a user (postgresql://USER@host/db)".into(),
        );
    }
    if pg.get_hosts().is_empty() {
        return Err("replication.postgres_url: must name a host".into());
    }
    if matches!(ssl, SslMode::VerifyCa | SslMode::VerifyFull) && ca_file.is_empty() {
        return Err("replication.ca_file: required with sslmode=verify-ca or verify-full".into());
    }
    Ok((pg, url_password, ssl))
}

/// The password in the URL's user info, if any (percent-decoding left aside: it is
/// only used to scrub messages).
fn redact_secret_of(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgresql://fleet:s3cret@hq:5432/fleet?sslmode=require"),
            "postgresql://fleet:***@hq:5432/fleet?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://fleet@hq/fleet"),
            "postgresql://fleet@hq/fleet"
        );
        assert_eq!(redact(""), "");
    }
}

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

/// The query parameters whose value is a secret: libpq's `password` and
/// `sslpassword` (the client key's passphrase). libpq percent-decodes parameter names
/// too, so `pass%77ord=` is a password as well: names are compared decoded.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword"];

/// What a URL whose secrets cannot be located is shown as: everything hidden.
const HIDDEN: &str = "*** (not shown: not a postgresql:// URL)";

/// Percent-decodes `s` (invalid escapes and bytes are kept as they are: this is only
/// for recognising names and secrets, never for connecting).
fn decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL's parts: everything up to and including `://`, the user info (before the
/// last `@` of the authority, if any), the rest of the authority and path, and the
/// query (after the first `?`, if any).
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    hostpath: &'a str,
    query: Option<&'a str>,
}

fn split(url: &str) -> Option<Parts<'_>> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (userinfo, hostpath) = match before_query[..authority_end].rfind('@') {
        Some(at) => (Some(&before_query[..at]), &before_query[at..]),
        None => (None, before_query),
    };
    Some(Parts {
        scheme: &url[..scheme_end],
        userinfo,
        hostpath,
        query,
    })
}

/// Whether a query parameter's name (as written) is one whose value is a secret.
fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.contains(&decode_lossy(name).as_str())
}

/// The URL with every secret in it replaced by `***`, for showing it anywhere (
/// `check-config`, logs, errors): the password of the user info (`user:***@host`) and
/// the value of every `password=` and `sslpassword=` query parameter, whatever their
/// spelling (percent-encoded names included). A value that is not a `…://` URL cannot
/// be taken apart, so it is hidden whole.
pub fn redact(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    let Some(parts) = split(url) else {
        return HIDDEN.into();
    };
    let mut out = String::from(parts.scheme);
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
    }
    out.push_str(parts.hostpath);
    if let Some(query) = parts.query {
        let shown: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&shown.join("&"));
    }
    out
}

/// Every secret the URL holds, as written and percent-decoded (longest first, so a
/// scrub replaces a whole secret before any part of it): what `scrub` removes from
/// a message that might echo the URL or a piece of it.
fn secrets_of(url: &str) -> Vec<String> {
    let Some(parts) = split(url) else {
        return Vec::new();
    };
    let mut raw = Vec::new();
    if let Some((_, p)) = parts.userinfo.and_then(|u| u.split_once(':')) {
        raw.push(p);
    }
    for pair in parts.query.unwrap_or("").split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            if is_secret_param(name) {
                raw.push(value);
            }
        }
    }
    let mut all: Vec<String> = raw
        .iter()
        .flat_map(|r| [r.to_string(), decode_lossy(r)])
        .filter(|s| !s.is_empty())
        .collect();
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
    all
}

/// `msg` with every secret of `url` replaced by `***`.
pub fn scrub(url: &str, msg: &str) -> String {
    let mut msg = msg.to_string();
    for secret in secrets_of(url) {
        msg = msg.replace(secret.as_str(), "***");
    }
    msg
}

/// Splits `sslmode` off the URL's query (tokio-postgres knows only some of its values).
/// A replication setting refused: the key (`replication.postgres_url`, …) and why,
/// never holding the password (`scrub`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingError {
    pub key: &'static str,
    pub reason: String,
}

impl SettingError {
    pub fn new(key: &'static str, reason: impl Into<String>) -> SettingError {
        SettingError {
            key,
            reason: reason.into(),
        }
    }
}

const URL_KEY: &str = "replication.postgres_url";

fn split_sslmode(url: &str) -> Result<(String, SslMode), SettingError> {
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
                        return Err(SettingError::new(URL_KEY, format!(
                        "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    )))
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

/// The warning for a URL whose `sslmode` is `prefer` (given, or the default when none
/// is): TLS when the server offers it, plaintext without a word when it does not (or
/// when someone on the path says it does not), and the certificate never checked.
/// `serve` logs it once at start and `check-config` lists it; `None` for the modes
/// that never fall back, and for replication switched off (an empty URL).
pub fn sslmode_warning(postgres_url: &str) -> Option<String> {
    if postgres_url.is_empty() {
        return None;
    }
    match split_sslmode(postgres_url) {
        Ok((_, SslMode::Prefer)) => Some(
            "replication.postgres_url: sslmode=prefer (the default) falls back to plaintext when the server does not offer TLS, and never checks the server's certificate: the password and the replicated changes can then be read and changed on the way. Set sslmode=verify-full with replication.ca_file, or sslmode=disable on a trusted link to say so"
                .into(),
        ),
        _ => None,
    }
}

/// The checks `Config::validate` makes for every command (of `replication.postgres_url`
/// and `replication.ca_file`): the URL, `sslmode`, and a
/// CA file where one is needed. The files themselves are read by `serve` and
/// `check-config` (`Settings::from_config`), not by every CLI command, which may run as
/// a user the credential is not for.
pub fn check(postgres_url: &str, ca_file: &str) -> Result<(), SettingError> {
    parse(postgres_url, ca_file).map(|_| ())
}

/// The URL, parsed and checked; the password in it, if any; the `sslmode`.
pub fn parse(
    postgres_url: &str,
    ca_file: &str,
) -> Result<(tokio_postgres::Config, Option<String>, SslMode), SettingError> {
    let scrub = |e: SettingError| SettingError {
        reason: scrub(postgres_url, &e.reason),
        ..e
    };
    if !(postgres_url.starts_with("postgresql://") || postgres_url.starts_with("postgres://")) {
        return Err(SettingError::new(
            URL_KEY,
            "must be a postgresql:// URL (libpq style)",
        ));
    }
    let (url, ssl) = split_sslmode(postgres_url).map_err(scrub)?;
    let pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        scrub(SettingError::new(
            URL_KEY,
            format!("not a valid PostgreSQL URL: {e}"),
        ))
    })?;
    if pg.get_user().is_none() {
        return Err(SettingError::new(
            URL_KEY,
            "must name a user (postgresql://USER@host/db)",
        ));
    }
    if pg.get_hosts().is_empty() {
        return Err(SettingError::new(URL_KEY, "must name a host"));
    }
    if matches!(ssl, SslMode::VerifyCa | SslMode::VerifyFull) && ca_file.is_empty() {
        return Err(SettingError::new(
            "replication.ca_file",
            "required with sslmode=verify-ca or verify-full",
        ));
    }
    // The password as the driver took it (from the user info or a `password=`
    // parameter, decoded): what the replicator scrubs from every message.
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((pg, password, ssl))
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

    /// Every form libpq (and tokio-postgres) takes a password in is redacted: the user
    /// info, `password=` and `sslpassword=` parameters, given twice, with a
    /// percent-encoded name, with an `@` in the password, after other parameters.
    #[test]
    fn every_form_of_a_password_is_redacted_and_scrubbed() {
        for (url, shown) in [
            (
                "postgresql://fleet@hq/db?password=S3CRET",
                "postgresql://fleet@hq/db?password=***",
            ),
            (
                "postgres://fleet@hq/db?sslmode=require&password=S3CRET&connect_timeout=5",
                "postgres://fleet@hq/db?sslmode=require&password=***&connect_timeout=5",
            ),
            (
                "postgresql://fleet@hq/db?pass%77ord=S3CRET",
                "postgresql://fleet@hq/db?pass%77ord=***",
            ),
            (
                "postgresql://fleet@hq/db?sslpassword=S3CRET",
                "postgresql://fleet@hq/db?sslpassword=***",
            ),
            (
                "postgresql://fleet:S3CRET@hq/db?password=S3CRET&password=S3CRET2",
                "postgresql://fleet:***@hq/db?password=***&password=***",
            ),
            (
                "postgresql://fleet:S3C@RET@hq,hq2:5433/db",
                "postgresql://fleet:***@hq,hq2:5433/db",
            ),
            (
                "postgresql://fleet:S3C%52ET@hq/db",
                "postgresql://fleet:***@hq/db",
            ),
            ("host=hq password=S3CRET", HIDDEN),
        ] {
            let r = redact(url);
            assert_eq!(r, shown, "{url}");
            assert!(!r.contains("S3C"), "{url}");
            let msg = format!("error near {url}, decoded {}", decode_lossy(url));
            if url.contains("://") {
                let scrubbed = scrub(url, &msg);
                assert!(!scrubbed.contains("S3C"), "{scrubbed}");
            }
        }
        // The driver takes the query's password: parse hands it over for scrubbing.
        let (_, password, _) = parse("postgresql://fleet@hq/db?pass%77ord=S3CRET", "").unwrap();
        assert_eq!(password.as_deref(), Some("S3CRET"));
        let e = parse("postgresql://fleet@hq/db?password=S3CRET&nonsense=1", "")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn only_prefer_warns_about_plaintext() {
        assert!(sslmode_warning("postgresql://u@h/db").is_some());
        assert!(sslmode_warning("postgresql://u@h/db?sslmode=prefer").is_some());
        for quiet in ["disable", "require", "verify-ca", "verify-full"] {
            let url = format!("postgresql://u@h/db?sslmode={quiet}");
            assert_eq!(sslmode_warning(&url), None, "{quiet}");
        }
        assert_eq!(sslmode_warning(""), None);
    }
}

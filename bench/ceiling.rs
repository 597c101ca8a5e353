//! The benchmark "ceiling": the fastest server fleetgroups could possibly be on
//! this machine with the same HTTP stack. It is a minimal hyper 1.x HTTP/1.1
//! server (keep-alive, tokio multi-thread runtime) that answers every request,
//! whatever its method or path, with one constant JSON body of a chosen size —
//! no parsing, no authentication, no storage. `bench/run.sh` measures it next to
//! each scenario and reports the server's throughput as a ratio of it.
//!
//! Usage: `ceiling [--listen 127.0.0.1:0] [--body-bytes N]`. The first line on
//! stdout is `listening on <addr>` (flushed), so a script can read the port.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The JSON object that is padded; the pad goes between the last two quotes.
const PREFIX: &str = r#"{"success":true,"error":null,"pad":""#;
const SUFFIX: &str = r#""}"#;

/// Command-line options.
struct Args {
    listen: SocketAddr,
    body_bytes: usize,
}

fn usage() -> ! {
    eprintln!("usage: ceiling [--listen 127.0.0.1:0] [--body-bytes N]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        body_bytes: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => args.listen = value.parse().unwrap_or_else(|_| usage()),
            "--body-bytes" => args.body_bytes = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    args
}

/// A JSON object of exactly `n` bytes, or the smallest envelope when `n` is
/// too small to hold the padded form.
fn make_body(n: usize) -> Bytes {
    let fixed = PREFIX.len() + SUFFIX.len();
    if n < fixed {
        return Bytes::from_static(br#"{"success":true,"error":null}"#);
    }
    let mut s = String::with_capacity(n);
    s.push_str(PREFIX);
    s.extend(std::iter::repeat('x').take(n - fixed));
    s.push_str(SUFFIX);
    Bytes::from(s)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = parse_args();
    let body = make_body(args.body_bytes);
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    eprintln!("ceiling: body of {} bytes", body.len());

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                eprintln!("ceiling: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            // Errors here are client disconnects mid-request; nothing to do.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

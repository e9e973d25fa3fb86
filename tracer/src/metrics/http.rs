//! The daemon's HTTP endpoint, read-only: `GET /metrics`, `GET /healthz` (ready: alive,
//! probes attached, losses within bounds), `GET /livez` (alive: samples still coming). One
//! request per connection (`Connection: close`), a bounded request head and a timeout, a
//! bounded number of connections at once. Any method but GET and HEAD gets 405: there is no
//! write endpoint.
//!
//! Hand-written on tokio rather than on hyper: three read-only routes need a request line and
//! nothing else, and hyper with its service stack would be the largest dependency of the tool.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the endpoint serves: replaced at every sample.
#[derive(Default)]
pub struct Snapshot {
    pub metrics: String,
    pub healthy: bool,
    pub health: String,
    /// When the collector made it (None: no sample yet, the daemon is starting).
    pub made: Option<Instant>,
    /// `/healthz` fails when the snapshot is older than this: the collector is stuck (a
    /// wedged event loop serves stale metrics that look fine).
    pub stale_after: Duration,
}

impl Snapshot {
    /// Why the collector is not alive (`/livez`): no sample yet, or none for too long.
    fn stuck(&self) -> Option<String> {
        let Some(made) = self.made else {
            return Some("starting: no sample yet\n".into());
        };
        let age = made.elapsed();
        (age > self.stale_after).then(|| {
            format!(
                "no sample for {:.0} s (the bound is {:.0} s): the collector is stuck or \
                 starved of CPU\n",
                age.as_secs_f64(),
                self.stale_after.as_secs_f64(),
            )
        })
    }

    /// `/healthz`'s status and body: alive, every probe attached, losses within the bound.
    fn health(&self) -> (u16, String) {
        let problems = if self.healthy { "" } else { &self.health };
        match self.stuck() {
            Some(why) => (503, why + problems),
            None => (if self.healthy { 200 } else { 503 }, self.health.clone()),
        }
    }
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// Longest request head read; past it the request is refused (431).
const MAX_HEAD: usize = 8192;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client that does not send its request (or read the answer) within this is dropped.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on a thread of its own, so that scrapes are answered however busy the collector's
/// event loop is.
pub fn spawn(listener: std::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tracer-http".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, shared).await,
                    Err(e) => tracing::error!("metrics endpoint: {e}"),
                }
            })
        })?;
    Ok(())
}

/// Serves until the runtime stops.
pub async fn serve(listener: TcpListener, shared: Shared) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(TIMEOUT, handle(stream, &shared)).await {
                tracing::debug!("metrics endpoint: {peer}: timed out ({e})");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let reply = if complete {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        respond(&String::from_utf8_lossy(line), shared)
    } else {
        Reply::text(431, "request head too large\n")
    };
    let _ = stream.write_all(&reply.bytes()).await;
    let _ = stream.shutdown().await;
}

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub head_only: bool,
    pub allow: bool,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
            allow: false,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if self.allow { "Allow: GET, HEAD\r\n" } else { "" }
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request line (`GET /metrics HTTP/1.1`).
pub fn respond(request_line: &str, shared: &Shared) -> Reply {
    let mut parts = request_line.trim_end().split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Reply::text(400, "bad request line\n");
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Reply {
                allow: true,
                ..Reply::text(405, "read-only endpoint: only GET and HEAD\n")
            };
        }
    };
    let path = target.split('?').next().unwrap_or("");
    let snap = shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut r = match path {
        "/metrics" => Reply {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ..Reply::text(200, &snap.metrics)
        },
        "/healthz" => {
            let (status, body) = snap.health();
            Reply::text(status, &body)
        }
        "/livez" => match snap.stuck() {
            Some(why) => Reply::text(503, &why),
            None => Reply::text(200, "ok\n"),
        },
        "/" => Reply::text(200, "tracer daemon: /metrics, /healthz, /livez\n"),
        _ => Reply::text(404, "not found: /metrics, /healthz or /livez\n"),
    };
    r.head_only = head_only;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(healthy: bool) -> Shared {
        Arc::new(Mutex::new(Snapshot {
            metrics: "tracer_events_total 3\n# EOF\n".into(),
            healthy,
            health: if healthy {
                "ok\n"
            } else {
                "probe x is not attached: y\n"
            }
            .into(),
            made: Some(Instant::now()),
            stale_after: Duration::from_secs(10),
        }))
    }

    #[test]
    fn healthz_fails_before_the_first_sample_and_when_samples_stop() {
        let s: Shared = Default::default();
        let r = respond("GET /healthz HTTP/1.1", &s);
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "starting: no sample yet\n")
        );
        let s = shared(true);
        s.lock().unwrap().made = Instant::now().checked_sub(Duration::from_secs(30));
        let r = respond("GET /healthz HTTP/1.1", &s);
        assert_eq!(r.status, 503);
        assert!(
            r.body.starts_with("no sample for 30 s (the bound is 10 s)"),
            "{}",
            r.body
        );
        assert_eq!(respond("GET /livez HTTP/1.1", &s).status, 503);
        // Metrics are still served: the scraper sees them go flat, /healthz says why.
        assert_eq!(respond("GET /metrics HTTP/1.1", &s).status, 200);
        let s = shared(false);
        s.lock().unwrap().made = Instant::now().checked_sub(Duration::from_secs(30));
        let r = respond("GET /healthz HTTP/1.1", &s);
        assert!(r.body.contains("probe x is not attached"), "{}", r.body);
        // Alive though unhealthy: a restart would not attach the probe.
        s.lock().unwrap().made = Some(Instant::now());
        assert_eq!(respond("GET /healthz HTTP/1.1", &s).status, 503);
        assert_eq!(respond("GET /livez HTTP/1.1", &s).status, 200);
    }

    #[test]
    fn routes_and_methods() {
        let s = shared(true);
        let r = respond("GET /metrics HTTP/1.1\r", &s);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("tracer_events_total 3"));
        let text = String::from_utf8(r.bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        let h = respond("HEAD /metrics HTTP/1.1", &s);
        let text = String::from_utf8(h.bytes()).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "no body for HEAD: {text}");
        for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let r = respond(&format!("{m} /metrics HTTP/1.1"), &s);
            assert_eq!(r.status, 405, "{m}");
            assert!(
                String::from_utf8(r.bytes())
                    .unwrap()
                    .contains("Allow: GET, HEAD\r\n")
            );
        }
        assert_eq!(respond("GET /nope HTTP/1.1", &s).status, 404);
        assert_eq!(respond("garbage", &s).status, 400);
        assert_eq!(respond("GET /healthz HTTP/1.1", &s).status, 200);
        let bad = respond("GET /healthz HTTP/1.1", &shared(false));
        assert_eq!(bad.status, 503);
        assert!(bad.body.contains("probe x"));
    }
}

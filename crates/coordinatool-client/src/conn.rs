//! Connection to the server: connect with exponential backoff, `ehlo`, then request/reply.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use coordinatool_proto::{Decoder, EhloRequest, Reply, Request};

/// Largest reply the CLI accepts. The server is trusted, and a full status dump (`-vv`) of a
/// million queued requests is about 85 MB, beyond the protocol's default frame limit.
const MAX_REPLY_SIZE: usize = 1 << 30;

/// Reconnection delays: `initial`, doubled after each failure up to `max`, with up to
/// `jitter` (a fraction) removed at random so that many clients do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay (upstream retried every 5 s; we never wait longer than that by default).
    pub max: Duration,
    /// Fraction of the delay that may be removed at random (0.0..=1.0).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt + 1` (attempt 0 is the first failure), with `rand`
    /// in `0.0..1.0` choosing the jitter.
    pub fn delay(&self, attempt: u32, rand: f64) -> Duration {
        let base = self
            .initial
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        let cut = (self.jitter.clamp(0.0, 1.0) * rand.clamp(0.0, 1.0)).min(1.0);
        base.mul_f64(1.0 - cut)
    }
}

/// Why talking to the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The host name could not be resolved.
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Resolver error.
        #[source]
        source: io::Error,
    },
    /// Could not connect (and complete the ehlo) before the deadline.
    #[error("could not connect to {host}:{port} within {waited:.1?} (last error: {last})")]
    Timeout {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
    /// The server refused the `ehlo` (and retrying is not possible).
    #[error("server refused ehlo: {0}")]
    Ehlo(String),
    /// A socket error.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// No reply within the reply timeout.
    #[error("no reply from the server within {0:.1?}")]
    ReplyTimeout(Duration),
    /// The server sent something that is not a valid reply.
    #[error("bad reply from server: {0}")]
    Protocol(#[from] coordinatool_proto::DecodeError),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The handshake to send.
    pub ehlo: EhloRequest,
    /// Retry delays.
    pub backoff: Backoff,
    /// Give up after this long (`None`: retry forever, as upstream).
    pub timeout: Option<Duration>,
}

/// An established connection (ehlo done).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    out: Vec<u8>,
    reply_timeout: Option<Duration>,
}

/// A reply and the exact bytes it came in (to print what the server said, keys in its order).
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The decoded reply.
    pub reply: Reply,
    /// The JSON object as received.
    pub raw: Vec<u8>,
}

/// Connects with backoff until the ehlo is accepted or the timeout expires. `on_retry` is
/// called with each failure and the delay before the next attempt.
///
/// A name that does not resolve is fatal at once, except a temporary resolver failure.
pub fn connect(
    opts: &ConnectOptions,
    mut on_retry: impl FnMut(&ConnError, Duration),
) -> Result<Connection, ConnError> {
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        let err = match try_connect(opts) {
            Ok(c) => return Ok(c),
            Err(e @ ConnError::Resolve { .. }) if !is_temporary_resolve(&e) => return Err(e),
            Err(e) => e,
        };
        let mut delay = opts.backoff.delay(attempt, pseudo_random());
        attempt = attempt.saturating_add(1);
        if let Some(limit) = opts.timeout {
            let elapsed = start.elapsed();
            if elapsed >= limit {
                return Err(ConnError::Timeout {
                    host: opts.host.clone(),
                    port: opts.port,
                    waited: elapsed,
                    last: err.to_string(),
                });
            }
            delay = delay.min(limit - elapsed);
        }
        on_retry(&err, delay);
        std::thread::sleep(delay);
    }
}

fn is_temporary_resolve(e: &ConnError) -> bool {
    // std hides the getaddrinfo code; EAI_AGAIN's text is the only trace of it.
    matches!(e, ConnError::Resolve { source, .. } if source.to_string().contains("Temporary failure"))
}

/// A cheap jitter source (no rand dependency): the sub-second clock.
fn pseudo_random() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

fn try_connect(opts: &ConnectOptions) -> Result<Connection, ConnError> {
    let addrs: Vec<_> = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|source| ConnError::Resolve {
            host: opts.host.clone(),
            port: opts.port,
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let mut conn = Connection {
                    stream,
                    decoder: Decoder::with_max_message_size(MAX_REPLY_SIZE),
                    out: Vec::new(),
                    reply_timeout: None,
                };
                conn.send(&Request::Ehlo(opts.ehlo.clone()))?;
                let r = conn.read_reply()?;
                if !r.reply.is_ok() {
                    return Err(ConnError::Ehlo(format!(
                        "status {}{}",
                        r.reply.status(),
                        r.reply
                            .error_message()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )));
                }
                return Ok(conn);
            }
            Err(e) => last = e,
        }
    }
    Err(ConnError::Io(last))
}

impl Connection {
    /// Limits how long [`read_reply`](Self::read_reply) waits (`None`: forever).
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.reply_timeout = timeout;
        self.stream.set_read_timeout(timeout)
    }

    /// Sends one request.
    pub fn send(&mut self, req: &Request) -> Result<(), ConnError> {
        self.out.clear();
        req.encode(&mut self.out);
        tracing::debug!(command = %req.command(), bytes = self.out.len(), "sending request");
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// Reads the next reply (whatever its command).
    pub fn read_reply(&mut self) -> Result<RawReply, ConnError> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(coordinatool_proto::DecodeError::from)?
            {
                let raw = frame.to_vec();
                let reply = Reply::decode(&raw)?;
                tracing::debug!(command = %reply.command(), status = reply.status(), bytes = raw.len(), "got reply");
                return Ok(RawReply { reply, raw });
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConnError::ReplyTimeout(
                        self.reply_timeout.unwrap_or_default(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            self.decoder.feed(&buf[..n]);
        }
    }

    /// Sends `req` and reads one reply.
    pub fn call(&mut self, req: &Request) -> Result<RawReply, ConnError> {
        self.send(req)?;
        self.read_reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_jitter_only_shortens() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.5,
        };
        let d: Vec<u128> = (0..8).map(|a| b.delay(a, 0.0).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(5));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(50));
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(150));
    }

    #[test]
    fn a_status_reply_beyond_the_protocol_default_limit_is_read() {
        // A full dump of a large queue (verbose 6): bigger than the 64 MiB default frame.
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pad = "x".repeat(coordinatool_proto::DEFAULT_MAX_MESSAGE_SIZE + 1024);
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            // ehlo, then status: the requests are not read byte-exactly, only waited for.
            let mut line = Vec::new();
            r.read_until(b'}', &mut line).unwrap();
            w.write_all(br#"{"command":"ehlo"}"#).unwrap();
            line.clear();
            r.read_until(b'}', &mut line).unwrap();
            write!(w, r#"{{"command":"status","error":"{pad}","status":5}}"#).unwrap();
        });
        let opts = ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            ehlo: EhloRequest::new(None),
            backoff: Backoff::default(),
            timeout: Some(Duration::from_secs(10)),
        };
        let mut c = connect(&opts, |_, _| {}).unwrap();
        let r = c
            .call(&Request::Status(coordinatool_proto::StatusRequest {
                verbose: 6,
            }))
            .unwrap();
        assert!(r.raw.len() > coordinatool_proto::DEFAULT_MAX_MESSAGE_SIZE);
        server.join().unwrap();
    }

    #[test]
    fn timeout_stops_retrying_on_refused_port() {
        // A port nobody listens on: bind then drop to get one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            ehlo: EhloRequest::new(None),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
                jitter: 0.0,
            },
            timeout: Some(Duration::from_millis(20)),
        };
        let mut retries = 0;
        let e = connect(&opts, |_, _| retries += 1).unwrap_err();
        assert!(matches!(e, ConnError::Timeout { .. }), "{e}");
        assert!(retries >= 1);
    }

    #[test]
    fn unresolvable_host_is_not_retried_unless_temporary() {
        let opts = ConnectOptions {
            host: "no-such-host.invalid".into(),
            port: 1,
            ehlo: EhloRequest::new(None),
            backoff: Backoff::default(),
            // Without DNS the resolver may say "temporary failure", which is retried.
            timeout: Some(Duration::from_millis(300)),
        };
        match connect(&opts, |_, _| {}) {
            Err(e @ ConnError::Resolve { .. }) => assert!(!is_temporary_resolve(&e)),
            Err(ConnError::Timeout { last, .. }) => {
                assert!(last.contains("Temporary failure"), "{last}")
            }
            other => panic!("{other:?}"),
        }
    }
}

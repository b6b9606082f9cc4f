//! `coordinatool-client bench`: a load generator driving a running server over real TCP.
//!
//! Many simulated movers share one thread (`poll(2)` over non-blocking sockets), so the
//! generator costs little next to the server it measures. Each mover says `ehlo`, sends a
//! `recv`, and answers every item of each `recv` reply with `done`; the `done`s and the next
//! `recv` leave in one write, as the protocol allows (a `recv` may be pending while `done`s
//! are answered). Messages are prebuilt where they can be, and only `recv` replies (and
//! replies that are not a plain successful `done`) are fully decoded.
//!
//! One round trip is one item received and its `done` acknowledged. Optionally, `queue`
//! first registers a known number of requests, and the run stops once every one of them
//! is done.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    Command, Decoder, DoneRequest, EhloRequest, QueueRequest, RecvRequest, Reply, Request, WireHai,
};

/// Items per `queue` message unless told otherwise.
pub const DEFAULT_QUEUE_CHUNK: usize = 10_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Simulated movers (one connection each).
    pub movers: u32,
    /// Requests registered with `queue` before the movers start (0: none; the movers then
    /// take whatever the server has).
    pub queue: u64,
    /// Items per `queue` message.
    pub queue_chunk: usize,
    /// `max_archive`, `max_restore` and `max_remove` of every `recv` (`None`: unlimited).
    pub max_items: Option<u32>,
    /// `max_bytes` of every `recv`.
    pub max_bytes: i32,
    /// Stop after this many round trips (default with `queue`: the queued count).
    pub count: Option<u64>,
    /// Stop after this long (default without `queue` nor `count`: 10 s).
    pub duration: Option<Duration>,
    /// Fail when no reply at all arrives for this long while work is expected.
    pub stall: Duration,
    /// Archive id of the queued requests and of the movers' `ehlo`.
    pub archive_id: u32,
    /// Mover ids are `<prefix>-<pid>-<n>`; `None`: anonymous movers.
    pub client_id_prefix: Option<String>,
    /// Cookie of the first queued request (the others follow); the data fids are derived
    /// from the cookies, so runs with different first cookies never collide.
    pub first_cookie: u64,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

impl BenchOptions {
    /// Defaults for `host:port`: 8 movers, 1 item per `recv`, nothing queued, 10 s.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BenchOptions {
            host: host.into(),
            port,
            movers: 8,
            queue: 0,
            queue_chunk: DEFAULT_QUEUE_CHUNK,
            max_items: Some(1),
            max_bytes: coordinatool_proto::DEFAULT_MAX_BYTES,
            count: None,
            duration: None,
            stall: Duration::from_secs(30),
            archive_id: 1,
            client_id_prefix: Some("bench".into()),
            first_cookie: default_first_cookie(),
            progress: false,
        }
    }
}

/// A first cookie unlikely to collide with an earlier run: the time in seconds, shifted
/// past the room of 16M requests per run.
pub fn default_first_cookie() -> u64 {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    (s & 0xff_ffff_ffff) << 24
}

/// The data fid of the request with `cookie` (distinct for distinct cookies).
pub fn fid_for_cookie(cookie: u64) -> LuFid {
    // Sequences from 0x200000400 up are normal; the oid takes the low 20 bits.
    LuFid::new(
        0x2_0000_0400 + (cookie >> 20),
        u32::try_from(cookie & 0xf_ffff).unwrap_or(0) + 1,
        0,
    )
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A socket error after connecting.
    #[error("connection {conn}: {source}")]
    Io {
        /// Which connection (`queue` or `mover <n>`).
        conn: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server closed a connection.
    #[error("connection {0}: closed by the server")]
    Closed(String),
    /// A reply that does not decode or is not the expected one.
    #[error("connection {conn}: {what}")]
    Protocol {
        /// Which connection.
        conn: String,
        /// What was wrong.
        what: String,
    },
    /// The server answered with an error.
    #[error("connection {conn}: server error on {command}: status {status} ({message})")]
    Server {
        /// Which connection.
        conn: String,
        /// The command answered.
        command: Command,
        /// The errno.
        status: i32,
        /// The server's message.
        message: String,
    },
    /// Nothing arrived for too long while work was expected.
    #[error("no reply for {0:?} ({1} round trips done): the server stalled")]
    Stalled(Duration, u64),
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: u32,
    /// 90th percentile.
    pub p90: u32,
    /// 99th percentile.
    pub p99: u32,
    /// 99.9th percentile.
    pub p999: u32,
    /// Largest sample.
    pub max: u32,
}

impl Percentiles {
    /// Percentiles of `samples` (reordered).
    pub fn of(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            count: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p999": self.p999, "max": self.max,
        })
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Movers.
    pub movers: u32,
    /// `max_*` of each `recv` (`None`: unlimited).
    pub max_items: Option<u32>,
    /// Requests queued before the run.
    pub queued: u64,
    /// Seconds the queueing took.
    pub queue_seconds: f64,
    /// Items received and acknowledged (`done` answered with status 0).
    pub round_trips: u64,
    /// `recv` replies received.
    pub recvs: u64,
    /// Seconds from the first `recv` to the last acknowledgement.
    pub seconds: f64,
    /// `done`s sent and acknowledged with an error status (counted in `round_trips` too:
    /// an error is still an answer; the server logs why).
    pub done_errors: u64,
    /// From a `recv` sent to its reply (includes waiting for work).
    pub recv_latency_us: Percentiles,
    /// From a burst of `done`s sent to the acknowledgement of its last one.
    pub done_latency_us: Percentiles,
}

impl BenchReport {
    /// Round trips per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.round_trips as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The one-line JSON summary.
    pub fn json(&self) -> String {
        serde_json::json!({
            "movers": self.movers,
            "max_items": self.max_items.map_or(-1, i64::from),
            "queued": self.queued,
            "queue_seconds": self.queue_seconds,
            "round_trips": self.round_trips,
            "recvs": self.recvs,
            "done_errors": self.done_errors,
            "seconds": self.seconds,
            "round_trips_per_s": self.rate().round(),
            "recv_latency_us": self.recv_latency_us.json(),
            "done_latency_us": self.done_latency_us.json(),
        })
        .to_string()
    }

    /// A few lines for people.
    pub fn human(&self) -> String {
        let p = |p: &Percentiles| {
            format!(
                "p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        let mut s = String::new();
        if self.queued > 0 {
            s.push_str(&format!(
                "queued {} requests in {:.2} s ({:.0}/s)\n",
                self.queued,
                self.queue_seconds,
                self.queued as f64 / self.queue_seconds.max(1e-9)
            ));
        }
        s.push_str(&format!(
            "{} movers, {} items per recv: {} round trips ({} recv replies) in {:.2} s = {:.0} round trips/s\n",
            self.movers,
            self.max_items.map_or("unlimited".into(), |n| n.to_string()),
            self.round_trips,
            self.recvs,
            self.seconds,
            self.rate()
        ));
        if self.done_errors > 0 {
            s.push_str(&format!(
                "{} done replies carried an error\n",
                self.done_errors
            ));
        }
        s.push_str(&format!("recv latency: {}\n", p(&self.recv_latency_us)));
        s.push_str(&format!("done latency: {}\n", p(&self.done_latency_us)));
        s
    }
}

fn connect(opts: &BenchOptions) -> Result<TcpStream, BenchError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let fail = |source| BenchError::Connect {
        addr: addr.clone(),
        source,
    };
    let mut last = io::Error::from(ErrorKind::AddrNotAvailable);
    for a in (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(fail)?
    {
        match TcpStream::connect(a) {
            Ok(s) => {
                s.set_nodelay(true).map_err(fail)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// A blocking request/reply on `s` (set-up only: `ehlo` and `queue`).
fn call(
    s: &mut TcpStream,
    dec: &mut Decoder,
    conn: &str,
    req: &[u8],
    stall: Duration,
) -> Result<Reply, BenchError> {
    let io = |source| BenchError::Io {
        conn: conn.to_owned(),
        source,
    };
    s.write_all(req).map_err(io)?;
    s.set_read_timeout(Some(stall)).map_err(io)?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match dec.next_message::<Reply>() {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(e) => {
                return Err(BenchError::Protocol {
                    conn: conn.to_owned(),
                    what: format!("bad reply: {e}"),
                });
            }
        }
        let n = match s.read(&mut buf) {
            Ok(0) => return Err(BenchError::Closed(conn.to_owned())),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(BenchError::Stalled(stall, 0));
            }
            Err(e) => return Err(io(e)),
        };
        dec.feed(&buf[..n]);
    }
}

fn check_ok(r: &Reply, conn: &str) -> Result<(), BenchError> {
    if r.is_ok() {
        Ok(())
    } else {
        Err(BenchError::Server {
            conn: conn.to_owned(),
            command: r.command(),
            status: r.status(),
            message: r.error_message().unwrap_or("").to_owned(),
        })
    }
}

/// Registers `opts.queue` archive requests; returns the seconds it took.
fn queue_requests(opts: &BenchOptions) -> Result<f64, BenchError> {
    let start = Instant::now();
    let mut s = connect(opts)?;
    let mut dec = Decoder::new();
    let conn = "queue";
    let mut out = Vec::new();
    let mut sent = 0u64;
    while sent < opts.queue {
        let n = (opts.queue - sent).min(opts.queue_chunk as u64);
        let items = (sent..sent + n)
            .map(|i| {
                let cookie = opts.first_cookie + i;
                let mut h = WireHai::new(HsmAction::Archive, fid_for_cookie(cookie), cookie);
                h.archive_id = opts.archive_id;
                h
            })
            .collect();
        out.clear();
        Request::Queue(QueueRequest {
            items,
            fsname: None,
        })
        .encode(&mut out);
        let r = call(&mut s, &mut dec, conn, &out, opts.stall)?;
        check_ok(&r, conn)?;
        match r {
            Reply::Queue(q) if q.enqueued == n => {}
            Reply::Queue(q) => {
                return Err(BenchError::Protocol {
                    conn: conn.into(),
                    what: format!(
                        "{n} items sent, {} enqueued and {} skipped (left over from an earlier run? try another --first-cookie)",
                        q.enqueued, q.skipped
                    ),
                });
            }
            other => {
                return Err(BenchError::Protocol {
                    conn: conn.into(),
                    what: format!("expected a queue reply, got {}", other.command()),
                });
            }
        }
        sent += n;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One simulated mover.
struct Mover {
    name: String,
    stream: TcpStream,
    dec: Decoder,
    /// Bytes not yet written, from `off`.
    out: Vec<u8>,
    off: usize,
    /// `done`s sent and not yet acknowledged.
    outstanding: u32,
    recv_sent: Option<Instant>,
    done_sent: Instant,
}

impl Mover {
    fn io(&self, source: io::Error) -> BenchError {
        BenchError::Io {
            conn: self.name.clone(),
            source,
        }
    }

    /// Writes what it can; true when everything is written.
    fn flush(&mut self) -> Result<bool, BenchError> {
        while self.off < self.out.len() {
            match self.stream.write(&self.out[self.off..]) {
                Ok(0) => return Err(BenchError::Closed(self.name.clone())),
                Ok(n) => self.off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        self.out.clear();
        self.off = 0;
        Ok(true)
    }
}

/// Counters and samples of the run.
#[derive(Default)]
struct Tally {
    round_trips: u64,
    recvs: u64,
    done_errors: u64,
    recv_lat: Vec<u32>,
    done_lat: Vec<u32>,
    last_reply: Option<Instant>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Handles every complete reply buffered by mover `m`.
fn on_replies(
    m: &mut Mover,
    t: &mut Tally,
    recv_msg: &[u8],
    done_ok: &[u8],
    now: Instant,
) -> Result<(), BenchError> {
    loop {
        let frame = match m.dec.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(BenchError::Protocol {
                    conn: m.name.clone(),
                    what: format!("bad reply: {e}"),
                });
            }
        };
        // The common case, a successful `done`, needs no parsing.
        let reply = if frame == done_ok {
            None
        } else {
            Some(Reply::decode(frame).map_err(|e| BenchError::Protocol {
                conn: m.name.clone(),
                what: format!("bad reply: {e}"),
            })?)
        };
        match reply {
            None | Some(Reply::Done(_)) => {
                if let Some(Reply::Done(d)) = &reply
                    && d.status != 0
                {
                    t.done_errors += 1;
                }
                if m.outstanding == 0 {
                    return Err(BenchError::Protocol {
                        conn: m.name.clone(),
                        what: "a done reply with no done pending".into(),
                    });
                }
                m.outstanding -= 1;
                t.round_trips += 1;
                if m.outstanding == 0 {
                    t.done_lat.push(micros(now - m.done_sent));
                }
            }
            Some(Reply::Recv(r)) => {
                if r.status != 0 {
                    return Err(BenchError::Server {
                        conn: m.name.clone(),
                        command: Command::Recv,
                        status: r.status,
                        message: r.error.unwrap_or_default(),
                    });
                }
                let Some(sent) = m.recv_sent.take() else {
                    return Err(BenchError::Protocol {
                        conn: m.name.clone(),
                        what: "a recv reply with no recv pending".into(),
                    });
                };
                t.recvs += 1;
                t.recv_lat.push(micros(now - sent));
                let items = r.hal.map(|h| h.list).unwrap_or_default();
                if !items.is_empty() {
                    if m.outstanding == 0 {
                        m.done_sent = now;
                    }
                    m.outstanding += items.len() as u32;
                }
                for h in &items {
                    Request::Done(DoneRequest {
                        cookie: h.cookie,
                        dfid: h.dfid,
                        status: 0,
                    })
                    .encode(&mut m.out);
                }
                m.out.extend_from_slice(recv_msg);
                m.recv_sent = Some(now);
            }
            Some(other) => {
                check_ok(&other, &m.name)?;
                return Err(BenchError::Protocol {
                    conn: m.name.clone(),
                    what: format!("unexpected {} reply", other.command()),
                });
            }
        }
    }
}

/// Runs the benchmark: queue (if asked), connect and greet the movers, then drive them
/// until the count is reached or the duration is over.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.movers == 0 {
        return Err(BenchError::Usage("--movers must be at least 1".into()));
    }
    if opts.queue_chunk == 0 {
        return Err(BenchError::Usage("--queue-chunk must be at least 1".into()));
    }
    let queue_seconds = if opts.queue > 0 {
        queue_requests(opts)?
    } else {
        0.0
    };
    let target = opts
        .count
        .or((opts.queue > 0).then_some(opts.queue))
        .unwrap_or(u64::MAX);
    let duration = opts
        .duration
        .or_else(|| (target == u64::MAX).then_some(Duration::from_secs(10)));

    let pid = std::process::id();
    let mut movers = Vec::with_capacity(opts.movers as usize);
    let mut ehlo_msg = Vec::new();
    for i in 0..opts.movers {
        let name = format!("mover {i}");
        let mut stream = connect(opts)?;
        let mut dec = Decoder::new();
        let mut ehlo = EhloRequest::new(
            opts.client_id_prefix
                .as_ref()
                .map(|p| format!("{p}-{pid}-{i}")),
        );
        ehlo.archive_ids = vec![opts.archive_id];
        ehlo_msg.clear();
        Request::Ehlo(ehlo).encode(&mut ehlo_msg);
        let r = call(&mut stream, &mut dec, &name, &ehlo_msg, opts.stall)?;
        check_ok(&r, &name)?;
        stream
            .set_nonblocking(true)
            .map_err(|source| BenchError::Io {
                conn: name.clone(),
                source,
            })?;
        movers.push(Mover {
            name,
            stream,
            dec,
            out: Vec::with_capacity(4096),
            off: 0,
            outstanding: 0,
            recv_sent: None,
            done_sent: Instant::now(),
        });
    }

    let mut recv_msg = Vec::new();
    Request::Recv(RecvRequest {
        max_archive: opts.max_items,
        max_restore: opts.max_items,
        max_remove: opts.max_items,
        max_bytes: opts.max_bytes,
    })
    .encode(&mut recv_msg);
    let done_ok = coordinatool_proto::to_vec(&Reply::ok(Command::Done));

    let mut t = Tally::default();
    let start = Instant::now();
    for m in &mut movers {
        m.out.extend_from_slice(&recv_msg);
        m.recv_sent = Some(start);
        m.flush()?;
    }
    let mut fds: Vec<libc::pollfd> = movers
        .iter()
        .map(|m| libc::pollfd {
            fd: m.stream.as_raw_fd(),
            events: 0,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_progress = (start, 0u64);
    let mut end = start;
    t.last_reply = Some(start);
    while t.round_trips < target {
        let now = Instant::now();
        if let Some(d) = duration
            && now - start >= d
        {
            break;
        }
        if opts.progress && now - last_progress.0 >= Duration::from_secs(1) {
            let dt = (now - last_progress.0).as_secs_f64();
            eprintln!(
                "{:7.1} s: {} round trips, {:.0}/s",
                (now - start).as_secs_f64(),
                t.round_trips,
                (t.round_trips - last_progress.1) as f64 / dt
            );
            last_progress = (now, t.round_trips);
        }
        // Without a duration, a silent server is a failure (something was lost).
        if duration.is_none()
            && let Some(l) = t.last_reply
            && now - l >= opts.stall
        {
            return Err(BenchError::Stalled(opts.stall, t.round_trips));
        }
        for (f, m) in fds.iter_mut().zip(&movers) {
            f.events = libc::POLLIN
                | if m.off < m.out.len() {
                    libc::POLLOUT
                } else {
                    0
                };
            f.revents = 0;
        }
        let wait_ms = 100;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(BenchError::Io {
                conn: "poll".into(),
                source: e,
            });
        }
        if rc == 0 {
            continue;
        }
        let now = Instant::now();
        for (f, m) in fds.iter().zip(movers.iter_mut()) {
            if f.revents == 0 {
                continue;
            }
            if f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                let n = match m.stream.read(&mut buf) {
                    Ok(0) => return Err(BenchError::Closed(m.name.clone())),
                    Ok(n) => n,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                    {
                        0
                    }
                    Err(e) => return Err(m.io(e)),
                };
                if n > 0 {
                    m.dec.feed(&buf[..n]);
                    on_replies(m, &mut t, &recv_msg, &done_ok, now)?;
                    t.last_reply = Some(now);
                    end = now;
                }
            }
            if m.off < m.out.len() {
                m.flush()?;
            }
        }
    }
    if t.round_trips >= target || duration.is_none() {
        // Stopped on the count: the rate ends at the last acknowledgement.
    } else {
        end = Instant::now();
    }
    Ok(BenchReport {
        movers: opts.movers,
        max_items: opts.max_items,
        queued: opts.queue,
        queue_seconds,
        round_trips: t.round_trips,
        recvs: t.recvs,
        seconds: (end - start).as_secs_f64(),
        done_errors: t.done_errors,
        recv_latency_us: Percentiles::of(&mut t.recv_lat),
        done_latency_us: Percentiles::of(&mut t.done_lat),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 501);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn fids_of_distinct_cookies_differ() {
        let base = default_first_cookie();
        let mut seen = std::collections::HashSet::new();
        for c in [base, base + 1, base + 0xf_ffff, base + 0x10_0000, 1, 2] {
            assert!(seen.insert(fid_for_cookie(c)), "{c:#x}");
        }
        assert_ne!(fid_for_cookie(base), LuFid::default());
    }

    #[test]
    fn report_json_is_one_parseable_line() {
        let r = BenchReport {
            movers: 4,
            max_items: None,
            queued: 10,
            queue_seconds: 0.5,
            round_trips: 10,
            recvs: 3,
            seconds: 2.0,
            done_errors: 0,
            recv_latency_us: Percentiles::default(),
            done_latency_us: Percentiles::default(),
        };
        let j = r.json();
        assert!(!j.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["round_trips_per_s"], 5.0);
        assert_eq!(v["max_items"], -1);
        assert_eq!(v["movers"], 4);
    }

    #[test]
    fn zero_movers_is_a_usage_error() {
        let mut o = BenchOptions::new("127.0.0.1", 1);
        o.movers = 0;
        assert!(matches!(run(&o), Err(BenchError::Usage(_))));
    }
}

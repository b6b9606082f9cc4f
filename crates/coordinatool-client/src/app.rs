//! Running the command line: from parsed arguments to requests, output and exit status.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use coordinatool_proto::{
    DoneRequest, EhloRequest, LockRequest, LockState, QueueRequest, RecvRequest, Reply, Request,
    StatusRequest,
};

use crate::cli::{Cli, Cmd};
use crate::config::{ClientConfig, Verbosity};
use crate::conn::{self, Backoff, ConnError, ConnectOptions, Connection, RawReply};
use crate::queue::{self, QueueTally};
use crate::render;

/// Exit statuses scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Bad usage, bad configuration or bad input; nothing was sent.
    pub const USAGE: u8 = 1;
    /// The server answered with an error (or a queue reply did not account for every item).
    pub const SERVER: u8 = 2;
    /// Could not connect before the timeout, or the connection failed or carried garbage.
    pub const CONNECTION: u8 = 3;
}

/// How replies are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// No subcommand: upstream's strings (`Got status reply:` + indented JSON, `ok`, ...).
    Upstream,
    /// A subcommand: tables and sentences.
    Human,
    /// `--json`: one compact JSON object per line.
    Json,
}

#[derive(Debug)]
enum Mode {
    Status {
        verbose: i32,
    },
    Queue {
        file: Option<std::path::PathBuf>,
        fsname: Option<String>,
        chunk: usize,
        dry_run: bool,
    },
    Lock(LockState),
    Recv {
        iters: Option<u32>,
        drain: bool,
    },
    Watch {
        interval: f64,
        count: Option<u64>,
        dump: bool,
    },
    Bench(Box<crate::cli::BenchArgs>),
}

/// A failure with its exit status; the message is printed on stderr.
struct Fail(u8, String);

impl From<ConnError> for Fail {
    fn from(e: ConnError) -> Self {
        Fail(exit::CONNECTION, e.to_string())
    }
}

/// Runs the client with `args` (program name first) and the environment `env`; returns
/// the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>, env: &dyn Fn(&str) -> Option<String>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    match run_cli(cli, env) {
        Ok(()) => exit::OK,
        Err(Fail(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("coordinatool-client: {msg}");
            }
            code
        }
    }
}

/// `cancel FILES`: one `llapi_hsm_request(HUA_CANCEL)` for every file, as `lfs hsm_cancel`.
fn cancel(files: &[std::path::PathBuf]) -> Result<(), Fail> {
    use coordinatool_lustre::hal::HsmExtent;
    use coordinatool_lustre::{HsmUserAction, Lustreapi, action::HsmRequestFlags};

    let api = Lustreapi::global().map_err(|e| Fail(exit::USAGE, e.to_string()))?;
    let mut items = Vec::with_capacity(files.len());
    for f in files {
        let fid = api
            .path2fid(f)
            .map_err(|e| Fail(exit::USAGE, format!("{}: {e}", f.display())))?;
        items.push((fid, HsmExtent::WHOLE_FILE));
    }
    api.hsm_request(
        &files[0],
        HsmUserAction::Cancel,
        0,
        HsmRequestFlags::default(),
        &items,
        &[],
    )
    .map_err(|e| Fail(exit::SERVER, format!("cancel refused by Lustre: {e}")))
}

fn run_cli(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Fail> {
    let out = std::io::stdout();
    if cli.upstream.version {
        println!("Coordinatool client version {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    match &cli.command {
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "coordinatool-client",
                &mut out.lock(),
            );
            return Ok(());
        }
        Some(Cmd::Cancel { files }) => return cancel(files),
        Some(Cmd::Man) => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut out.lock())
                .map_err(|e| Fail(exit::CONNECTION, format!("writing the man page: {e}")));
        }
        Some(_) if cli.upstream.any_mode() => {
            return Err(Fail(
                exit::USAGE,
                "upstream mode flags (-Q, --lock, -R, -i, ...) cannot be combined with a subcommand".into(),
            ));
        }
        _ => {}
    }

    let (cfg, warnings) = ClientConfig::load(cli.common.config.as_deref(), env)
        .map_err(|e| Fail(exit::USAGE, e.to_string()))?;
    let level = cfg.verbose.level() + i32::from(cli.common.verbose) - i32::from(cli.common.quiet);
    init_logging(Verbosity::from_level(level));
    for w in &warnings {
        tracing::warn!("{w}");
    }

    let style = if cli.common.json {
        Style::Json
    } else if cli.command.is_some() {
        Style::Human
    } else {
        Style::Upstream
    };
    let up = &cli.upstream;
    let mode = match &cli.command {
        None if up.queue.is_some() => Mode::Queue {
            file: up.queue.clone().flatten(),
            fsname: up.fsname.clone(),
            chunk: up.chunk_size,
            dry_run: false,
        },
        None if up.lock => Mode::Lock(LockState::Locked),
        None if up.unlock => Mode::Lock(LockState::Unlocked),
        None if up.lock_quit => Mode::Lock(LockState::LockAndQuit),
        None if up.recv || up.drain => Mode::Recv {
            iters: up.iters,
            drain: up.drain,
        },
        None => Mode::Status {
            verbose: level.clamp(0, 7),
        },
        Some(Cmd::Status { dump }) => Mode::Status {
            verbose: if *dump { 6 } else { level.clamp(0, 7) },
        },
        Some(Cmd::Queue {
            file,
            fsname,
            chunk_size,
            dry_run,
        }) => Mode::Queue {
            file: file.clone().filter(|f| f.as_os_str() != "-"),
            fsname: fsname.clone(),
            chunk: *chunk_size,
            dry_run: *dry_run,
        },
        Some(Cmd::Lock) => Mode::Lock(LockState::Locked),
        Some(Cmd::Unlock) => Mode::Lock(LockState::Unlocked),
        Some(Cmd::LockQuit) => Mode::Lock(LockState::LockAndQuit),
        Some(Cmd::Recv { iters }) => Mode::Recv {
            iters: *iters,
            drain: false,
        },
        Some(Cmd::Drain { iters }) => Mode::Recv {
            iters: *iters,
            drain: true,
        },
        Some(Cmd::Watch {
            interval,
            count,
            dump,
        }) => Mode::Watch {
            interval: *interval,
            count: *count,
            dump: *dump,
        },
        Some(Cmd::Bench(b)) => Mode::Bench(Box::new(b.clone())),
        Some(Cmd::Completions { .. } | Cmd::Man | Cmd::Cancel { .. }) => {
            unreachable!("handled above")
        }
    };

    // Upstream clears the configured client id: the CLI is anonymous unless -I is given.
    let mut ehlo = EhloRequest::new(cli.common.client_id.clone());
    ehlo.archive_ids = cli.common.archive.clone();
    if ehlo.archive_ids.is_empty() && matches!(mode, Mode::Recv { .. }) {
        ehlo.archive_ids = cfg.archive_ids.clone();
    }
    let timeout = cli.common.timeout.map(Duration::from_secs_f64);
    let opts = ConnectOptions {
        host: cli.common.host.clone().unwrap_or_else(|| cfg.host.clone()),
        port: cli.common.port.unwrap_or(cfg.port),
        ehlo,
        backoff: Backoff::default(),
        timeout,
    };
    let ctx = Ctx {
        opts,
        style,
        cfg,
        reply_timeout: timeout,
    };

    match mode {
        Mode::Status { verbose } => status(&ctx, verbose),
        Mode::Queue {
            file,
            fsname,
            chunk,
            dry_run,
        } => queue_mode(&ctx, file.as_deref(), fsname, chunk, dry_run),
        Mode::Lock(state) => lock(&ctx, state),
        Mode::Recv { iters, drain } => recv(&ctx, iters, drain),
        Mode::Watch {
            interval,
            count,
            dump,
        } => watch(&ctx, interval, count, dump),
        Mode::Bench(b) => bench(&ctx, &cli.common, &b),
    }
}

/// `bench`: the load generator ([`crate::bench`]).
fn bench(
    ctx: &Ctx,
    common: &crate::cli::CommonArgs,
    b: &crate::cli::BenchArgs,
) -> Result<(), Fail> {
    use crate::bench::{BenchError, BenchOptions};
    let mut o = BenchOptions::new(ctx.opts.host.clone(), ctx.opts.port);
    o.movers = b.movers;
    o.queue = b.queue;
    o.queue_chunk = b.queue_chunk;
    o.max_items = u32::try_from(b.max_items).ok();
    if let Some(n) = b.max_bytes {
        o.max_bytes = n;
    }
    o.count = b.count;
    o.duration = b.duration.map(Duration::from_secs_f64);
    o.stall = Duration::from_secs_f64(b.stall);
    o.archive_id = common.archive.first().copied().unwrap_or(1);
    o.client_id_prefix = if b.anonymous {
        None
    } else {
        Some(common.client_id.clone().unwrap_or_else(|| "bench".into()))
    };
    if let Some(c) = b.first_cookie {
        o.first_cookie = c;
    }
    o.progress = b.progress;
    let report = crate::bench::run(&o).map_err(|e| match e {
        BenchError::Usage(m) => Fail(exit::USAGE, m),
        BenchError::Server { .. } => Fail(exit::SERVER, e.to_string()),
        e => Fail(exit::CONNECTION, e.to_string()),
    })?;
    let mut out = std::io::stdout().lock();
    if ctx.style != Style::Json {
        let _ = out.write_all(report.human().as_bytes());
    }
    let _ = writeln!(out, "{}", report.json());
    let _ = out.flush();
    Ok(())
}

fn init_logging(v: Verbosity) {
    use tracing_subscriber::filter::LevelFilter;
    let filter = match v {
        Verbosity::Off => LevelFilter::OFF,
        Verbosity::Fatal | Verbosity::Error => LevelFilter::ERROR,
        Verbosity::Warn => LevelFilter::WARN,
        Verbosity::Normal => LevelFilter::INFO,
        Verbosity::Info => LevelFilter::DEBUG,
        Verbosity::Debug => LevelFilter::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(filter)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

struct Ctx {
    opts: ConnectOptions,
    style: Style,
    cfg: ClientConfig,
    reply_timeout: Option<Duration>,
}

impl Ctx {
    fn connect(&self, reply_timeout: bool) -> Result<Connection, Fail> {
        let mut c = conn::connect(&self.opts, |e, delay| {
            tracing::info!(
                "cannot reach {}:{}: {e}; retrying in {:.1}s",
                self.opts.host,
                self.opts.port,
                delay.as_secs_f64()
            );
        })?;
        if reply_timeout {
            c.set_reply_timeout(self.reply_timeout)
                .map_err(ConnError::from)?;
        }
        Ok(c)
    }

    /// Prints a reply in the chosen style (`human` is used for [`Style::Human`]).
    fn print_reply(&self, what: &str, r: &RawReply, human: impl FnOnce() -> String) {
        let text = match self.style {
            Style::Upstream => format!("Got {what} reply:\n{}\n", render::indent_json(&r.raw)),
            Style::Json => format!("{}\n", String::from_utf8_lossy(&r.raw)),
            Style::Human => human(),
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

fn server_error(r: &Reply) -> Fail {
    Fail(
        exit::SERVER,
        format!(
            "server error on {}: status {}{}",
            r.command(),
            r.status(),
            r.error_message()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
    )
}

fn status(ctx: &Ctx, verbose: i32) -> Result<(), Fail> {
    let mut c = ctx.connect(true)?;
    let r = c.call(&Request::Status(StatusRequest { verbose }))?;
    let Reply::Status(s) = &r.reply else {
        return Err(Fail(
            exit::CONNECTION,
            format!("unexpected {} reply to status", r.reply.command()),
        ));
    };
    if s.status != 0 {
        ctx.print_reply("status", &r, String::new);
        return Err(server_error(&r.reply));
    }
    ctx.print_reply("status", &r, || render::status_tables(s));
    Ok(())
}

fn lock(ctx: &Ctx, state: LockState) -> Result<(), Fail> {
    let mut c = ctx.connect(true)?;
    let r = c.call(&Request::Lock(LockRequest::new(state)))?;
    let err = r.reply.error_message().unwrap_or("").to_owned();
    let ok = r.reply.is_ok() && r.reply.command() == coordinatool_proto::Command::Lock;
    match ctx.style {
        Style::Upstream if ok => println!("ok"),
        Style::Upstream => println!(
            "error locking: {}",
            if err.is_empty() {
                format!("status {}", r.reply.status())
            } else {
                err
            }
        ),
        Style::Json => println!("{}", String::from_utf8_lossy(&r.raw)),
        Style::Human if ok => println!(
            "{}",
            match state {
                LockState::Unlocked => "dispatch resumed",
                LockState::Locked => "dispatch paused",
                LockState::LockAndQuit =>
                    "dispatch paused; the server stops once nothing is running",
            }
        ),
        Style::Human => {}
    }
    if ok {
        Ok(())
    } else {
        Err(server_error(&r.reply))
    }
}

fn read_input(file: Option<&Path>) -> Result<String, Fail> {
    let mut text = String::new();
    let res = match file {
        Some(p) => std::fs::File::open(p).and_then(|mut f| f.read_to_string(&mut text)),
        None => std::io::stdin().read_to_string(&mut text),
    };
    let name = file.map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    res.map_err(|e| Fail(exit::USAGE, format!("cannot read {name}: {e}")))?;
    Ok(text)
}

fn lines_list(lines: &[usize]) -> String {
    let mut s: Vec<String> = lines.iter().take(10).map(ToString::to_string).collect();
    if lines.len() > 10 {
        s.push("...".into());
    }
    s.join(", ")
}

fn queue_mode(
    ctx: &Ctx,
    file: Option<&Path>,
    fsname: Option<String>,
    chunk: usize,
    dry_run: bool,
) -> Result<(), Fail> {
    let text = read_input(file)?;
    let input = queue::parse_queue_input(&text)
        .map_err(|e| Fail(exit::USAGE, format!("bad input, nothing sent: {e}")))?;
    if !input.left_out.is_empty() {
        let lines: Vec<usize> = input.left_out.iter().map(|l| l.0).collect();
        tracing::warn!(
            "{} CANCEL/NOOP request(s) not queued, only archive, restore and remove can be (lines {})",
            lines.len(),
            lines_list(&lines)
        );
    }
    if !input.maybe_truncated.is_empty() {
        tracing::warn!(
            "{} request(s) show {} bytes of data, the most active_requests prints: their data may be truncated (lines {})",
            input.maybe_truncated.len(),
            coordinatool_lustre::active_requests::DATA_DUMP_MAX,
            lines_list(&input.maybe_truncated)
        );
    }
    let total = input.items.len();
    if total == 0 || dry_run {
        if ctx.style == Style::Json {
            println!(
                "{}",
                serde_json::json!({"parsed": total, "left_out": input.left_out.len(),
                    "maybe_truncated": input.maybe_truncated.len(), "sent": 0})
            );
        } else {
            eprintln!("{total} request(s) to queue; nothing sent");
        }
        return Ok(());
    }

    let mut c = ctx.connect(true)?;
    let mut tally = QueueTally::default();
    let progress = ctx.style != Style::Json && std::io::stderr().is_terminal();
    let mut failure = None;
    for (k, items) in input.items.chunks(chunk).enumerate() {
        let first = input.lines[k * chunk];
        let last = input.lines[k * chunk + items.len() - 1];
        let req = Request::Queue(QueueRequest {
            items: items.to_vec(),
            fsname: fsname.clone(),
        });
        let r = match c.call(&req) {
            Ok(r) => r,
            Err(e) => {
                failure = Some(Fail::from(e));
                break;
            }
        };
        if ctx.style == Style::Upstream {
            if progress {
                eprint!("\r\x1b[K");
            }
            ctx.print_reply("queue", &r, String::new);
        }
        if let Err(e) = tally.record(items.len(), first, last, &r.reply) {
            if progress {
                eprint!("\r\x1b[K");
            }
            tracing::error!("{e}");
        }
        if progress {
            progress_bar(tally.sent, total);
        }
    }
    if progress {
        eprintln!();
    }
    let summary = format!(
        "queued {} of {} request(s) in {} message(s): {} enqueued, {} already known{}",
        tally.sent,
        total,
        tally.messages,
        tally.enqueued,
        tally.skipped,
        if tally.errors.is_empty() {
            String::new()
        } else {
            format!(", {} failed message(s)", tally.errors.len())
        }
    );
    match ctx.style {
        Style::Json => println!(
            "{}",
            serde_json::json!({"parsed": total, "left_out": input.left_out.len(),
                "maybe_truncated": input.maybe_truncated.len(), "messages": tally.messages,
                "sent": tally.sent, "enqueued": tally.enqueued, "skipped": tally.skipped,
                "errors": tally.errors, "connection_error": failure.as_ref().map(|f| f.1.clone())})
        ),
        Style::Human => println!("{summary}"),
        Style::Upstream => eprintln!("{summary}"),
    }
    if let Some(f) = failure {
        return Err(f);
    }
    if !tally.errors.is_empty() {
        return Err(Fail(
            exit::SERVER,
            format!("{} queue message(s) failed", tally.errors.len()),
        ));
    }
    Ok(())
}

fn progress_bar(done: u64, total: usize) {
    const WIDTH: usize = 30;
    let filled = (done as usize * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    eprint!(
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

fn recv(ctx: &Ctx, iters: Option<u32>, drain: bool) -> Result<(), Fail> {
    let mut c = ctx.connect(false)?;
    let cfg = &ctx.cfg;
    let limit = |v: u32| (v != u32::MAX).then_some(v);
    let req = Request::Recv(RecvRequest {
        max_archive: limit(cfg.max_archive),
        max_restore: limit(cfg.max_restore),
        max_remove: limit(cfg.max_remove),
        max_bytes: i32::try_from(cfg.hal_size).unwrap_or(i32::MAX),
    });
    let mut received = 0u32;
    while iters.is_none_or(|n| received < n) {
        let r = c.call(&req)?;
        received += 1;
        let Reply::Recv(rr) = &r.reply else {
            ctx.print_reply("recv", &r, String::new);
            return Err(Fail(
                exit::CONNECTION,
                format!("unexpected {} reply to recv", r.reply.command()),
            ));
        };
        if rr.status != 0 {
            ctx.print_reply("recv", &r, String::new);
            return Err(server_error(&r.reply));
        }
        let Some(hal) = &rr.hal else {
            return Err(Fail(exit::SERVER, "no hal".into()));
        };
        ctx.print_reply("recv", &r, || {
            let mut s = String::new();
            for h in &hal.list {
                s.push_str(&format!(
                    "{} {} dfid={} cookie={:#x} archive={} data={:?}\n",
                    h.action,
                    h.fid,
                    h.dfid,
                    h.cookie,
                    hal.archive_id,
                    String::from_utf8_lossy(&h.data)
                ));
            }
            s
        });
        if hal.list.is_empty() {
            return Err(Fail(exit::SERVER, "no hal->list".into()));
        }
        if !drain {
            continue;
        }
        for h in &hal.list {
            if h.cookie == 0 || h.dfid == coordinatool_lustre::LuFid::default() {
                return Err(Fail(
                    exit::SERVER,
                    "cookie/dfid not set - version mismatch?".into(),
                ));
            }
            let d = c.call(&Request::Done(DoneRequest {
                cookie: h.cookie,
                dfid: h.dfid,
                status: 0,
            }))?;
            ctx.print_reply("done", &d, || {
                format!("drained {} cookie={:#x}\n", h.dfid, h.cookie)
            });
            if !d.reply.is_ok() {
                return Err(server_error(&d.reply));
            }
        }
    }
    Ok(())
}

fn watch(ctx: &Ctx, interval: f64, count: Option<u64>, dump: bool) -> Result<(), Fail> {
    let server = format!("{}:{}", ctx.opts.host, ctx.opts.port);
    let tty = std::io::stdout().is_terminal();
    let mut state = render::WatchState::default();
    let mut conn: Option<Connection> = None;
    let mut shown = 0u64;
    let period = Duration::from_secs_f64(interval);
    loop {
        let started = Instant::now();
        if conn.is_none() {
            conn = Some(ctx.connect(true)?);
        }
        let c = conn.as_mut().expect("connected just above");
        let verbose = if dump { 6 } else { 4 };
        let r = match c.call(&Request::Status(StatusRequest { verbose })) {
            Ok(r) => r,
            Err(e) => {
                // The server went away: reconnect (with backoff) at the next refresh.
                tracing::warn!("lost connection to {server}: {e}");
                conn = None;
                std::thread::sleep(period);
                continue;
            }
        };
        let Reply::Status(s) = &r.reply else {
            return Err(Fail(
                exit::CONNECTION,
                format!("unexpected {} reply to status", r.reply.command()),
            ));
        };
        if s.status != 0 {
            return Err(server_error(&r.reply));
        }
        let frame = state.update(Instant::now(), s);
        let mut out = std::io::stdout().lock();
        let text = match ctx.style {
            Style::Json => {
                let rates = frame.rates.map(|r| serde_json::json!({"restore": r.restore, "archive": r.archive, "remove": r.remove}));
                let oldest = frame.oldest.as_ref().map(|(q, fid, cookie, age)| {
                    serde_json::json!({"queue": q, "dfid": fid.to_string(), "cookie": cookie, "seen_s": age.as_secs_f64()})
                });
                let clients: serde_json::Map<String, serde_json::Value> = s
                    .clients
                    .iter()
                    .zip(&frame.client_rates)
                    .map(|(c, r)| (c.client_id.clone(), serde_json::json!(r)))
                    .collect();
                format!(
                    "{}\n",
                    serde_json::json!({"status": serde_json::from_slice::<serde_json::Value>(&r.raw).unwrap_or_default(),
                        "rates": rates, "client_rates": clients, "oldest_waiting": oldest})
                )
            }
            _ if tty => format!("\x1b[H\x1b[2J{}", render::watch_view(&server, s, &frame)),
            _ => format!("{}\n", render::watch_view(&server, s, &frame)),
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        drop(out);
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

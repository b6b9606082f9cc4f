//! The command line (clap): upstream's flags, and subcommands beside them.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{ArgAction, Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Without a subcommand the client behaves as upstream's coordinatool-client: status by default,
or the mode chosen by -Q, --lock, --unlock, --lock-quit, -R or --drain, with upstream's output.

Exit status: 0 success; 1 bad usage, bad configuration or bad input (nothing sent);
2 the server answered with an error (or a queue reply did not account for every item, or
Lustre refused a cancel);
3 could not connect (see --timeout), or the connection failed or carried garbage.

Environment: COORDINATOOL_CONF, COORDINATOOL_HOST, COORDINATOOL_PORT, COORDINATOOL_CLIENT_ID,
COORDINATOOL_MAX_RESTORE, COORDINATOOL_MAX_ARCHIVE, COORDINATOOL_MAX_REMOVE,
COORDINATOOL_HAL_SIZE, COORDINATOOL_VERBOSE (they override the config file).

Requeueing with -Q/queue: the MDT's active_requests shows at most the first 5 bytes of each
request's data, so longer data is cut; the client warns about items that may be affected.";

/// Operator client for the coordinatool server.
#[derive(Debug, Parser)]
#[command(
    name = "coordinatool-client",
    version,
    disable_version_flag = true,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Options shared by every mode.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Upstream's mode flags.
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    /// A subcommand (modern interface).
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Options accepted before or after any subcommand.
#[derive(Debug, Args, Default)]
pub struct CommonArgs {
    /// Config file (must exist) [default: $COORDINATOOL_CONF, else /etc/coordinatool.conf].
    #[arg(short = 'c', long = "config", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Server host [default: config `host`, else coordinatool].
    #[arg(short = 'H', long, global = true)]
    pub host: Option<String>,
    /// Server port [default: config `port`, else 5123].
    #[arg(short = 'p', long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Raise the log level (repeatable); also the status request's level: -vv dumps every queue.
    #[arg(short = 'v', long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Lower the log level (repeatable).
    #[arg(short = 'q', long, action = ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Client id sent in ehlo (takes over a disconnected client's state with that id).
    #[arg(short = 'I', long = "client-id", value_name = "ID", global = true)]
    pub client_id: Option<String>,
    /// Archive id for ehlo (repeatable) [default with recv/drain: config `archive_id`].
    #[arg(short = 'A', long = "archive", value_name = "ID", global = true,
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub archive: Vec<u32>,
    /// Give up connecting (and waiting for a reply, except recv/drain) after SECONDS
    /// [default: retry forever, as upstream].
    #[arg(long, value_name = "SECONDS", global = true, value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// Machine-readable output: the server's replies as one JSON object per line, and a
    /// JSON summary for queue.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Upstream's mode flags (used without a subcommand).
#[derive(Debug, Args, Default)]
pub struct UpstreamArgs {
    /// Requeue requests from active_requests text read from FILE or stdin.
    #[arg(short = 'Q', long = "queue", value_name = "FILE", num_args = 0..=1, group = "mode")]
    pub queue: Option<Option<PathBuf>>,
    /// Filesystem name checked by the server when queueing.
    #[arg(long, requires = "queue")]
    pub fsname: Option<String>,
    /// Items per queue message.
    #[arg(long, value_name = "N", default_value_t = crate::queue::DEFAULT_CHUNK,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub chunk_size: usize,
    /// Stop dispatching new work to movers.
    #[arg(long, group = "mode")]
    pub lock: bool,
    /// Resume dispatching.
    #[arg(long, group = "mode")]
    pub unlock: bool,
    /// Lock, then shut the server down once nothing is running.
    #[arg(long = "lock-quit", group = "mode")]
    pub lock_quit: bool,
    /// Debug: ask for work and print it, forever (nothing is acknowledged).
    #[arg(short = 'R', long = "recv", group = "mode")]
    pub recv: bool,
    /// Like --recv, but acknowledge every item as done (Lustre is NOT told).
    #[arg(long, group = "mode")]
    pub drain: bool,
    /// Number of recv replies to read before exiting [default: forever].
    #[arg(short = 'i', long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=i32::MAX as i64))]
    pub iters: Option<u32>,
    /// Print the version.
    #[arg(short = 'V', long)]
    pub version: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show counters and clients (tables, or --json).
    Status {
        /// Ask for the full dump of every queue (status level 6).
        #[arg(long)]
        dump: bool,
    },
    /// Requeue requests from active_requests text (FILE, or stdin when absent or "-").
    Queue {
        /// The listing (`lctl get_param -n mdt.*.hsm.active_requests`, or the debugfs file).
        file: Option<PathBuf>,
        /// Filesystem name checked by the server.
        #[arg(long)]
        fsname: Option<String>,
        /// Items per queue message.
        #[arg(long, value_name = "N", default_value_t = crate::queue::DEFAULT_CHUNK,
              value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
        chunk_size: usize,
        /// Parse and report, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop dispatching new work to movers.
    Lock,
    /// Resume dispatching.
    Unlock,
    /// Lock, then shut the server down once nothing is running.
    LockQuit,
    /// Debug: ask for work and print it (nothing is acknowledged).
    Recv {
        /// Number of replies to read [default: forever].
        #[arg(short = 'i', long, value_name = "N")]
        iters: Option<u32>,
    },
    /// Receive work and acknowledge it as done without doing it (Lustre is NOT told).
    Drain {
        /// Number of replies to read [default: forever].
        #[arg(short = 'i', long, value_name = "N")]
        iters: Option<u32>,
    },
    /// Live view of queues, clients and rates, refreshed every few seconds.
    Watch {
        /// Seconds between refreshes.
        #[arg(short = 'n', long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_seconds)]
        interval: f64,
        /// Stop after N refreshes [default: never].
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Ask for the queue dump each time (queue lengths, oldest waiting request).
        #[arg(long)]
        dump: bool,
    },
    /// Cancel the HSM requests of FILES through Lustre (HUA_CANCEL, like `lfs hsm_cancel`).
    ///
    /// The MDT hands the cancel to coordinatool like any request: a queued request is dropped
    /// and reported cancelled, a running one is cancelled on its mover. Needs liblustreapi.so.1
    /// and FILES on a Lustre mount; no connection to the server is made.
    Cancel {
        /// Files whose requests to cancel (all on one filesystem).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Load generator: many simulated movers (one thread) doing recv + done against the server.
    ///
    /// Each mover says ehlo, then answers every item of each recv reply with done, sending the
    /// dones and its next recv in one write. Prints round trips per second (one item received
    /// and acknowledged) and latency percentiles, then a JSON summary line (only that line
    /// with --json). With --queue, M archive requests are queued first and the run ends when
    /// all of them are done. The movers' work is NOT reported to Lustre.
    Bench(BenchArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Options of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Simulated movers (one connection each).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub movers: u32,
    /// Queue M archive requests (archive id: first -A, else 1) before starting; the run
    /// then stops once all of them are done.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub queue: u64,
    /// Items per queue message.
    #[arg(long, value_name = "N", default_value_t = crate::bench::DEFAULT_QUEUE_CHUNK,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub queue_chunk: usize,
    /// max_archive/max_restore/max_remove of each recv (-1: unlimited).
    #[arg(short = 'k', long, value_name = "K", default_value_t = 1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..=i64::from(u32::MAX)))]
    pub max_items: i64,
    /// max_bytes of each recv (at least 172) [default: 1048576].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(i32).range(172..))]
    pub max_bytes: Option<i32>,
    /// Stop after N round trips [default: the --queue count, else run for --duration].
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECONDS [default: 10 when neither --queue nor --count is given].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// Fail when no reply arrives for SECONDS while work is expected (with --queue/--count).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub stall: f64,
    /// Cookie of the first queued request [default: from the clock, so runs do not collide].
    #[arg(long, value_name = "N")]
    pub first_cookie: Option<u64>,
    /// Anonymous movers (no client id; their work is re-queued at once when they leave).
    #[arg(long)]
    pub anonymous: bool,
    /// Print a progress line on stderr every second.
    #[arg(long)]
    pub progress: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

impl UpstreamArgs {
    /// True when any upstream mode flag was given.
    pub fn any_mode(&self) -> bool {
        self.queue.is_some()
            || self.lock
            || self.unlock
            || self.lock_quit
            || self.recv
            || self.drain
            || self.iters.is_some()
            || self.fsname.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn short_and_long_config_both_work() {
        for args in [["x", "-c", "/a"], ["x", "--config", "/a"]] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(
                cli.common.config.as_deref(),
                Some(std::path::Path::new("/a"))
            );
        }
        let cli = Cli::try_parse_from(["x", "status", "--config=/b", "-vv"]).unwrap();
        assert_eq!(
            cli.common.config.as_deref(),
            Some(std::path::Path::new("/b"))
        );
        assert_eq!(cli.common.verbose, 2);
    }

    #[test]
    fn modes_exclude_each_other_and_queue_takes_an_optional_file() {
        assert!(Cli::try_parse_from(["x", "--lock", "--unlock"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "--fsname", "fs"]).is_err(),
            "--fsname needs -Q"
        );
        let cli = Cli::try_parse_from(["x", "-Q"]).unwrap();
        assert_eq!(cli.upstream.queue, Some(None));
        let cli = Cli::try_parse_from(["x", "-Q", "/f", "--fsname", "fs"]).unwrap();
        assert_eq!(cli.upstream.queue, Some(Some(PathBuf::from("/f"))));
        let cli = Cli::try_parse_from(["x", "-i", "1", "-R", "-A", "2", "-A", "3"]).unwrap();
        assert!(cli.upstream.recv);
        assert_eq!(cli.upstream.iters, Some(1));
        assert_eq!(cli.common.archive, vec![2, 3]);
        assert!(Cli::try_parse_from(["x", "-A", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "extra"]).is_err());
    }
}

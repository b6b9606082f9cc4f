//! Helpers shared by the store tests.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_sched::{Request, Time};

/// A request with a distinct key per `cookie`.
pub(crate) fn request(cookie: u64, action: HsmAction, data: &[u8]) -> Request {
    let fid = LuFid::new(0x200000401, cookie as u32, 0);
    Request {
        action,
        cookie,
        dfid: fid,
        fid,
        extent_offset: 0,
        extent_length: u64::MAX,
        gid: 0,
        archive_id: 1,
        hal_flags: 0,
        data: data.into(),
        timestamp: Time(1_000 + cookie),
        mdt_index: None,
        owner: None,
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ct-server-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private `redis-server` on a free loopback port, killed on drop.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (after a loud message) when `redis-server` is not
    /// installed.
    pub(crate) fn start() -> Option<Self> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            // CI installs it: there, a missing redis-server is a failure, not a skip.
            assert!(
                std::env::var_os("COORDINATOOL_REQUIRE_REDIS").is_none(),
                "redis-server is not installed and COORDINATOOL_REQUIRE_REDIS is set"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server is not installed (apt-get install redis-server); \
                 the Redis store is NOT tested ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RedisServer { port, child: None };
        s.restart();
        Some(s)
    }

    /// Starts (again) on the same port, with an empty database.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..500 {
            if let Ok(mut c) = self.client().get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (like a crash).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(redis::ConnectionAddr::Tcp("127.0.0.1".into(), self.port)).unwrap()
    }

    pub(crate) fn con(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a [`FailingStore`]'s test controls and observes.
#[derive(Debug, Default)]
pub(crate) struct FailState {
    /// Commits asked for so far (failed ones included).
    pub(crate) attempts: usize,
    /// The attempt to fail (1-based), if any.
    fail_at: Option<usize>,
    /// The failing commit waits for [`FailCtl::release`] before failing.
    hold: bool,
    /// The failing commit has started (and waits, when held).
    pub(crate) failing: bool,
    /// Commits asked for after the failed one: the server must ask for none.
    pub(crate) after_failure: usize,
}

/// The shared control of a [`FailingStore`].
#[derive(Debug, Default)]
pub(crate) struct FailCtl {
    state: std::sync::Mutex<FailState>,
    cv: std::sync::Condvar,
}

impl FailCtl {
    /// Makes the next commit fail; with `hold`, it first waits for [`FailCtl::release`].
    pub(crate) fn fail_next(&self, hold: bool) {
        let mut s = self.state.lock().unwrap();
        s.fail_at = Some(s.attempts + 1);
        s.hold = hold;
    }

    /// Waits (bounded) until the failing commit has started.
    pub(crate) fn wait_failing(&self) {
        let s = self.state.lock().unwrap();
        let (s, t) = self
            .cv
            .wait_timeout_while(s, std::time::Duration::from_secs(30), |s| !s.failing)
            .unwrap();
        assert!(
            !t.timed_out() && s.failing,
            "the failing commit never started"
        );
    }

    /// Lets a held failing commit fail.
    pub(crate) fn release(&self) {
        self.state.lock().unwrap().hold = false;
        self.cv.notify_all();
    }

    /// A copy of the counters.
    pub(crate) fn attempts(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.attempts, s.after_failure)
    }
}

/// A real store whose commit fails on demand ([`FailCtl::fail_next`]), as a dying disk
/// would: the failing commit writes nothing. Commits after it are counted and applied.
pub(crate) struct FailingStore<S> {
    inner: S,
    path: std::path::PathBuf,
    ctl: std::sync::Arc<FailCtl>,
}

impl<S: crate::store::Store> FailingStore<S> {
    /// Wraps `inner`, whose errors name `path`.
    pub(crate) fn new(inner: S, path: std::path::PathBuf) -> (Self, std::sync::Arc<FailCtl>) {
        let ctl = std::sync::Arc::new(FailCtl::default());
        (
            FailingStore {
                inner,
                path,
                ctl: std::sync::Arc::clone(&ctl),
            },
            ctl,
        )
    }
}

impl<S: crate::store::Store> crate::store::Store for FailingStore<S> {
    fn load(&mut self) -> Result<crate::store::Recovery, crate::store::StoreError> {
        self.inner.load()
    }

    fn commit(
        &mut self,
        batch: &crate::store::Batch,
    ) -> Result<crate::store::CommitStatus, crate::store::StoreError> {
        let mut s = self.ctl.state.lock().unwrap();
        s.attempts += 1;
        if s.failing {
            s.after_failure += 1;
        } else if s.fail_at == Some(s.attempts) {
            s.failing = true;
            self.ctl.cv.notify_all();
            while s.hold {
                s = self.ctl.cv.wait(s).unwrap();
            }
            return Err(crate::store::StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("injected commit failure"),
            });
        }
        drop(s);
        self.inner.commit(batch)
    }

    fn health(&self) -> crate::store::StoreHealth {
        self.inner.health()
    }
}

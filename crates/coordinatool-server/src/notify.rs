//! systemd notifications (`Type=notify` in `coordinatool@.service`).
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd). The
//! event loop calls [`ready`] once the store is loaded and the server listens, [`status`]
//! when something worth showing in `systemctl status` changes (for example Redis lost or
//! back), [`watchdog`] every [`watchdog_interval`], and [`stopping`] on SIGTERM.

use sd_notify::NotifyState;
use std::time::Duration;

/// `READY=1` with a status line.
pub fn ready(status_line: &str) -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status_line)])
}

/// `STATUS=<line>`.
pub fn status(line: &str) -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::Status(line)])
}

/// `STOPPING=1`.
pub fn stopping() -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::Stopping])
}

/// `WATCHDOG=1`: the loop is alive.
pub fn watchdog() -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::Watchdog])
}

/// How often to call [`watchdog`]: half of `WatchdogSec` (as sd_watchdog_enabled(3)
/// recommends), or `None` when the watchdog is off.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    const CHILD_ENV: &str = "CT_NOTIFY_CHILD";

    /// Runs in a child process whose environment has `NOTIFY_SOCKET` (setting it in this
    /// process would race with the other tests).
    #[test]
    fn notify_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        super::ready("queue open").unwrap();
        super::status("redis lost").unwrap();
        super::watchdog().unwrap();
        super::stopping().unwrap();
        let w = super::watchdog_interval()
            .map(|d| d.as_millis())
            .unwrap_or(0);
        super::status(&format!("watchdog {w}")).unwrap();
    }

    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = crate::store::testutil::TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "notify::tests::notify_child", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "30000000")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..5 {
            let n = sock.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            vec![
                "READY=1\nSTATUS=queue open\n",
                "STATUS=redis lost\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n",
                "STATUS=watchdog 15000\n",
            ]
        );
    }

    #[test]
    fn no_socket_is_a_no_op() {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return; // running under systemd: nothing to check
        }
        super::ready("x").unwrap();
        super::watchdog().unwrap();
    }
}

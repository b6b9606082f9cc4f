//! Names of connections: upstream names a new connection `"<host>:<port>"`, where the host
//! is what `getnameinfo` gives for the peer (its name when the reverse lookup finds one,
//! e.g. `localhost:38904`, else the numeric address), and that name stays the id of an
//! anonymous client (§2.3). A reverse lookup may wait on DNS, so it never runs in the loop:
//! it runs on a blocking thread, bounded by [`LOOKUP_TIMEOUT`] (then the numeric address is
//! used), and results are cached per address so a host's later connections are named at once.

use std::collections::HashMap;
use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::debug;

/// Longest wait for a reverse lookup (including waiting for a lookup slot) before the
/// numeric address is used.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a found name is reused.
const NAME_TTL: Duration = Duration::from_secs(300);

/// How long a failed lookup (numeric fallback) is reused before trying again.
const NUMERIC_TTL: Duration = Duration::from_secs(30);

/// Reverse lookups running at once; a hung resolver ties up at most this many threads.
const MAX_LOOKUPS: usize = 8;

/// A connection accepted and not yet named.
type Parked = (TcpStream, SocketAddr);

/// A lookup's answer: the address and the host part (name or numeric address).
pub(crate) type Resolved = (IpAddr, String, bool);

/// The cache, the connections waiting for their lookup, and the channel answers come back on.
pub(crate) struct Names {
    cache: HashMap<IpAddr, (String, Instant)>,
    waiting: HashMap<IpAddr, Vec<Parked>>,
    tx: mpsc::UnboundedSender<Resolved>,
    /// Answers of finished lookups, for the loop to pass to [`Names::resolved`].
    pub(crate) rx: mpsc::UnboundedReceiver<Resolved>,
    slots: Arc<Semaphore>,
}

impl Names {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Names {
            cache: HashMap::new(),
            waiting: HashMap::new(),
            tx,
            rx,
            slots: Arc::new(Semaphore::new(MAX_LOOKUPS)),
        }
    }

    /// The connection with its name when the cache knows the peer; otherwise the connection
    /// waits here for a lookup (started unless one for this address is already running) and
    /// comes back from [`Names::resolved`].
    pub(crate) fn name_or_park(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr, String)> {
        let ip = addr.ip();
        if let Some((host, until)) = self.cache.get(&ip) {
            if *until > Instant::now() {
                return Some((stream, addr, client_name(host, addr.port())));
            }
            self.cache.remove(&ip);
        }
        let parked = self.waiting.entry(ip).or_default();
        parked.push((stream, addr));
        if parked.len() == 1 {
            let tx = self.tx.clone();
            let slots = self.slots.clone();
            tokio::spawn(async move {
                let found = tokio::time::timeout(LOOKUP_TIMEOUT, async move {
                    let permit = slots.acquire_owned().await.ok()?;
                    tokio::task::spawn_blocking(move || {
                        // Held until getnameinfo returns, even after a timeout.
                        let _permit = permit;
                        reverse_lookup(addr)
                    })
                    .await
                    .ok()
                    .flatten()
                })
                .await
                .ok()
                .flatten();
                let _ = match found {
                    Some(name) => tx.send((ip, name, true)),
                    None => tx.send((ip, numeric(ip), false)),
                };
            });
        }
        None
    }

    /// A lookup finished: remembers the answer and returns the connections that waited for it.
    pub(crate) fn resolved(
        &mut self,
        (ip, host, found): Resolved,
    ) -> Vec<(TcpStream, SocketAddr, String)> {
        debug!(%ip, %host, found, "peer name");
        let ttl = if found { NAME_TTL } else { NUMERIC_TTL };
        let parked = self.waiting.remove(&ip).unwrap_or_default();
        let named = parked
            .into_iter()
            .map(|(s, a)| {
                let name = client_name(&host, a.port());
                (s, a, name)
            })
            .collect();
        self.cache.insert(ip, (host, Instant::now() + ttl));
        named
    }
}

/// `"<host>:<port>"`, as upstream joins getnameinfo's host and numeric service (an IPv6
/// address is not bracketed).
pub(crate) fn client_name(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// The numeric form of an address, as getnameinfo writes it (IPv4-mapped IPv6 addresses as
/// `::ffff:a.b.c.d`).
pub(crate) fn numeric(ip: IpAddr) -> String {
    ip.to_string()
}

/// `getnameinfo(addr, NI_NAMEREQD)`: the peer's host name, `None` when there is none.
pub(crate) fn reverse_lookup(addr: SocketAddr) -> Option<String> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `ss` holds a sockaddr of `len` bytes; `host` is writable for its length; no
    // service buffer is asked for.
    let rc = unsafe {
        libc::getnameinfo(
            &ss as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_name_and_names_join_host_and_port() {
        // Every Linux /etc/hosts names 127.0.0.1 (localhost here, or the machine's name).
        let n = reverse_lookup("127.0.0.1:4000".parse().unwrap()).expect("a name for loopback");
        assert!(!n.is_empty() && n.parse::<IpAddr>().is_err(), "{n}");
        assert_eq!(client_name("localhost", 38904), "localhost:38904");
        assert_eq!(client_name(&numeric("::1".parse().unwrap()), 7), "::1:7");
    }
}

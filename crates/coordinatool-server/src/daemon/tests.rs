//! The loop run in-process (no Lustre intake: `ct` is `None`), with stores and owner lookups
//! the tests control: slow owner lookups must not stall the loop, and a failed commit must
//! release and commit nothing after it. The end-to-end tests (`tests/`) run the real binary.

use super::*;
use crate::config::FairShareKey;
use crate::store::testutil::{FailingStore, TempDir};
use crate::store::{DB_FILE_NAME, EmbeddedStore, NoStore};
use coordinatool_proto::{
    Decoder, DoneRequest, EhloRequest, LockRequest, QueueRequest, RecvRequest, StatusRequest,
    WireHai,
};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound of every wait (only reached when something is broken).
const DEADLINE: Duration = Duration::from_secs(30);

fn hai(n: u32) -> WireHai {
    let mut h = WireHai::new(
        HsmAction::Archive,
        LuFid::new(0x2_0000_0401, n, 0),
        1_000 + u64::from(n),
    );
    h.archive_id = 1;
    h
}

fn queue(items: Vec<WireHai>) -> WireRequest {
    WireRequest::Queue(QueueRequest {
        items,
        fsname: None,
    })
}

fn status() -> WireRequest {
    WireRequest::Status(StatusRequest { verbose: 0 })
}

fn recv(max_archive: u32) -> WireRequest {
    WireRequest::Recv(RecvRequest {
        max_archive: Some(max_archive),
        ..RecvRequest::default()
    })
}

fn done(h: &WireHai) -> WireRequest {
    WireRequest::Done(DoneRequest {
        cookie: h.cookie,
        dfid: h.dfid,
        status: 0,
    })
}

fn encode(req: &WireRequest) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(&mut out);
    out
}

/// A blocking protocol client.
struct Client {
    s: std::net::TcpStream,
    dec: Decoder,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Client {
            s,
            dec: Decoder::new(),
        }
    }

    fn send(&mut self, req: &WireRequest) {
        self.s.write_all(&encode(req)).expect("send");
    }

    /// The next reply, waiting at most [`DEADLINE`].
    fn next(&mut self) -> Reply {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                return Reply::decode(f).expect("decode reply");
            }
            match self.s.read(&mut buf) {
                Ok(0) => panic!("connection closed while waiting for a reply"),
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(start.elapsed() < DEADLINE, "no reply within {DEADLINE:?}");
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn call(&mut self, req: &WireRequest) -> Reply {
        self.send(req);
        self.next()
    }

    /// Nothing received so far (the server owes this client no reply yet).
    fn nothing_yet(&mut self) -> bool {
        if self.dec.next_frame().expect("framing").is_some() {
            return false;
        }
        self.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = self.s.peek(&mut b);
        self.s.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Runs the loop on its own thread as [`run`] does after start-up: the store's queue
/// recovered (owners looked up when `owners` is given), then [`serve`] without signals.
fn spawn_loop(
    cfg: ServerConfig,
    mut store: Box<dyn Store>,
    mut owners: Option<owner::Owners>,
) -> (
    std::net::SocketAddr,
    std::thread::JoinHandle<Result<(), DaemonError>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut engine = Engine::new(cfg.engine_config()).expect("engine");
        let mut clock = Clock::default();
        let recovery = store.load()?;
        recover_queue(
            &mut engine,
            recovery.requests,
            owners.as_mut(),
            &rt,
            clock.now(),
        );
        serve(
            &rt,
            Parts {
                engine,
                store,
                reporter: None,
                fsname: "lustre".into(),
                ct: None,
                relink: None,
                clock,
                listener: Some(listener),
                resyncable: false,
                owners,
                report_ms: 0,
                signals: false,
            },
        )
    });
    (addr, thread)
}

/// A lookup that blocks every call until the gate opens; uid 100 for fids 1..=4, else 200.
struct SlowLookup {
    gate: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
}

impl SlowLookup {
    fn new() -> Arc<Self> {
        Arc::new(SlowLookup {
            gate: Mutex::new(false),
            cv: Condvar::new(),
            calls: AtomicUsize::new(0),
        })
    }

    fn lookup(self: &Arc<Self>) -> owner::LookupFn {
        let me = Arc::clone(self);
        Arc::new(move |fid: &LuFid| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            me.cv.notify_all();
            let mut open = me.gate.lock().unwrap();
            while !*open {
                open = me.cv.wait(open).unwrap();
            }
            Ok(coordinatool_sched::Owner {
                uid: if fid.oid <= 4 { 100 } else { 200 },
                gid: 0,
                projid: 0,
            })
        })
    }

    fn wait_called(&self) {
        let g = self.gate.lock().unwrap();
        let (_g, t) = self
            .cv
            .wait_timeout_while(g, DEADLINE, |_| self.calls.load(Ordering::SeqCst) == 0)
            .unwrap();
        assert!(!t.timed_out(), "no owner lookup started");
    }

    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

fn uid_config() -> ServerConfig {
    let mut cfg = ServerConfig::defaults("/mnt");
    cfg.sched.fair_share_key = Some(FairShareKey::Uid);
    cfg
}

#[test]
fn slow_owner_lookups_leave_the_loop_serving_and_keep_fair_share_and_order() {
    let slow = SlowLookup::new();
    let owners = owner::Owners::with_lookup(slow.lookup());
    let (addr, thread) = spawn_loop(uid_config(), Box::new(NoStore), Some(owners));
    let items: Vec<WireHai> = (1..=8).map(hai).collect();

    // A queues 8 archives (4 of uid 100 first, then 4 of uid 200), then asks for status on
    // the same connection: both wait for the lookups.
    let mut a = Client::connect(addr);
    a.send(&queue(items.clone()));
    a.send(&status());
    slow.wait_called();

    // Meanwhile the loop serves others: status, ehlo. The held requests are not queued yet.
    // (Two connections only: `recv` spreads the queue over the connected clients.)
    let mut m = Client::connect(addr);
    match m.call(&status()) {
        Reply::Status(s) => assert_eq!(s.pending_archive, 0, "held, not in the engine"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m.call(&WireRequest::Ehlo(EhloRequest::new(Some("m".into())))),
        Reply::Ehlo(r) if r.status == 0
    ));
    assert!(
        a.nothing_yet(),
        "A's queue is not answered before its owners are known"
    );

    slow.open();
    match a.next() {
        Reply::Queue(q) => assert_eq!((q.status, q.enqueued), (0, 8), "{q:?}"),
        other => panic!("queue reply first: {other:?}"),
    }
    match a.next() {
        Reply::Status(s) => assert_eq!(s.pending_archive, 8, "status after the queue"),
        other => panic!("{other:?}"),
    }
    assert_eq!(slow.calls.load(Ordering::SeqCst), 8, "one lookup per file");

    // Shared by uid: 2 of each owner in a reply of 4 (arrival order would give 4 of uid 100).
    let got = match m.call(&recv(4)) {
        Reply::Recv(r) => r.hal.expect("a list").list,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(|h| h.fid.oid).collect::<Vec<_>>()
    );
    assert_eq!(got.iter().filter(|h| h.fid.oid <= 4).count(), 2, "{got:?}");

    // The same files again: owners from the cache, no lookup, answered at once.
    match a.call(&queue(items)) {
        Reply::Queue(q) => assert_eq!((q.enqueued, q.skipped), (0, 8), "{q:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(slow.calls.load(Ordering::SeqCst), 8, "cache hits");

    // Stop: lock-and-quit once nothing runs.
    for h in &got {
        assert!(matches!(m.call(&done(h)), Reply::Done(r) if r.status == 0));
    }
    assert!(matches!(
        a.call(&WireRequest::Lock(LockRequest { locked: 2 })),
        Reply::Lock(r) if r.status == 0
    ));
    thread.join().expect("loop thread").expect("clean stop");
}

/// Drives the loop by hand: one client event per turn, so which turn a change belongs to is
/// known exactly.
struct Driver {
    server: Server,
    rx: mpsc::Receiver<Event>,
    listener: TcpListener,
}

impl Driver {
    async fn new(store: Box<dyn Store>) -> Driver {
        let cfg = ServerConfig::defaults("/mnt");
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let parts = Parts {
            engine: Engine::new(cfg.engine_config()).expect("engine"),
            store,
            reporter: None,
            fsname: "lustre".into(),
            ct: None,
            relink: None,
            clock: Clock::default(),
            listener: None,
            resyncable: false,
            owners: None,
            report_ms: 0,
            signals: false,
        };
        let mut server = Server::new(parts, None, tx);
        server.settle().await.expect("start-up commit");
        Driver {
            server,
            rx,
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    async fn connect(&mut self, name: &str) -> tokio::net::TcpStream {
        let addr = self.listener.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), self.listener.accept());
        let (s, peer) = s.expect("accept");
        self.server.accept(s, peer, name);
        c.expect("connect")
    }

    /// Sends `req` on `c` and runs the turn that handles it (its commit may still run).
    async fn turn(&mut self, c: &mut tokio::net::TcpStream, req: &WireRequest) {
        c.write_all(&encode(req)).await.expect("send");
        let ev = tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("the request reaches the loop")
            .expect("event");
        self.server.handle_event(ev);
        self.server.end_turn().await.expect("turn");
    }

    /// [`Driver::turn`], then its commit and replies.
    async fn turn_committed(&mut self, c: &mut tokio::net::TcpStream, req: &WireRequest) {
        self.turn(c, req).await;
        while self.server.inflight.is_some() {
            self.committed().await.expect("commit");
        }
    }

    /// Waits for the commit in flight and releases what it held.
    async fn committed(&mut self) -> Result<(), DaemonError> {
        let i = self.server.inflight.as_mut().expect("a commit in flight");
        let r = (&mut i.handle).await;
        self.server.committed(r).await?;
        self.server.end_turn().await
    }
}

async fn reply(c: &mut tokio::net::TcpStream, dec: &mut Decoder) -> Option<Reply> {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(f) = dec.next_frame().expect("framing") {
            return Some(Reply::decode(f).expect("decode"));
        }
        match tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .expect("a reply or the close")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => dec.feed(&buf[..n]),
        }
    }
}

#[test]
fn a_failed_commit_releases_nothing_and_commits_nothing_after_it() {
    let dir = TempDir::new("failed-commit");
    let db = dir.0.join(DB_FILE_NAME);
    let (store, ctl) = FailingStore::new(EmbeddedStore::open(&dir.0).expect("open"), db.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut d = Driver::new(Box::new(store)).await;
        let mut a = d.connect("a:1").await;
        let mut m = d.connect("m:1").await;
        let (mut da, mut dm) = (Decoder::new(), Decoder::new());

        // Acknowledged: items 1 and 2 queued, item 1 assigned to mover m.
        d.turn_committed(&mut a, &queue(vec![hai(1), hai(2)])).await;
        assert!(matches!(reply(&mut a, &mut da).await, Some(Reply::Queue(q)) if q.enqueued == 2));
        d.turn_committed(
            &mut m,
            &WireRequest::Ehlo(EhloRequest::new(Some("m".into()))),
        )
        .await;
        assert!(matches!(reply(&mut m, &mut dm).await, Some(Reply::Ehlo(r)) if r.status == 0));
        d.turn_committed(&mut m, &recv(1)).await;
        match reply(&mut m, &mut dm).await {
            Some(Reply::Recv(r)) => assert_eq!(r.hal.unwrap().list[0].fid.oid, 1),
            other => panic!("{other:?}"),
        }

        // The turn whose commit fails: item 3 queued. Its commit waits in the store while
        // the next turn gathers: m's done of item 1, item 4 queued by b, a status.
        ctl.fail_next(true);
        d.turn(&mut a, &queue(vec![hai(3)])).await;
        ctl.wait_failing();
        d.turn(&mut m, &done(&hai(1))).await;
        let mut b = d.connect("b:1").await;
        d.turn(&mut b, &queue(vec![hai(4)])).await;
        d.turn(&mut b, &status()).await;
        assert!(
            !d.server.batch.is_empty(),
            "the later turn has changes waiting for their commit"
        );
        ctl.release();
        let err = d.committed().await.expect_err("the commit failed");
        let msg = err.to_string();
        assert!(
            msg.contains(&db.display().to_string()) && msg.contains("injected commit failure"),
            "the error names the store: {msg}"
        );
        // What the daemon does once `run` returns the error.
        d.server
            .finish(&mut Signals::none())
            .await
            .expect("no store to wait for: the embedded one is durable or failed");
        assert_eq!(ctl.attempts().1, 0, "no commit after the failed one");

        // Nobody was told anything after the failure; the connections are closed.
        let mut db_ = Decoder::new();
        assert!(
            reply(&mut a, &mut da).await.is_none(),
            "queue of item 3 not acknowledged"
        );
        assert!(
            reply(&mut m, &mut dm).await.is_none(),
            "done of item 1 not acknowledged"
        );
        assert!(
            reply(&mut b, &mut db_).await.is_none(),
            "nothing released to b"
        );
    });
    drop(rt);

    // A restart on the real store: everything acknowledged is there, as it was.
    let mut store = EmbeddedStore::open(&dir.0).expect("reopen");
    let mut got: Vec<(u32, Option<String>)> = store
        .load()
        .expect("load")
        .requests
        .into_iter()
        .map(|r| (r.request.fid.oid, r.assigned))
        .collect();
    got.sort();
    assert_eq!(got, vec![(1, Some("m".to_owned())), (2, None)]);
}

#[test]
fn a_failed_commit_stops_the_server_with_the_store_named_and_a_restart_keeps_the_queue() {
    let dir = TempDir::new("failed-commit-stop");
    let db = dir.0.join(DB_FILE_NAME);
    let (store, ctl) = FailingStore::new(EmbeddedStore::open(&dir.0).expect("open"), db.clone());
    let (addr, thread) = spawn_loop(ServerConfig::defaults("/mnt"), Box::new(store), None);
    let mut a = Client::connect(addr);
    assert!(matches!(a.call(&queue(vec![hai(1), hai(2)])), Reply::Queue(q) if q.enqueued == 2));
    ctl.fail_next(false);
    a.send(&queue(vec![hai(3)]));
    let err = thread
        .join()
        .expect("loop thread")
        .expect_err("the server stops");
    let msg = err.to_string();
    assert!(
        matches!(err, DaemonError::Store(_)) && msg.contains(&db.display().to_string()),
        "{msg}"
    );
    // The queue of item 3 was never answered: the connection just closed.
    let mut rest = Vec::new();
    a.s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = a.s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(ctl.attempts().1, 0);

    // Restart on the real embedded store: the acknowledged items are queued again.
    let store = EmbeddedStore::open(&dir.0).expect("reopen");
    let (addr, thread) = spawn_loop(ServerConfig::defaults("/mnt"), Box::new(store), None);
    let mut c = Client::connect(addr);
    match c.call(&status()) {
        Reply::Status(s) => assert_eq!(s.pending_archive, 2, "{s:?}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.call(&WireRequest::Lock(LockRequest { locked: 2 })),
        Reply::Lock(r) if r.status == 0
    ));
    thread.join().expect("loop thread").expect("clean stop");
}

#[test]
fn requests_recovered_without_owner_get_their_owner_before_the_server_listens() {
    // Redis keeps upstream's records, without owners; the embedded store given such records
    // loads them the same way.
    let dir = TempDir::new("recover-owners");
    let mut store = EmbeddedStore::open(&dir.0).expect("open");
    let mut batch = Batch::new();
    for n in 1..=8u32 {
        let r = crate::store::testutil::request(u64::from(n), HsmAction::Archive, b"");
        assert!(r.owner.is_none());
        batch.push(PersistOp::New(r));
    }
    store.commit(&batch).expect("commit");
    let slow = SlowLookup::new();
    slow.open();
    let owners = owner::Owners::with_lookup(slow.lookup());
    let (addr, thread) = spawn_loop(uid_config(), Box::new(store), Some(owners));
    let mut m = Client::connect(addr);
    assert!(matches!(
        m.call(&WireRequest::Ehlo(EhloRequest::new(Some("m".into())))),
        Reply::Ehlo(r) if r.status == 0
    ));
    assert_eq!(slow.calls.load(Ordering::SeqCst), 8, "looked up at start");
    let got = match m.call(&recv(4)) {
        Reply::Recv(r) => r.hal.expect("a list").list,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 4);
    assert_eq!(
        got.iter().filter(|h| h.fid.oid <= 4).count(),
        2,
        "shared by uid: {got:?}"
    );
    for h in &got {
        assert!(matches!(m.call(&done(h)), Reply::Done(r) if r.status == 0));
    }
    assert!(matches!(
        m.call(&WireRequest::Lock(LockRequest { locked: 2 })),
        Reply::Lock(r) if r.status == 0
    ));
    thread.join().expect("loop thread").expect("clean stop");
}

/// `getsockopt` of an int option.
fn sockopt(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call; the fd is an open socket.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

#[test]
fn accepted_connections_find_a_dead_peer_in_minutes_not_hours() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut d = Driver::new(Box::new(NoStore)).await;
        let addr = d.listener.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), d.listener.accept());
        let (s, peer) = s.expect("accept");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        d.server.accept(s, peer, "k:1");
        // The connection owns the socket now: its options are the server's.
        assert_eq!(sockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        let idle = sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE);
        let intvl = sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL);
        let cnt = sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT);
        let detect = idle + intvl * cnt;
        assert!(
            (1..=300).contains(&detect),
            "a dead peer found after {detect} s (idle {idle}, interval {intvl}, count {cnt})"
        );
        assert_eq!(sockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
        drop(c);
    });
}

/// Keeps tokio's paused clock from advancing by itself while alive: a running blocking task
/// inhibits auto-advance (documented under `tokio::time::pause`), so time moves only by
/// `tokio::time::advance` and waiting for real I/O cannot fire a timer early.
struct ClockHold {
    release: std::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ClockHold {
    fn new() -> ClockHold {
        let (release, rx) = std::sync::mpsc::channel::<()>();
        let task = tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        });
        ClockHold { release, task }
    }

    /// Lets the clock auto-advance again.
    async fn release(self) {
        drop(self.release);
        self.task.await.expect("clock hold task");
    }
}

/// Lets every task that can run do so (timers that fired, the messages they send), with the
/// clock held.
async fn run_ready() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// [`Driver::connect`] with small socket buffers on both sides (so a few hundred KB of
/// unread replies fill them), returning the engine's id of the connection too.
async fn connect_small(d: &mut Driver, name: &str) -> (tokio::net::TcpStream, ClientId) {
    let addr = d.listener.local_addr().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let (c, s) = tokio::join!(sock.connect(addr), d.listener.accept());
    let (s, peer) = s.expect("accept");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let size: libc::c_int = 4096;
    // SAFETY: `fd` is the open socket of `s`; the value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
    let before: Vec<ClientId> = d.server.conns.keys().copied().collect();
    d.server.accept(s, peer, name);
    let id = *d
        .server
        .conns
        .keys()
        .find(|k| !before.contains(k))
        .expect("the new connection");
    (c.expect("connect"), id)
}

fn recv_list(r: Option<Reply>) -> Vec<u32> {
    match r {
        Some(Reply::Recv(r)) => r
            .hal
            .as_ref()
            .unwrap_or_else(|| panic!("a list: {r:?}"))
            .list
            .iter()
            .map(|h| h.fid.oid)
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_write_stall_and_its_work_requeued() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut d = Driver::new(Box::new(NoStore)).await;
        let mut a = d.connect("a:1").await;
        let mut m = d.connect("m:1").await;
        let (mut s, sid) = connect_small(&mut d, "s:1").await;
        let (mut da, mut dm, mut ds) = (Decoder::new(), Decoder::new(), Decoder::new());
        d.turn_committed(&mut a, &queue(vec![hai(1), hai(2), hai(3)]))
            .await;
        assert!(matches!(reply(&mut a, &mut da).await, Some(Reply::Queue(q)) if q.enqueued == 3));

        // s, an anonymous mover (EHLO without an id), takes work, then stops reading: it
        // queues item 9 and asks for status over and over, replies it never reads.
        let ehlo = WireRequest::Ehlo(EhloRequest::new(None));
        for (c, dec) in [(&mut m, &mut dm), (&mut s, &mut ds)] {
            d.turn_committed(c, &ehlo).await;
            assert!(matches!(reply(c, dec).await, Some(Reply::Ehlo(r)) if r.status == 0));
        }
        d.turn_committed(&mut s, &recv(2)).await;
        let taken = recv_list(reply(&mut s, &mut ds).await);
        assert!(!taken.is_empty() && !taken.contains(&3), "{taken:?}");
        let hold = ClockHold::new();
        const FLOOD: usize = 2000;
        let mut flood = encode(&queue(vec![hai(9)]));
        for _ in 0..FLOOD {
            flood.extend_from_slice(&encode(&status()));
        }
        s.write_all(&flood).await.expect("flood");
        let mut handled = 0;
        while handled < FLOOD + 1 {
            let ev = tokio::time::timeout(DEADLINE, d.rx.recv())
                .await
                .expect("the flood reaches the loop")
                .expect("event");
            match &ev {
                Event::Requests(id, reqs) if *id == sid => handled += reqs.len(),
                other => panic!("only s's requests: {other:?}"),
            }
            d.server.handle_event(ev);
            d.server.end_turn().await.expect("turn");
        }
        assert!(
            d.server.conns.contains_key(&sid),
            "not dropped for its backlog"
        );
        // s's writer runs until the socket refuses more, then waits (from now: the clock
        // is held).
        run_ready().await;
        let start = tokio::time::Instant::now();

        // Just short of the stall: s is still connected, and everyone else is served.
        tokio::time::advance(WRITE_STALL - Duration::from_secs(1)).await;
        run_ready().await;
        assert!(d.rx.try_recv().is_err(), "no event before the stall");
        let mut b = d.connect("b:1").await;
        let mut db_ = Decoder::new();
        d.turn_committed(&mut b, &status()).await;
        match reply(&mut b, &mut db_).await {
            Some(Reply::Status(st)) => assert_eq!(
                (st.pending_archive, st.running_archive),
                (2, taken.len() as u32),
                "item 3 and s's item 9 queued, s's running: {st:?}"
            ),
            other => panic!("{other:?}"),
        }
        d.turn_committed(&mut m, &recv(1)).await;
        let mut got = recv_list(reply(&mut m, &mut dm).await);
        assert_eq!(got, vec![3], "first come, first served");
        d.turn_committed(&mut m, &done(&hai(3))).await;
        assert!(matches!(reply(&mut m, &mut dm).await, Some(Reply::Done(r)) if r.status == 0));
        d.turn_committed(&mut a, &queue(vec![hai(5)])).await;
        assert!(matches!(reply(&mut a, &mut da).await, Some(Reply::Queue(q)) if q.enqueued == 1));
        run_ready().await;
        assert!(d.rx.try_recv().is_err() && d.server.conns.contains_key(&sid));

        // The stall: the writer gives up, and the loop drops s alone. (The kernel may still
        // have taken a few bytes after `start`, when the peer's window opened a little: that
        // progress restarts the stall, so the drop comes within a second or two of it.)
        let ev = loop {
            tokio::time::advance(Duration::from_secs(1)).await;
            run_ready().await;
            if let Ok(ev) = d.rx.try_recv() {
                break ev;
            }
            assert!(
                start.elapsed() < WRITE_STALL * 2,
                "s is dropped once no write progressed for WRITE_STALL"
            );
        };
        hold.release().await;
        match &ev {
            Event::Closed {
                id,
                reason,
                graceful,
            } => {
                assert_eq!(*id, sid);
                assert!(reason.contains("write stalled") && !graceful, "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() >= WRITE_STALL, "not before the stall");
        d.server.handle_event(ev);
        d.server.end_turn().await.expect("turn");
        assert!(!d.server.conns.contains_key(&sid));

        // Nothing lost: s was anonymous, so what it ran goes back to the front of the queue
        // at once (a named mover would keep it for its grace), and item 9 it queued stays.
        let mut order = Vec::new();
        loop {
            d.turn_committed(&mut b, &status()).await;
            let st = match reply(&mut b, &mut db_).await {
                Some(Reply::Status(st)) => st,
                other => panic!("{other:?}"),
            };
            if st.pending_archive == 0 {
                assert_eq!(st.running_archive, 0, "{st:?}");
                assert_eq!(st.done_archive, 5, "each item done once: {st:?}");
                break;
            }
            d.turn_committed(&mut m, &recv(10)).await;
            let list = recv_list(reply(&mut m, &mut dm).await);
            for &n in &list {
                d.turn_committed(&mut m, &done(&hai(n))).await;
                assert!(
                    matches!(reply(&mut m, &mut dm).await, Some(Reply::Done(r)) if r.status == 0)
                );
            }
            order.extend(list);
        }
        let mut front = order[..taken.len()].to_vec();
        front.sort_unstable();
        let mut want = taken.clone();
        want.sort_unstable();
        assert_eq!(front, want, "s's items first: {order:?}");
        got.extend(order);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3, 5, 9], "every item exactly once");
    });
}

/// `clients_connected` as `m` sees it.
fn connected(m: &mut Client) -> u32 {
    match m.call(&status()) {
        Reply::Status(s) => s.clients_connected,
        other => panic!("{other:?}"),
    }
}

/// Polls `m`'s status until `clients_connected` is `want` (bounded).
fn wait_connected(m: &mut Client, want: u32, what: &str) {
    let start = std::time::Instant::now();
    while connected(m) != want {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: still not {want} connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads until the server closes `c` (bounded): the bytes received before, `None` if it
/// did not close.
fn closed_by_server(c: &mut Client) -> Option<usize> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 65536];
    let mut got = 0;
    while start.elapsed() < DEADLINE {
        match c.s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(got),
        }
    }
    None
}

#[test]
fn a_connection_behind_its_held_queue_is_dropped_at_once_when_reset_or_flooding() {
    let slow = SlowLookup::new();
    let owners = owner::Owners::with_lookup(slow.lookup());
    let (addr, thread) = spawn_loop(uid_config(), Box::new(NoStore), Some(owners));
    let mut m = Client::connect(addr);

    // A's queue waits for its owner; A then resets its connection.
    let mut a = Client::connect(addr);
    a.send(&queue(vec![hai(1)]));
    a.send(&status());
    slow.wait_called();
    assert_eq!(connected(&mut m), 2);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a linger struct of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&a.s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(a);
    // The engine hears of it while the lookup is still blocked, not when it ends.
    wait_connected(&mut m, 1, "a reset connection behind a held queue");

    // B's queue waits too; B floods the server with requests behind it: dropped past the bound.
    let mut b = Client::connect(addr);
    b.send(&queue(vec![hai(5)]));
    wait_connected(&mut m, 2, "b connected");
    let one = encode(&status());
    let flood: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * (owner::MAX_DEFERRED_REQUESTS + 1))
        .collect();
    // The server may close while this is still being written.
    let _ = b.s.write_all(&flood);
    assert_eq!(
        closed_by_server(&mut b),
        Some(0),
        "b dropped past the bound, its held queue and what followed unanswered"
    );
    wait_connected(&mut m, 1, "b dropped");
    assert!(
        slow.calls.load(Ordering::SeqCst) >= 1 && !*slow.gate.lock().unwrap(),
        "all of this while the lookups were blocked"
    );

    // The lookups end: both queues' requests are queued, none lost.
    slow.open();
    let start = std::time::Instant::now();
    loop {
        match m.call(&status()) {
            Reply::Status(s) if s.pending_archive == 2 => break,
            Reply::Status(s) => assert!(start.elapsed() < DEADLINE, "{s:?}"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        m.call(&WireRequest::Lock(LockRequest { locked: 2 })),
        Reply::Lock(r) if r.status == 0
    ));
    thread.join().expect("loop thread").expect("clean stop");
}

#[test]
fn the_port_may_be_a_service_name_as_with_getaddrinfo() {
    let addrs = resolve("127.0.0.1", "5123").unwrap();
    assert_eq!(addrs[0].port(), 5123);
    // Service names come from the system's services database, as upstream's getaddrinfo.
    if std::fs::read_to_string("/etc/services").is_ok_and(|s| s.contains("\nssh\t")) {
        assert_eq!(resolve("127.0.0.1", "ssh").unwrap()[0].port(), 22);
    }
    let e = resolve("127.0.0.1", "no-such-service")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("127.0.0.1:no-such-service") && e.contains("unknown port or service name"),
        "{e}"
    );
}

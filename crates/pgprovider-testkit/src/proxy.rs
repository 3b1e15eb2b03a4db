//! A fault-injecting TCP proxy, for network faults without `tc` or iptables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

/// What the proxy's connections report back: data held back by latency now, and open
/// connections by the reset count they started under (so a reset can be awaited).
#[derive(Debug, Default)]
struct Seen {
    held: AtomicUsize,
    by_epoch: Mutex<BTreeMap<u64, usize>>,
    closed: Notify,
    holding: Notify,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Faults {
    latency: Duration,
    blackhole: bool,
    refuse: bool,
    resets: u64,
}

/// An in-process TCP proxy on 127.0.0.1 in front of a node, with switchable faults.
///
/// Runs on the current tokio runtime; dropping it stops accepting and closes every
/// proxied connection.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use pgprovider_testkit::FaultProxy;
/// use std::time::Duration;
/// let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await?;
/// let url = format!("postgres://postgres@{}/postgres", proxy.addr());
/// proxy.set_latency(Duration::from_millis(50)); // every chunk, each way
/// proxy.blackhole();                            // accept, never forward
/// proxy.heal();
/// proxy.reset_all();                            // RST every open connection
/// proxy.refuse();                               // new connections refused
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    open: Arc<AtomicUsize>,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let open = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            target,
            rx,
            open.clone(),
            seen.clone(),
        ));
        Ok(FaultProxy {
            addr,
            target,
            faults,
            open,
            seen,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Proxied connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Chunks of data held back by latency or a blackhole right now (any connection, either
    /// direction): with latency set and one client sending, its request is in flight while
    /// this is above zero.
    pub fn held_chunks(&self) -> usize {
        self.seen.held.load(Ordering::SeqCst)
    }

    /// Waits until some data is held back (by latency or a blackhole): with latency set and
    /// one client sending, its request is then in flight, and a fault injected now hits it
    /// mid-way.
    pub async fn wait_held(&self) {
        loop {
            let holding = self.seen.holding.notified();
            tokio::pin!(holding);
            holding.as_mut().enable();
            if self.held_chunks() > 0 {
                return;
            }
            holding.await;
        }
    }

    /// Waits until every connection that was open at the last [`reset_all`](Self::reset_all)
    /// is closed: the reset has landed.
    pub async fn settled(&self) {
        loop {
            let closed = self.seen.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let resets = self.faults.borrow().resets;
            let left = self
                .seen
                .by_epoch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .range(..resets)
                .map(|(_, n)| *n)
                .sum::<usize>();
            if left == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Delays every chunk of data, in each direction, by `latency` (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Resets (TCP RST) every open connection; new ones are proxied as before.
    pub fn reset_all(&self) {
        self.faults.send_modify(|f| f.resets += 1);
    }

    /// Stops forwarding in both directions, on open and new connections alike, without
    /// closing anything: like a network that drops packets. Data is held, not lost, and
    /// flows again after [`heal`](Self::heal), as TCP retransmission would deliver it.
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.blackhole = true);
    }

    /// Closes the listening socket, so new connections are refused; open ones go on.
    pub fn refuse(&self) {
        self.faults.send_modify(|f| f.refuse = true);
    }

    /// Removes latency, blackhole and refusal.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.latency = Duration::ZERO;
            f.blackhole = false;
            f.refuse = false;
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.faults.send_modify(|f| f.resets += 1);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(128)
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut rx: watch::Receiver<Faults>,
    open: Arc<AtomicUsize>,
    seen: Arc<Seen>,
) {
    let mut listener = Some(listener);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let refuse = rx.borrow().refuse;
        if refuse {
            listener = None;
        } else if listener.is_none() {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "fault proxy cannot listen again");
                    return;
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                if let Ok((client, _)) = accepted {
                    let rx = rx.clone();
                    let open = open.clone();
                    let seen = seen.clone();
                    open.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(async move {
                        let epoch = rx.borrow().resets;
                        *seen.by_epoch.lock().unwrap_or_else(|e| e.into_inner()).entry(epoch).or_default() += 1;
                        proxy_one(client, target, rx, epoch, &seen).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        *seen.by_epoch.lock().unwrap_or_else(|e| e.into_inner()).entry(epoch).or_default() -= 1;
                        seen.closed.notify_waiters();
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn proxy_one(
    client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<Faults>,
    resets_at_start: u64,
    seen: &Seen,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        rst(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        // Each branch reads one chunk, then waits out the faults and forwards it; a reset
        // interrupts any of these waits.
        let (n, to_server) = tokio::select! {
            r = cr.read(&mut up) => (r, true),
            r = sr.read(&mut down) => (r, false),
            _ = reset_requested(&mut rx, resets_at_start) => break,
        };
        let n = match n {
            Ok(0) | Err(_) => return, // one side closed: close both (FIN)
            Ok(n) => n,
        };
        seen.held.fetch_add(1, Ordering::SeqCst);
        seen.holding.notify_waiters();
        let passed = pass_faults(&mut rx, resets_at_start).await;
        seen.held.fetch_sub(1, Ordering::SeqCst);
        if !passed {
            break;
        }
        let w = if to_server {
            sw.write_all(&up[..n]).await
        } else {
            cw.write_all(&down[..n]).await
        };
        if w.is_err() {
            return;
        }
    }
    // Reset: RST both sides instead of a clean FIN.
    if let (Ok(c), Ok(s)) = (cr.reunite(cw), sr.reunite(sw)) {
        rst(&c);
        rst(&s);
    }
}

/// Makes closing `s` send RST. `set_linger` is deprecated because a non-zero linger blocks
/// the thread on drop; a zero linger never blocks, it discards and resets.
#[allow(deprecated)]
fn rst(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn reset_requested(rx: &mut watch::Receiver<Faults>, since: u64) {
    let _ = rx.wait_for(|f| f.resets != since).await;
}

/// Waits out latency and blackhole; false when a reset came meanwhile.
async fn pass_faults(rx: &mut watch::Receiver<Faults>, since: u64) -> bool {
    let latency = rx.borrow().latency;
    if !latency.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(latency) => {}
            _ = reset_requested(rx, since) => return false,
        }
    }
    let cleared = rx.wait_for(|f| !f.blackhole || f.resets != since).await;
    matches!(cleared, Ok(f) if f.resets == since)
}

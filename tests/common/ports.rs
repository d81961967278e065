//! Ports for test daemons, shared by every test fixture and by meshbench's adapters.

use std::net::{IpAddr, TcpListener};

/// A port that was free on `ip` a moment ago. Ports come from 20000-31999, below the
/// kernel's ephemeral range (32768-60999), so no outgoing connection or `:0` bind (an
/// admin server, a test server) can take one between this call and the daemon's bind;
/// a per-process counter keeps two calls from returning the same port.
pub fn free_port_on(ip: IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN);
}

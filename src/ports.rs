//! Ports for daemons that one program starts together on loopback: `meshd demo`, the
//! integration tests and meshbench.
//!
//! They pick ports first and the daemons bind them later. A port from `bind(":0")` comes
//! from the kernel's ephemeral range (32768-60999 on Linux), the range every outgoing
//! connection takes its local port from: in the gap, any `connect()` on the machine may
//! take it, and the daemon's bind fails with "Address already in use". Ports from
//! 20000-31999 are never handed out that way; only a program binding that very port can
//! collide, and the listener returned here holds it until the caller lets go.

use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

const BASE: u32 = 20_000;
const SPAN: u32 = 12_000;

/// Binds a free port on `ip` from 20000-31999 and returns the listener holding it. A
/// per-process counter, started at an offset from the process id, walks the range, so
/// calls in one process never return the same port and two processes rarely try the same
/// ones. Fails only when every port of the range is taken.
pub fn bind_below_ephemeral(ip: IpAddr) -> std::io::Result<TcpListener> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return Ok(listener);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!(
            "no free port on {ip} in {BASE}-{} (below the ephemeral range)",
            BASE + SPAN - 1
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_held_and_below_the_ephemeral_range() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let held: Vec<TcpListener> = (0..50)
            .map(|_| bind_below_ephemeral(ip).expect("a free port"))
            .collect();
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50);
        // Held: binding one of them again fails while its listener lives.
        assert!(TcpListener::bind((ip, ports[0])).is_err());
    }
}

//! Ports for test daemons, shared by every test fixture.

use std::net::IpAddr;

/// A port that was free on `ip` a moment ago, from below the kernel's ephemeral range (see
/// `meshd::ports`), so no outgoing connection or `:0` bind (an admin server, a test
/// server) can take it between this call and the daemon's bind.
pub fn free_port_on(ip: IpAddr) -> u16 {
    meshd::ports::bind_below_ephemeral(ip)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

//! The `/status` document and the `/healthz` verdict, built from the link entries of
//! [`Metrics`]. `meshctl status` deserializes the same types, so the two cannot drift.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Metrics;

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// This host's peer name.
    pub host: String,
    /// Hash of the configuration files the daemon runs.
    pub config_hash: String,
    /// meshd version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Every link this daemon dials or has accepted, ordered by peer then direction.
    pub links: Vec<LinkReport>,
}

/// One link in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkReport {
    /// The peer at the other end.
    pub peer: String,
    /// `dialer` (this host dials it) or `acceptor` (the peer dialed this host).
    pub direction: String,
    /// `up` or `down`.
    pub state: String,
    /// How the latest link authenticated: `noise`, `psk` or `tls` (absent before the first).
    #[serde(default)]
    pub auth: Option<String>,
    /// This host dials the link for its forwards; `/healthz` fails while it is down.
    pub required: bool,
    /// Last measured keepalive round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Seconds since the last completed handshake.
    pub last_handshake_age_s: Option<u64>,
    /// Stream bytes received from the peer (all streams since start).
    pub bytes_in: u64,
    /// Stream bytes sent to the peer.
    pub bytes_out: u64,
    /// Streams open now.
    pub streams: i64,
    /// Times the link came up again after its first handshake.
    pub reconnects: u64,
    /// Why the link last went down or a dial last failed.
    pub last_error: Option<String>,
}

impl StatusReport {
    /// Links that are down.
    pub fn down(&self) -> impl Iterator<Item = &LinkReport> {
        self.links.iter().filter(|l| l.state != "up")
    }
}

impl Metrics {
    /// The current `/status` document.
    pub fn status(&self, host: &str, config_hash: &str, started: Instant) -> StatusReport {
        let now = Instant::now();
        let links = self
            .links()
            .iter()
            .map(|e| {
                let st = e.state();
                LinkReport {
                    peer: e.peer.to_string(),
                    direction: e.direction.as_str().to_owned(),
                    state: if st.live > 0 { "up" } else { "down" }.to_owned(),
                    auth: st.auth.map(str::to_owned),
                    required: e.required,
                    rtt_ms: st.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                    last_handshake_age_s: st.last_handshake.map(|t| (now - t).as_secs()),
                    bytes_in: e.bytes_in.load(Ordering::Relaxed),
                    bytes_out: e.bytes_out.load(Ordering::Relaxed),
                    streams: e.streams.load(Ordering::Relaxed),
                    reconnects: st.established.saturating_sub(1),
                    last_error: st.last_error.clone(),
                }
            })
            .collect();
        StatusReport {
            host: host.to_owned(),
            config_hash: config_hash.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: (now - started).as_secs(),
            links,
        }
    }

    /// `None` when healthy, else why not: draining for shutdown, or one line per required
    /// link that is down.
    pub fn unhealthy(&self) -> Option<String> {
        if self.is_draining() {
            return Some("draining: meshd is shutting down".to_owned());
        }
        let down: Vec<String> = self
            .links()
            .iter()
            .filter(|e| e.required && e.state().live == 0)
            .map(|e| {
                let why = e.state().last_error.clone();
                match why {
                    Some(why) => format!("link to {} is down: {why}", e.peer),
                    None => format!("link to {} is down", e.peer),
                }
            })
            .collect();
        if down.is_empty() {
            None
        } else {
            Some(down.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::PeerName;
    use crate::link::{Direction, LinkError};

    #[test]
    fn reports_links_and_health() {
        let m = Arc::new(Metrics::new("h", "v"));
        let b = PeerName::new("b").expect("name");
        m.require_link(&b);
        let started = Instant::now();
        let s = m.status("a", "h", started);
        assert_eq!(s.links.len(), 1);
        assert_eq!(s.links[0].state, "down");
        assert!(s.links[0].required);
        assert!(m
            .unhealthy()
            .is_some_and(|w| w.contains("link to b is down")));

        let link = m.link_up(&b, Direction::Dialer);
        link.rtt().observe(std::time::Duration::from_micros(1500));
        let s = m.status("a", "h", started);
        assert_eq!(s.links[0].state, "up");
        assert_eq!(s.links[0].rtt_ms, Some(1.5));
        assert_eq!(s.links[0].reconnects, 0);
        assert_eq!(m.unhealthy(), None);

        link.down(&LinkError::Closed);
        let again = m.link_up(&b, Direction::Dialer);
        let s = m.status("a", "h", started);
        assert_eq!(s.links[0].reconnects, 1);
        assert_eq!(s.links[0].last_error.as_deref(), Some("closed by peer"));
        drop(again);
        assert_eq!(m.status("a", "h", started).down().count(), 1);
    }
}

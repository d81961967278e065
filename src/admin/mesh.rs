//! Mesh-wide status: `GET /mesh` gathers this host's `/status` and, over each link this
//! host dials, the peer's own link table (a stream to the built-in `_status` service,
//! answered by the peer's exit side), and lays them out as an N×N matrix of who sees whom
//! up, with the asymmetries (A sees B up, B sees A down). `meshctl status --mesh` and the
//! page at `/` read the same document.
//!
//! Only peers this host dials can be asked: links carry streams from dialer to acceptor.
//! A peer that only dials this host shows up in the matrix through the tables of the
//! hosts that were reached, and its own row says why it has no report.

use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::StatusReport;
use crate::config::{PeerName, ServiceName};
use crate::link::{End, LinkHandle, Recv};

/// The links this host dials, by peer, as the daemon publishes them (replaced on reload).
pub type LinkDirectory = Arc<RwLock<BTreeMap<PeerName, watch::Receiver<Option<LinkHandle>>>>>;

/// How long one peer gets to answer; peers are asked at once, so this bounds `/mesh`.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest status document accepted from a peer.
pub const MAX_PEER_STATUS: usize = 1 << 20;

/// `GET /mesh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshReport {
    /// The host that gathered this report.
    pub host: String,
    /// Every host of the matrix, in name order, with its report or why there is none.
    pub hosts: Vec<HostView>,
    /// One cell per (host that reported, peer in its link table).
    pub cells: Vec<Cell>,
    /// Pairs whose two ends disagree about their link.
    pub asymmetries: Vec<Asymmetry>,
}

/// One host's row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostView {
    /// The host.
    pub host: String,
    /// Its `/status`, when it answered.
    pub report: Option<StatusReport>,
    /// Why there is no report (down, not dialed by the gathering host, refused).
    pub error: Option<String>,
}

/// What `from` sees of its link(s) with `to`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// The host whose table this comes from.
    pub from: String,
    /// The peer.
    pub to: String,
    /// `up` when any link between them is up (as `from` sees it), else `down`.
    pub state: String,
    /// The lowest round trip among the links that are up, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last error of a link that is down.
    pub last_error: Option<String>,
    /// The directions `from` has links in: `dialer`, `acceptor`.
    pub directions: Vec<String>,
}

/// A pair whose ends disagree: one sees the link up, the other down or not at all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Asymmetry {
    /// The end that sees the link up.
    pub up_at: String,
    /// The other end.
    pub other: String,
    /// What the other end sees: `down`, or `no link` when its table has no entry.
    pub other_sees: String,
}

impl MeshReport {
    /// Lays out the matrix from each host's report (pure: tested without a network).
    pub fn build(host: &str, mut hosts: Vec<HostView>) -> Self {
        let mut cells = Vec::new();
        let mut names: BTreeSet<String> = hosts.iter().map(|h| h.host.clone()).collect();
        for view in &hosts {
            let Some(report) = &view.report else { continue };
            let mut by_peer: BTreeMap<&str, Vec<&super::LinkReport>> = BTreeMap::new();
            for link in &report.links {
                by_peer.entry(link.peer.as_str()).or_default().push(link);
            }
            for (peer, links) in by_peer {
                names.insert(peer.to_owned());
                let up: Vec<_> = links.iter().filter(|l| l.state == "up").collect();
                let rtt_ms = up
                    .iter()
                    .filter_map(|l| l.rtt_ms)
                    .min_by(|a, b| a.total_cmp(b));
                let last_error = links
                    .iter()
                    .filter(|l| l.state != "up")
                    .find_map(|l| l.last_error.clone());
                cells.push(Cell {
                    from: view.host.clone(),
                    to: peer.to_owned(),
                    state: if up.is_empty() { "down" } else { "up" }.to_owned(),
                    rtt_ms,
                    last_error,
                    directions: links.iter().map(|l| l.direction.clone()).collect(),
                });
            }
        }
        for name in &names {
            if !hosts.iter().any(|h| &h.host == name) {
                hosts.push(HostView {
                    host: name.clone(),
                    report: None,
                    error: Some(format!(
                        "not asked: {host} does not dial {name}, so it cannot open a stream to it"
                    )),
                });
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let reported: BTreeSet<&str> = hosts
            .iter()
            .filter(|h| h.report.is_some())
            .map(|h| h.host.as_str())
            .collect();
        let mut asymmetries = Vec::new();
        for c in cells.iter().filter(|c| c.state == "up") {
            if !reported.contains(c.to.as_str()) {
                continue;
            }
            let back = cells.iter().find(|o| o.from == c.to && o.to == c.from);
            let other_sees = match back {
                Some(o) if o.state == "up" => continue,
                Some(o) => o.state.clone(),
                None => "no link".to_owned(),
            };
            asymmetries.push(Asymmetry {
                up_at: c.from.clone(),
                other: c.to.clone(),
                other_sees,
            });
        }
        Self {
            host: host.to_owned(),
            hosts,
            cells,
            asymmetries,
        }
    }

    /// What `from` sees of `to`, if its table has it.
    pub fn cell(&self, from: &str, to: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.from == from && c.to == to)
    }

    /// True when every host answered, every cell is up and no pair disagrees.
    pub fn all_up(&self) -> bool {
        self.hosts.iter().all(|h| h.report.is_some())
            && self.cells.iter().all(|c| c.state == "up")
            && self.asymmetries.is_empty()
    }
}

/// Gathers the mesh report: `own` plus every dialed peer's table, asked at once.
pub async fn gather(own: StatusReport, links: &LinkDirectory) -> MeshReport {
    let host = own.host.clone();
    let dialed: Vec<(PeerName, Option<LinkHandle>)> = links
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(peer, rx)| (peer.clone(), rx.borrow().clone()))
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for (peer, handle) in dialed {
        asks.spawn(async move {
            let answer = match handle {
                Some(h) if !h.is_closed() => {
                    match tokio::time::timeout(PEER_TIMEOUT, ask(&h)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {PEER_TIMEOUT:?}")),
                    }
                }
                _ => Err(format!("link to {peer} is down")),
            };
            (peer, answer)
        });
    }
    let mut hosts = vec![HostView {
        host: host.clone(),
        report: Some(own),
        error: None,
    }];
    while let Some(joined) = asks.join_next().await {
        let Ok((peer, answer)) = joined else { continue };
        let view = match answer {
            Ok(report) if report.host == peer.as_str() => HostView {
                host: peer.to_string(),
                report: Some(report),
                error: None,
            },
            Ok(report) => HostView {
                host: peer.to_string(),
                report: None,
                error: Some(format!("answered as {:?}", report.host)),
            },
            Err(why) => HostView {
                host: peer.to_string(),
                report: None,
                error: Some(why),
            },
        };
        hosts.push(view);
    }
    MeshReport::build(&host, hosts)
}

/// Opens a `_status` stream on `link` and reads the peer's status document.
async fn ask(link: &LinkHandle) -> Result<StatusReport, String> {
    let stream = link
        .open(&ServiceName::status())
        .await
        .map_err(|e| e.to_string())?;
    // No request: the FIN says so, and the exit answers and finishes its side.
    stream.finish().await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        match poll_fn(|cx| stream.poll_recv(cx, &mut batch, 64)).await {
            Recv::Data(n) => {
                for b in batch.drain(..) {
                    body.extend_from_slice(&b);
                }
                if body.len() > MAX_PEER_STATUS {
                    stream
                        .reset(crate::proto::frame::ResetCode::Cancelled)
                        .await;
                    return Err(format!("status larger than {MAX_PEER_STATUS} bytes"));
                }
                stream.consumed(n).await;
            }
            Recv::Fin => break,
            Recv::Ended(End::Refused(code)) => {
                return Err(format!(
                    "refused the status request ({code:?}): a meshd without mesh status?"
                ))
            }
            Recv::Ended(end) => return Err(end.to_string()),
        }
    }
    // Both FINs crossed: wait for the stream to close rather than reset it on drop.
    let _ = poll_fn(|cx| stream.poll_end(cx)).await;
    serde_json::from_slice(&body).map_err(|e| format!("not a status document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::LinkReport;

    fn link(peer: &str, direction: &str, up: bool) -> LinkReport {
        LinkReport {
            peer: peer.into(),
            direction: direction.into(),
            state: if up { "up" } else { "down" }.into(),
            auth: Some("noise".into()),
            required: direction == "dialer",
            rtt_ms: up.then_some(0.25),
            last_handshake_age_s: Some(1),
            bytes_in: 0,
            bytes_out: 0,
            streams: 0,
            reconnects: 0,
            last_error: (!up).then(|| "closed by peer".into()),
        }
    }

    fn view(host: &str, links: Vec<LinkReport>) -> HostView {
        HostView {
            host: host.into(),
            report: Some(StatusReport {
                host: host.into(),
                config_hash: "h".into(),
                version: "v".into(),
                uptime_s: 1,
                links,
            }),
            error: None,
        }
    }

    #[test]
    fn matrix_cells_and_asymmetries() {
        let hosts = vec![
            // a dials b and c; b's link to a is up at a but b sees it down.
            view(
                "a",
                vec![link("b", "dialer", true), link("c", "dialer", false)],
            ),
            view("b", vec![link("a", "acceptor", false)]),
            HostView {
                host: "c".into(),
                report: None,
                error: Some("link to c is down".into()),
            },
        ];
        let m = MeshReport::build("a", hosts);
        let names: Vec<&str> = m.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let ab = m.cell("a", "b").expect("a->b");
        assert_eq!((ab.state.as_str(), ab.rtt_ms), ("up", Some(0.25)));
        let ac = m.cell("a", "c").expect("a->c");
        assert_eq!(ac.state, "down");
        assert_eq!(ac.last_error.as_deref(), Some("closed by peer"));
        assert_eq!(m.cell("b", "a").map(|c| c.state.as_str()), Some("down"));
        assert!(m.cell("c", "a").is_none());
        // a sees b up, b sees a down: one asymmetry. c did not report: none about c.
        assert_eq!(
            m.asymmetries,
            [Asymmetry {
                up_at: "a".into(),
                other: "b".into(),
                other_sees: "down".into()
            }]
        );
        assert!(!m.all_up());
    }

    #[test]
    fn a_peer_with_no_entry_back_is_an_asymmetry_and_unasked_hosts_are_named() {
        let hosts = vec![
            view(
                "a",
                vec![link("b", "dialer", true), link("d", "acceptor", true)],
            ),
            view("b", vec![]),
        ];
        let m = MeshReport::build("a", hosts);
        assert_eq!(m.asymmetries.len(), 1);
        assert_eq!(m.asymmetries[0].other_sees, "no link");
        let d = m.hosts.iter().find(|h| h.host == "d").expect("d listed");
        assert!(d.report.is_none());
        assert!(d
            .error
            .as_deref()
            .is_some_and(|e| e.contains("does not dial d")));
    }

    #[test]
    fn a_full_symmetric_mesh_is_all_up() {
        let hosts = vec![
            view(
                "a",
                vec![link("b", "dialer", true), link("b", "acceptor", true)],
            ),
            view(
                "b",
                vec![link("a", "acceptor", true), link("a", "dialer", true)],
            ),
        ];
        let m = MeshReport::build("a", hosts);
        assert!(m.asymmetries.is_empty());
        assert!(m.all_up(), "{m:?}");
        assert_eq!(m.cell("a", "b").map(|c| c.directions.len()), Some(2));
    }
}

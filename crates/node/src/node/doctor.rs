//! `errand doctor`: for each device of the space, whether it can be reached right now and, if
//! not, why, in words a person can act on. It tries each device for real (one clock exchange,
//! `errand/clock/1`, which also measures its clock), and reads what this device knows: the
//! addresses each device published, the relay, when it was last seen, revocations.

use std::time::Duration;

use errand_sync::Role;
use errand_sync::schema::{DocId, index, now_millis};
use serde::{Deserialize, Serialize};

use super::Node;
use super::peers::dial_addr;
use crate::clock::SKEW_LIMIT_MS;
use crate::error::NodeError;

/// One thing found about a device: a code for programs and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `connected`, `reachable`, `unreachable`, `no_address`, `no_relay`, `never_connected`,
    /// `clock_skew`, `revoked`, `this_device`.
    pub code: String,
    pub text: String,
}

/// What `errand doctor` says of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub device: String,
    pub name: String,
    pub role: Role,
    pub this_device: bool,
    pub revoked: bool,
    pub connected: bool,
    /// Whether it answered just now (`None` for this device and revoked ones: not tried).
    pub reachable: Option<bool>,
    pub round_trip_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub clock_offset_ms: Option<i64>,
    /// The addresses and relay it published in the index.
    pub addrs: Vec<String>,
    pub relay: Option<String>,
    pub findings: Vec<Finding>,
}

fn finding(code: &str, text: impl Into<String>) -> Finding {
    Finding {
        code: code.to_owned(),
        text: text.into(),
    }
}

/// "3 min ago", for people.
pub fn ago(ms: i64, now: i64) -> String {
    let secs = now.saturating_sub(ms).max(0) / 1000;
    match secs {
        0..=9 => "just now".to_owned(),
        10..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

impl Node {
    /// Tries every other current member (at most `timeout` each, all at once) and says why
    /// each is or is not reachable.
    pub async fn doctor(&self, timeout: Duration) -> Result<Vec<Diagnosis>, NodeError> {
        self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let me = self.id();
        let now = now_millis();
        let published = self
            .repo
            .read(&DocId::index(), index::addrs)?
            .unwrap_or_default();
        let connected = self.replicator.connected_peers();
        let mut out = Vec::new();
        let mut probes = tokio::task::JoinSet::new();
        for m in membership.members() {
            let entry = published.iter().find(|a| a.device == m.device.to_string());
            let mut d = Diagnosis {
                device: m.device.to_string(),
                name: m.name.clone(),
                role: m.role,
                this_device: m.device == me,
                revoked: false,
                connected: connected.contains(&m.device),
                reachable: None,
                round_trip_ms: None,
                last_seen_ms: self.presence.last_seen(&m.device),
                clock_offset_ms: self.clocks.get(&m.device).map(|o| o.offset_ms),
                addrs: entry.map(|e| e.addrs.clone()).unwrap_or_default(),
                relay: entry.and_then(|e| e.relay.clone()),
                findings: Vec::new(),
            };
            if d.this_device {
                d.last_seen_ms = None;
                d.clock_offset_ms = None;
                d.findings.push(finding("this_device", "this device"));
            } else {
                let addr = dial_addr(m.device, &published, &self.lan.get(&m.device));
                let endpoint = self.endpoint.clone();
                let n = out.len();
                probes.spawn(async move {
                    let tried =
                        tokio::time::timeout(timeout, crate::clock::exchange(&endpoint, addr))
                            .await;
                    (n, tried)
                });
            }
            out.push(d);
        }
        while let Some(done) = probes.join_next().await {
            let Ok((n, tried)) = done else { continue };
            let d = &mut out[n];
            match tried {
                Ok(Ok(offset)) => {
                    d.reachable = Some(true);
                    d.round_trip_ms = Some(offset.rtt_ms);
                    d.clock_offset_ms = Some(offset.offset_ms);
                    if let Ok(device) = d.device.parse() {
                        self.clocks.set(device, offset);
                        self.presence.saw(device, true);
                    }
                    d.last_seen_ms = Some(now_millis());
                }
                Ok(Err(e)) => {
                    d.reachable = Some(false);
                    d.findings
                        .push(finding("unreachable", format!("not reachable now: {e}")));
                }
                Err(_) => {
                    d.reachable = Some(false);
                    d.findings.push(finding(
                        "unreachable",
                        format!(
                            "not reachable now: no answer within {} s",
                            timeout.as_secs()
                        ),
                    ));
                }
            }
        }
        for d in &mut out {
            if d.this_device {
                continue;
            }
            self.explain(d, now);
        }
        // Revoked devices: named, so nobody wonders why they never sync.
        for r in membership.counted_revocations() {
            if out.iter().any(|d| d.device == r.device.to_string()) {
                continue;
            }
            let cert = membership
                .chained_certificates()
                .iter()
                .find(|c| c.device == r.device);
            out.push(Diagnosis {
                device: r.device.to_string(),
                name: cert.map(|c| c.name.clone()).unwrap_or_default(),
                role: cert.map_or(Role::Phone, |c| c.role),
                this_device: false,
                revoked: true,
                connected: false,
                reachable: None,
                round_trip_ms: None,
                last_seen_ms: self.presence.last_seen(&r.device),
                clock_offset_ms: None,
                addrs: Vec::new(),
                relay: None,
                findings: vec![finding(
                    "revoked",
                    "revoked: no member syncs with it any more",
                )],
            });
        }
        Ok(out)
    }

    /// The findings that explain a device's state beyond the probe's own result.
    fn explain(&self, d: &mut Diagnosis, now: i64) {
        let heard_on_lan = d
            .device
            .parse()
            .is_ok_and(|device| !self.lan.get(&device).is_empty());
        if d.reachable == Some(true) {
            let how = if d.connected {
                "connected"
            } else {
                "reachable"
            };
            d.findings.insert(
                0,
                finding(
                    how,
                    format!(
                        "{how} now (round trip {} ms)",
                        d.round_trip_ms.unwrap_or_default()
                    ),
                ),
            );
        } else {
            if d.addrs.is_empty() && d.relay.is_none() && !heard_on_lan {
                d.findings.push(finding(
                    "no_address",
                    "no known address: it has not published one, and it was not heard on this network; it can still reach this device if it knows where this one is",
                ));
            }
            if self.relay.is_none() && d.relay.is_none() {
                d.findings.push(finding(
                    "no_relay",
                    "no relay configured on either device: only direct addresses work, so both must be on one network or reachable from each other (see --relay)",
                ));
            }
            match d.last_seen_ms {
                Some(at) => d
                    .findings
                    .push(finding("last_seen", format!("last seen {}", ago(at, now)))),
                None => d
                    .findings
                    .push(finding("never_connected", "never connected to this device")),
            }
        }
        if let Some(offset) = d.clock_offset_ms.filter(|o| o.abs() > SKEW_LIMIT_MS) {
            let dir = if offset > 0 { "ahead of" } else { "behind" };
            d.findings.push(finding(
                "clock_skew",
                format!(
                    "its clock is {} s {dir} this device's: approvals it asks for expire by its clock",
                    offset.abs() / 1000
                ),
            ));
        }
    }
}

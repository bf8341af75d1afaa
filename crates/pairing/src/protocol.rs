//! The pairing protocol, `errand/pair/1`.
//!
//! The joiner dials the host named in the ticket (QUIC's TLS proves it reached that key), sends
//! one [`JoinRequest`] carrying a proof that it knows the ticket's secret (never the secret
//! itself), and waits. The host checks the ticket, shows a verification code, waits for the
//! person at the desktop to confirm (or for `--yes`), signs a membership certificate with the
//! role it chose when it issued the ticket (a joiner that asks for another role is refused),
//! records it in the index document, and answers with the space's root, the index document and
//! the signatures of its changes. The joiner accepts the answer only if the root's key derives
//! the space id of its ticket. Every refusal is a one-line reason, and a refused attempt
//! changes nothing but the ticket's failure count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use errand_sync::schema::{DocId, index};
use errand_sync::{DeviceId, Repo, Role, SpaceId, wire};
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, SecretKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

use crate::membership::Certificate;
use crate::proof;
use crate::ticket::Ticket;

/// The ALPN of the pairing protocol.
pub const PAIR_ALPN: &[u8] = b"errand/pair/1";

/// A ticket burns after this many wrong proofs.
pub const MAX_FAILED_PROOFS: u32 = 3;
/// How long the host waits for the person at the desktop to confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_LIMIT: usize = 64 * 1024;
const RECORD_KIND: &str = "ticket";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinRequest {
    version: u32,
    ticket: String,
    name: String,
    /// The role the joiner expects, if it says; the ticket's role is the one it gets, and a
    /// request for another is refused.
    #[serde(default)]
    role: Option<Role>,
    addrs: Vec<String>,
    proof: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum JoinResponse {
    /// Followed by one frame holding the saved index document.
    Welcome {
        space: String,
        /// The space's root (its creator), whose key the space id is derived from.
        root: String,
        host_name: String,
    },
    Refused {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TicketState {
    Open,
    InUse,
    Spent,
}

/// What the host remembers of a ticket it issued.
#[derive(Debug, Serialize, Deserialize)]
struct TicketRecord {
    secret: String,
    expires_at: u64,
    state: TicketState,
    failures: u32,
    auto_confirm: bool,
    /// The role the joiner gets (records from before roles were chosen by the host: phone).
    #[serde(default = "default_role")]
    role: Role,
}

fn default_role() -> Role {
    Role::Phone
}

/// What happens on the host while devices pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PairingEvent {
    /// A device proved it holds a ticket; the person at the desktop should compare the code
    /// and confirm.
    Requested {
        ticket: String,
        device: String,
        name: String,
        role: Role,
        code: String,
    },
    Paired {
        ticket: String,
        device: String,
        name: String,
        role: Role,
    },
    Refused {
        ticket: String,
        device: String,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("cannot store the ticket: {0}")]
    Store(#[from] errand_sync::store::StoreError),
}

/// The host side: issues tickets and answers joiners. Registered on the router for
/// [`PAIR_ALPN`].
#[derive(Debug, Clone)]
pub struct PairingHost(Arc<HostInner>);

#[derive(Debug)]
struct HostInner {
    repo: Arc<Repo>,
    gate: Arc<crate::trust::MembershipGate>,
    secret_key: SecretKey,
    space: SpaceId,
    name: String,
    events: broadcast::Sender<PairingEvent>,
    pending: Mutex<HashMap<String, oneshot::Sender<bool>>>,
}

impl PairingHost {
    /// `gate` is refreshed as soon as a device is admitted, so that its first sync connection,
    /// which follows at once, is let in.
    pub fn new(
        repo: Arc<Repo>,
        gate: Arc<crate::trust::MembershipGate>,
        secret_key: SecretKey,
        space: SpaceId,
        name: String,
    ) -> Self {
        PairingHost(Arc::new(HostInner {
            repo,
            gate,
            secret_key,
            space,
            name,
            events: broadcast::channel(64).0,
            pending: Mutex::default(),
        }))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PairingEvent> {
        self.0.events.subscribe()
    }

    /// Issues a one-time ticket that admits a device as `role`, and remembers it durably. With
    /// `auto_confirm`, a joiner with a valid proof is admitted without asking.
    pub fn create_ticket(
        &self,
        addrs: Vec<std::net::SocketAddr>,
        relay: Option<String>,
        ttl: Duration,
        auto_confirm: bool,
        role: Role,
    ) -> Result<Ticket, TicketError> {
        let ticket = Ticket::new(
            self.0.secret_key.public(),
            addrs,
            relay,
            self.0.space,
            role,
            ttl,
            now_unix(),
        );
        let record = TicketRecord {
            secret: errand_sync::ids::hex(&ticket.secret),
            expires_at: ticket.expires_at,
            state: TicketState::Open,
            failures: 0,
            auto_confirm,
            role,
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        self.0
            .repo
            .store()
            .set_record(RECORD_KIND, &errand_sync::ids::hex(&ticket.id), &bytes)?;
        Ok(ticket)
    }

    /// The person at the desktop accepted (or declined) the device waiting on `ticket`.
    /// Returns false when nothing was waiting.
    pub fn confirm(&self, ticket: &str, accept: bool) -> bool {
        let waiter = self
            .0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket);
        waiter.is_some_and(|w| w.send(accept).is_ok())
    }

    /// Claims the ticket for one joiner: exactly one of several racing joiners gets `Ok`, with
    /// whether to admit without asking, the verification code and the ticket's role.
    fn claim(&self, req: &JoinRequest, joiner: &DeviceId) -> Result<(bool, String, Role), String> {
        let host = self.0.secret_key.public();
        let ticket_id = req.ticket.clone();
        let id_bytes = errand_sync::ids::parse_hex::<16>(&ticket_id)
            .ok_or_else(|| "this ticket is not valid here".to_owned())?;
        let outcome = self
            .0
            .repo
            .store()
            .update_record(RECORD_KIND, &ticket_id, |current| {
                let Some(mut record) =
                    current.and_then(|b| serde_json::from_slice::<TicketRecord>(b).ok())
                else {
                    return (
                        None,
                        Err("this ticket was not issued by this device".to_owned()),
                    );
                };
                let unchanged = |record: &TicketRecord| serde_json::to_vec(record).ok();
                match record.state {
                    TicketState::Spent => {
                        return (
                            unchanged(&record),
                            Err("this ticket has already been used".into()),
                        );
                    }
                    TicketState::InUse => {
                        return (
                            unchanged(&record),
                            Err("this ticket is being used by another device right now".into()),
                        );
                    }
                    TicketState::Open => {}
                }
                if record.expires_at <= now_unix() {
                    record.state = TicketState::Spent;
                    return (unchanged(&record), Err("this ticket has expired".into()));
                }
                let Some(secret) = errand_sync::ids::parse_hex::<32>(&record.secret) else {
                    return (None, Err("this ticket is damaged on the host".into()));
                };
                let proof_ok = errand_sync::ids::parse_hex::<32>(&req.proof).is_some_and(|p| {
                    proof::verify_join_proof(&secret, &id_bytes, joiner, &host, &p)
                });
                if !proof_ok {
                    record.failures += 1;
                    let reason = if record.failures >= MAX_FAILED_PROOFS {
                        record.state = TicketState::Spent;
                        "wrong proof for this ticket; too many attempts, the ticket is burnt"
                    } else {
                        "wrong proof for this ticket (the ticket text was altered?)"
                    };
                    return (unchanged(&record), Err(reason.into()));
                }
                // The host chose the role; a joiner asking for another gets a reason, and the
                // ticket stays open for a join that takes the role it offers.
                if let Some(asked) = req.role
                    && asked != record.role
                {
                    let reason = format!(
                        "this ticket admits a {}, not a {asked} (the desktop chooses the role: \
                         `errand pair --role {asked}`)",
                        record.role
                    );
                    return (unchanged(&record), Err(reason));
                }
                record.state = TicketState::InUse;
                let code = proof::verification_code(&secret, &host, joiner);
                let auto = record.auto_confirm;
                (unchanged(&record), Ok((auto, code, record.role)))
            });
        match outcome {
            Ok(result) => result,
            Err(e) => Err(format!("the host could not check the ticket: {e}")),
        }
    }

    fn finish_ticket(&self, ticket: &str) {
        let result = self
            .0
            .repo
            .store()
            .update_record(RECORD_KIND, ticket, |current| {
                let record = current.and_then(|b| serde_json::from_slice::<TicketRecord>(b).ok());
                let updated = record.map(|mut r| {
                    r.state = TicketState::Spent;
                    serde_json::to_vec(&r).unwrap_or_default()
                });
                (updated, ())
            });
        if let Err(e) = result {
            warn!("cannot mark ticket {ticket} spent: {e}");
        }
    }

    async fn handle(&self, conn: &Connection) -> Result<(), String> {
        let joiner = conn.remote_id();
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| "the joiner said nothing".to_owned())?
            .map_err(|e| format!("connection lost: {e}"))?;
        let frame = wire::read_frame(&mut recv, REQUEST_LIMIT)
            .await
            .map_err(|e| format!("bad request: {e}"))?
            .ok_or_else(|| "the joiner closed the stream".to_owned())?;
        let req: JoinRequest =
            serde_json::from_slice(&frame).map_err(|e| format!("bad request: {e}"))?;

        let mut role = None;
        let result: Result<(DeviceId, errand_sync::repo::SignedDoc), String> = async {
            if req.version != 1 {
                return Err(format!("unsupported pairing version {}", req.version));
            }
            let name = req.name.trim();
            if name.is_empty() || name.len() > 64 {
                return Err("a device name must have 1 to 64 characters".into());
            }
            let root = self
                .0
                .gate
                .pinned()
                .map(|(_, root)| root)
                .ok_or_else(|| "the host has no space yet".to_owned())?;
            let (auto_confirm, code, granted) = self.claim(&req, &joiner)?;
            role = Some(granted);
            let _ = self.0.events.send(PairingEvent::Requested {
                ticket: req.ticket.clone(),
                device: joiner.to_string(),
                name: name.to_owned(),
                role: granted,
                code,
            });
            let confirmed = if auto_confirm {
                true
            } else {
                let (tx, rx) = oneshot::channel();
                self.0
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(req.ticket.clone(), tx);
                matches!(
                    tokio::time::timeout(CONFIRM_TIMEOUT, rx).await,
                    Ok(Ok(true))
                )
            };
            // Whatever the answer, the ticket is now used up.
            self.finish_ticket(&req.ticket);
            if !confirmed {
                return Err("the desktop did not confirm this device".into());
            }
            self.admit(&joiner, name, granted, &req.addrs)
                .map_err(|e| format!("the host could not record the new device: {e}"))?;
            let index = self
                .0
                .repo
                .save_signed(&DocId::index())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the host has no space yet".to_owned())?;
            Ok((root, index))
        }
        .await;
        let (response, index) = match result {
            Ok((root, index)) => (
                JoinResponse::Welcome {
                    space: self.0.space.to_string(),
                    root: root.to_string(),
                    host_name: self.0.name.clone(),
                },
                Some(index),
            ),
            Err(reason) => (JoinResponse::Refused { reason }, None),
        };
        let header = serde_json::to_vec(&response).unwrap_or_default();
        wire::write_frame(&mut send, &header)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(index) = &index {
            wire::write_frame(&mut send, &index.bytes)
                .await
                .map_err(|e| e.to_string())?;
            let sigs: Vec<u8> = index
                .sigs
                .iter()
                .flat_map(|(hash, sig)| hash.iter().chain(sig.iter()).copied())
                .collect();
            wire::write_frame(&mut send, &sigs)
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = send.finish();
        // Wait for the joiner to read everything and close, so our close cannot cut it off.
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        // Announce only now that the joiner has the answer: a one-shot `errand pair` exits on
        // this event, and must not cut the answer off.
        if let JoinResponse::Refused { reason } = &response {
            let _ = self.0.events.send(PairingEvent::Refused {
                ticket: req.ticket.clone(),
                device: joiner.to_string(),
                reason: reason.clone(),
            });
        }
        if let (Some(_), Some(role)) = (&index, role) {
            info!(device = %joiner, name = %req.name, %role, "device paired");
            let _ = self.0.events.send(PairingEvent::Paired {
                ticket: req.ticket.clone(),
                device: joiner.to_string(),
                name: req.name.trim().to_owned(),
                role,
            });
        }
        Ok(())
    }

    /// Signs the new device's certificate and records it in the index, durably.
    fn admit(
        &self,
        device: &DeviceId,
        name: &str,
        role: Role,
        addrs: &[String],
    ) -> Result<(), errand_sync::repo::ChangeError> {
        let cert = Certificate::sign(
            &self.0.secret_key,
            self.0.space,
            *device,
            name,
            role,
            now_unix(),
        );
        let entry = crate::trust::member_entry(&cert);
        let addr_entry = index::AddrEntry {
            device: device.to_string(),
            addrs: addrs
                .iter()
                .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
                .take(16)
                .cloned()
                .collect(),
            relay: None,
        };
        let message = format!("device {name} added as {role} by {}", self.0.name);
        self.0.repo.change(&DocId::index(), &message, |tx| {
            index::put_member(tx, &entry)?;
            index::set_addrs(tx, &addr_entry)?;
            Ok(())
        })?;
        self.0.gate.refresh(&self.0.repo);
        Ok(())
    }
}

impl ProtocolHandler for PairingHost {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if let Err(reason) = self.handle(&connection).await {
            warn!(peer = %connection.remote_id(), "pairing failed: {reason}");
            connection.close(VarInt::from_u32(1), reason.as_bytes());
        }
        Ok(())
    }
}

/// What a joiner gets when the host admits it.
#[derive(Debug)]
pub struct Welcome {
    pub space: SpaceId,
    /// The space's root, checked against the ticket's space id.
    pub root: DeviceId,
    pub host: DeviceId,
    pub host_name: String,
    /// The saved index document, with our certificate in it.
    pub index: Vec<u8>,
    /// The signatures of its changes (change hash, signature).
    pub index_sigs: Vec<errand_sync::store::ChangeSig>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this ticket has expired; ask the desktop for a new one (errand pair)")]
    Expired,
    #[error("cannot reach the device that issued the ticket: {0}")]
    Unreachable(String),
    #[error("pairing refused: {0}")]
    Refused(String),
    #[error("pairing failed: {0}")]
    Protocol(String),
}

/// The verification code both devices show for this ticket.
pub fn code_for(ticket: &Ticket, joiner: &DeviceId) -> String {
    proof::verification_code(&ticket.secret, &ticket.host, joiner)
}

/// Pairs with the device that issued `ticket`. `role` is the role the joiner expects, if it
/// says: the host refuses a request for another role than its ticket's.
pub async fn join(
    endpoint: &Endpoint,
    ticket: &Ticket,
    name: &str,
    role: Option<Role>,
    my_addrs: Vec<String>,
) -> Result<Welcome, JoinError> {
    if ticket.is_expired(now_unix()) {
        return Err(JoinError::Expired);
    }
    let mut addr = EndpointAddr::new(ticket.host);
    for a in &ticket.addrs {
        addr = addr.with_ip_addr(*a);
    }
    if let Some(relay) = ticket.relay.as_ref().and_then(|r| r.parse().ok()) {
        addr = addr.with_relay_url(relay);
    }
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, PAIR_ALPN))
        .await
        .map_err(|_| JoinError::Unreachable("timed out".into()))?
        .map_err(|e| JoinError::Unreachable(e.to_string()))?;
    let me = endpoint.id();
    let request = JoinRequest {
        version: 1,
        ticket: errand_sync::ids::hex(&ticket.id),
        name: name.to_owned(),
        role,
        addrs: my_addrs,
        proof: errand_sync::ids::hex(&proof::join_proof(
            &ticket.secret,
            &ticket.id,
            &me,
            &ticket.host,
        )),
    };
    let proto = |e: wire::FrameError| JoinError::Protocol(e.to_string());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| JoinError::Unreachable(e.to_string()))?;
    let body = serde_json::to_vec(&request).map_err(|e| JoinError::Protocol(e.to_string()))?;
    wire::write_frame(&mut send, &body).await.map_err(proto)?;
    let wait = CONFIRM_TIMEOUT + Duration::from_secs(10);
    let header = tokio::time::timeout(wait, wire::read_frame(&mut recv, REQUEST_LIMIT))
        .await
        .map_err(|_| JoinError::Protocol("no answer from the host".into()))?
        .map_err(proto)?
        .ok_or_else(|| JoinError::Protocol("the host closed the stream".into()))?;
    let response: JoinResponse =
        serde_json::from_slice(&header).map_err(|e| JoinError::Protocol(e.to_string()))?;
    let result = match response {
        JoinResponse::Refused { reason } => Err(JoinError::Refused(reason)),
        JoinResponse::Welcome {
            space,
            root,
            host_name,
        } => {
            let index = wire::read_frame(&mut recv, wire::MAX_FRAME)
                .await
                .map_err(proto)?
                .ok_or_else(|| JoinError::Protocol("the host sent no index".into()))?;
            let sigs = wire::read_frame(&mut recv, wire::MAX_FRAME)
                .await
                .map_err(proto)?
                .ok_or_else(|| JoinError::Protocol("the host sent no signatures".into()))?;
            if sigs.len() % 96 != 0 {
                return Err(JoinError::Protocol(
                    "the host sent a malformed signature list".into(),
                ));
            }
            let index_sigs = sigs
                .chunks_exact(96)
                .map(|c| {
                    let (h, s) = c.split_at(32);
                    (
                        h.try_into().expect("32 bytes"),
                        s.try_into().expect("64 bytes"),
                    )
                })
                .collect();
            let space = space
                .parse()
                .map_err(|_| JoinError::Protocol("the host sent a bad space id".into()))?;
            if space != ticket.space {
                return Err(JoinError::Protocol(
                    "the host answered for another space".into(),
                ));
            }
            let root: DeviceId = root
                .parse()
                .map_err(|_| JoinError::Protocol("the host sent a bad root id".into()))?;
            if !crate::membership::is_root_of(&space, &root) {
                return Err(JoinError::Protocol(
                    "the host named a root that did not create this space".into(),
                ));
            }
            Ok(Welcome {
                space,
                root,
                host: ticket.host,
                host_name,
                index,
                index_sigs,
            })
        }
    };
    conn.close(VarInt::from_u32(0), b"done");
    result
}

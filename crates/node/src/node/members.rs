//! The space and its members: creating it, pairing devices in, joining, listing and
//! revoking devices, and what each member's role allows.

use std::time::Duration;

use errand_pairing::Ticket;
use errand_pairing::membership::{Certificate, Member};
use errand_pairing::protocol::{self as pairing, PairingEvent, PairingHost};
use errand_pairing::trust;
use errand_sync::schema::{self, DocId, index};
use errand_sync::{DeviceId, Role, SpaceId};
use iroh::EndpointAddr;
use tokio::sync::broadcast;

use super::{DeviceInfo, Joined, META_NAME, Node, TicketInfo, default_name, now_unix};
use crate::error::NodeError;
use crate::events::NodeEvent;

impl Node {
    pub(super) fn start_pairing_host(&self, space: SpaceId) {
        let host = PairingHost::new(
            self.repo.clone(),
            self.gate.clone(),
            self.secret_key.clone(),
            space,
            self.name(),
        );
        let mut rx = host.subscribe();
        let events = self.events.clone();
        let log = self.pairing_log.clone();
        self.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let ticket = match &ev {
                            PairingEvent::Requested { ticket, .. }
                            | PairingEvent::Paired { ticket, .. }
                            | PairingEvent::Refused { ticket, .. } => ticket.clone(),
                        };
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(ticket)
                            .or_default()
                            .push(ev.clone());
                        if let Some(ev) = NodeEvent::from_pairing(ev) {
                            let _ = events.send(ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        self.pairing.set(host);
    }

    /// Creates the space with this device as its first desktop, if this home has none.
    /// Returns the space id.
    pub fn init_space(&self, name: Option<&str>) -> Result<SpaceId, NodeError> {
        if let Some(space) = self.space() {
            return Ok(space);
        }
        let name = name.map_or_else(default_name, str::to_owned);
        let me = self.id();
        // The space id names its root: every joiner checks it against the root it is told.
        let space = errand_pairing::membership::space_id(&me);
        let cert = Certificate::sign(
            &self.secret_key,
            space,
            me,
            name.clone(),
            Role::Desktop,
            now_unix(),
        );
        let entry = trust::member_entry(&cert);
        // Before the first change: every change is signed for its space, and checked against
        // the membership rooted here.
        self.gate
            .pin(space, me)
            .map_err(|e| NodeError::Home(e.to_string()))?;
        self.repo.set_space(space)?;
        self.repo
            .create(&DocId::index(), &format!("space created by {name}"), |tx| {
                index::create(tx, &space.to_string(), &me.to_string())?;
                index::put_member(tx, &entry)
            })?;
        self.repo.store().set_meta(META_NAME, name.as_bytes())?;
        self.gate.refresh(&self.repo);
        self.start_pairing_host(space);
        self.publish_addrs()?;
        Ok(space)
    }

    /// Issues a one-time pairing ticket that admits a device as `role`.
    pub fn create_ticket(
        &self,
        ttl: Duration,
        auto_confirm: bool,
        role: Role,
    ) -> Result<TicketInfo, NodeError> {
        self.require_space()?;
        let may_add = self
            .membership()
            .and_then(|m| m.get(&self.id()).map(|m| m.role.may_add_devices()))
            .unwrap_or(false);
        if !may_add {
            return Err(NodeError::NotAllowed(
                "this device may not add devices".into(),
            ));
        }
        let host = self.pairing.get().ok_or(NodeError::NoSpace)?;
        let ticket = host.create_ticket(
            self.addrs(),
            self.relay.as_ref().map(ToString::to_string),
            ttl,
            auto_confirm,
            role,
        )?;
        Ok(TicketInfo {
            ticket: ticket.to_text(),
            id: errand_sync::ids::hex(&ticket.id),
            expires_at: ticket.expires_at,
            role,
        })
    }

    /// The `n`th pairing event of a ticket, waiting up to `timeout` for it.
    pub async fn pairing_event(
        &self,
        ticket: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Option<PairingEvent>, NodeError> {
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self
                .pairing_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(ticket)
                .and_then(|evs| evs.get(n).cloned())
            {
                return Ok(Some(ev));
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    pub fn confirm_pairing(&self, ticket: &str, accept: bool) -> Result<bool, NodeError> {
        let host = self.pairing.get().ok_or(NodeError::NoSpace)?;
        Ok(host.confirm(ticket, accept))
    }

    /// Pairs this home with the device that issued the ticket, in the role the ticket gives.
    /// With `role`, the join is refused (before dialling) unless the ticket gives that role.
    pub async fn join(
        &self,
        ticket: &str,
        name: Option<&str>,
        role: Option<Role>,
    ) -> Result<Joined, NodeError> {
        if let Some(space) = self.space() {
            return Err(NodeError::AlreadyPaired(space.to_string()));
        }
        let ticket: Ticket = ticket.parse()?;
        if let Some(asked) = role
            && asked != ticket.role
        {
            return Err(NodeError::BadInput(format!(
                "this ticket admits a {}, not a {asked}: the desktop chooses the role \
                 (`errand pair --role {asked}`)",
                ticket.role
            )));
        }
        let name = name.map_or_else(default_name, str::to_owned);
        let code = pairing::code_for(&ticket, &self.id());
        let _ = self.events.send(NodeEvent::JoinCode { code: code.clone() });
        let my_addrs = self.addrs().iter().map(ToString::to_string).collect();
        let welcome = pairing::join(&self.endpoint, &ticket, &name, role, my_addrs).await?;
        // The pin first: the index's changes are checked against the membership it roots.
        self.gate
            .pin(welcome.space, welcome.root)
            .map_err(|e| NodeError::Pairing(e.to_string()))?;
        self.repo.set_space(welcome.space)?;
        self.repo
            .import(&DocId::index(), &welcome.index, &welcome.index_sigs)
            .map_err(|e| NodeError::Pairing(e.to_string()))?;
        self.repo.store().set_meta(META_NAME, name.as_bytes())?;
        self.gate.refresh(&self.repo);
        if !self.gate_has_me() {
            return Err(NodeError::Pairing(
                "the host's index does not list this device".into(),
            ));
        }
        // The ticket's addresses are the freshest we know for the host.
        let mut host_addr = EndpointAddr::new(ticket.host);
        for a in &ticket.addrs {
            host_addr = host_addr.with_ip_addr(*a);
        }
        self.replicator.add_peer(host_addr);
        self.start_pairing_host(welcome.space);
        self.refresh_peers();
        Ok(Joined {
            space: welcome.space.to_string(),
            host: welcome.host.to_string(),
            host_name: welcome.host_name,
            code,
            role: ticket.role,
        })
    }

    /// The space's devices, verified.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, NodeError> {
        self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let addrs = self
            .repo
            .read(&DocId::index(), index::addrs)?
            .unwrap_or_default();
        let connected = self.replicator.connected_peers();
        Ok(membership
            .members()
            .map(|m| DeviceInfo {
                id: m.device.to_string(),
                name: m.name.clone(),
                role: m.role,
                added_by: m.added_by.to_string(),
                added_at: m.added_at,
                this_device: m.device == self.id(),
                connected: connected.contains(&m.device),
                addrs: addrs
                    .iter()
                    .find(|a| a.device == m.device.to_string())
                    .map(|a| a.addrs.clone())
                    .unwrap_or_default(),
                clock_offset_ms: (m.device != self.id())
                    .then(|| self.clocks.get(&m.device).map(|o| o.offset_ms))
                    .flatten(),
                last_seen_ms: if m.device == self.id() {
                    None
                } else if connected.contains(&m.device) {
                    Some(schema::now_millis())
                } else {
                    self.presence.last_seen(&m.device)
                },
            })
            .collect())
    }

    /// Finds a device by id prefix or name.
    pub fn resolve_device(&self, needle: &str) -> Result<DeviceInfo, NodeError> {
        let devices = self.devices()?;
        let matches: Vec<&DeviceInfo> = devices
            .iter()
            .filter(|d| d.id.starts_with(needle) || d.name == needle)
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(no_device(needle)),
            _ => Err(ambiguous_device(needle)),
        }
    }

    /// The device that runs tasks by default: the space's first desktop (its creator), else
    /// any desktop.
    pub(super) fn default_target(&self) -> Result<Target, NodeError> {
        self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let root = membership.root();
        let desktop = |m: &&Member| m.role == Role::Desktop;
        membership
            .get(&root)
            .filter(desktop)
            .or_else(|| membership.members().find(desktop))
            .map(|m| self.target(m))
            .ok_or_else(|| NodeError::NotFound("no desktop in this space to run tasks".into()))
    }

    /// A device to send work to, by id prefix or name, as [`Node::resolve_device`] finds it;
    /// from the membership alone, as every send asks for one.
    pub(super) fn resolve_target(&self, needle: &str) -> Result<Target, NodeError> {
        self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let matches: Vec<&Member> = membership
            .members()
            .filter(|m| m.device.to_string().starts_with(needle) || m.name == needle)
            .collect();
        match matches.as_slice() {
            [one] => Ok(self.target(one)),
            [] => Err(no_device(needle)),
            _ => Err(ambiguous_device(needle)),
        }
    }

    fn target(&self, m: &Member) -> Target {
        Target {
            id: m.device.to_string(),
            device: m.device,
            name: m.name.clone(),
            role: m.role,
            this_device: m.device == self.id(),
        }
    }

    /// Revokes a device: signs a revocation into the index, so that this device refuses it at
    /// once and every other member as soon as it has synced. What the revoked device already
    /// holds stays with it; it gets nothing new.
    ///
    /// Refused up front, as every member would ignore it: by a device whose role may not add
    /// devices, of the space's creator (the root), and of a desktop by anyone but the root.
    pub fn revoke(&self, needle: &str) -> Result<DeviceInfo, NodeError> {
        let space = self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let may = membership
            .get(&self.id())
            .is_some_and(|m| m.role.may_add_devices());
        if !may {
            return Err(NodeError::NotAllowed(
                "this device's role may not revoke devices".into(),
            ));
        }
        let device = self.resolve_device(needle)?;
        if device.this_device {
            return Err(NodeError::BadInput("a device cannot revoke itself".into()));
        }
        let id: DeviceId = device
            .id
            .parse()
            .map_err(|_| NodeError::NotFound(device.id.clone()))?;
        if let Err(reason) = membership.may_revoke(&self.id(), &id) {
            return Err(NodeError::NotAllowed(format!(
                "cannot revoke {}: {reason}",
                device.name
            )));
        }
        let revocation =
            errand_pairing::membership::Revocation::sign(&self.secret_key, space, id, now_unix());
        let entry = trust::revocation_entry(&revocation);
        self.repo.change(
            &DocId::index(),
            &format!("device {} revoked by {}", device.name, self.name()),
            |tx| index::put_revocation(tx, &entry),
        )?;
        self.gate.refresh(&self.repo);
        self.replicator
            .disconnect(&id, errand_sync::net::CLOSE_REVOKED, "revoked");
        Ok(device)
    }

    /// Whether `device` may decide approvals in this space.
    pub fn may_approve(&self, device: &DeviceId) -> bool {
        self.membership().is_some_and(|m| m.may_approve(device))
    }

    /// Whether a task `device` sent may run: it is a current member whose role sends tasks
    /// (a phone or a desktop; never a viewer, nor a revoked device).
    pub fn may_send(&self, device: &DeviceId) -> bool {
        self.membership()
            .and_then(|m| m.get(device).map(|m| m.role))
            .is_some_and(|r| matches!(r, Role::Phone | Role::Desktop))
    }

    /// A member's name.
    pub fn device_name(&self, device: &DeviceId) -> Option<String> {
        self.membership()
            .and_then(|m| m.get(device).map(|m| m.name.clone()))
    }

    /// This device's role in its space.
    pub fn role(&self) -> Option<Role> {
        self.membership()
            .and_then(|m| m.get(&self.id()).map(|m| m.role))
    }
}

/// A member to send work to.
pub(super) struct Target {
    pub(super) id: String,
    pub(super) device: DeviceId,
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) this_device: bool,
}

fn no_device(needle: &str) -> NodeError {
    NodeError::NotFound(format!(
        "no device {needle:?} in this space as this device knows it \
         (`errand sync` fetches what the others know)"
    ))
}

fn ambiguous_device(needle: &str) -> NodeError {
    NodeError::Ambiguous(format!("{needle:?} names more than one device"))
}

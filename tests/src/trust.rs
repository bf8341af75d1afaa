//! Only members sync: strangers are refused during the handshake, and the pairing protocol
//! gives a stranger nothing but a refusal unless it proves it holds a live ticket.

use std::time::Duration;

use errand_pairing::Ticket;
use errand_sync::{Role, SYNC_ALPN, wire};
use iroh::endpoint::ConnectionError;
use iroh::{EndpointAddr, SecretKey};

use crate::hostile::raw_endpoint;
use crate::support::{desktop, node, pair};

pub fn addr_of(node: &errand_node::Node) -> EndpointAddr {
    let mut addr = EndpointAddr::new(node.id());
    for a in node.addrs() {
        addr = addr.with_ip_addr(a);
    }
    addr
}

#[tokio::test]
async fn a_stranger_is_refused_before_any_document_byte() {
    let desk = desktop("desk").await;
    desk.node.send("secret plans", None, None).unwrap();
    let stranger = raw_endpoint(SecretKey::generate()).await;

    let refused = match stranger.connect(addr_of(&desk.node), SYNC_ALPN).await {
        Err(_) => true,
        Ok(conn) => {
            // The handshake may complete on our side before the refusal arrives; then the
            // connection must be closed with the not-a-member code and yield no data.
            let got = async {
                let (mut send, mut recv) = conn.open_bi().await?;
                let hello = errand_sync::replication::Msg::Hello {
                    version: errand_sync::replication::msg::PROTOCOL_VERSION,
                    digest: Default::default(),
                    docs: 0,
                };
                wire::write_frame(&mut send, &wire::uncompressed(&hello.encode())).await?;
                let frame = wire::read_frame(&mut recv, wire::MAX_FRAME).await?;
                anyhow::Ok(frame)
            }
            .await;
            assert!(
                !matches!(got, Ok(Some(_))),
                "a stranger received document bytes"
            );
            matches!(
                conn.closed().await,
                ConnectionError::ApplicationClosed(close) if close.error_code == 1u32.into()
            ) || matches!(
                conn.close_reason(),
                Some(ConnectionError::ConnectionClosed(_))
            )
        }
    };
    assert!(refused, "the stranger's connection was not refused");
    assert!(desk.node.replicator().connected_peers().is_empty());
    assert_eq!(desk.node.devices().unwrap().len(), 1);
}

#[tokio::test]
async fn wrong_proofs_are_refused_and_burn_the_ticket() {
    let desk = desktop("desk").await;
    let info = desk
        .node
        .create_ticket(Duration::from_secs(60), true, Role::Phone)
        .unwrap();
    let good: Ticket = info.ticket.parse().unwrap();

    for attempt in 0..3 {
        let mut forged = good.clone();
        forged.secret[0] ^= 1 + attempt;
        let stranger = node().await;
        let err = stranger
            .node
            .join(&forged.to_text(), Some("mallory"), Some(Role::Phone))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("wrong proof"), "{err}");
        assert!(stranger.node.space().is_none());
    }
    // Three wrong proofs burnt it: even the real holder is now refused.
    let late = node().await;
    let err = late
        .node
        .join(&info.ticket, Some("phone"), Some(Role::Phone))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already been used"), "{err}");
    assert_eq!(desk.node.devices().unwrap().len(), 1);
}

#[tokio::test]
async fn two_devices_racing_for_one_ticket_yield_exactly_one_member() {
    let desk = desktop("desk").await;
    let info = desk
        .node
        .create_ticket(Duration::from_secs(60), true, Role::Phone)
        .unwrap();
    let a = node().await;
    let b = node().await;
    let (ra, rb) = tokio::join!(
        a.node.join(&info.ticket, Some("a"), Some(Role::Phone)),
        b.node.join(&info.ticket, Some("b"), Some(Role::Phone))
    );
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} {rb:?}");
    assert_eq!(desk.node.devices().unwrap().len(), 2);
}

#[tokio::test]
async fn a_paired_phone_is_let_in_and_syncs() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    let sent = phone.node.send("hello", None, None).unwrap();
    crate::support::until(
        "the desktop holds the task",
        &[&desk.node, &phone.node],
        || {
            let ids = crate::support::task_ids(&desk.node);
            let task = sent.task.clone();
            async move { ids.contains(&task) }
        },
    )
    .await;
    let names: Vec<String> = desk
        .node
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&"phone".to_owned()) && names.contains(&"desk".to_owned()));
}

#[tokio::test]
async fn the_host_gives_the_tickets_role_whatever_the_joiner_asks() {
    let desk = desktop("desk").await;
    let info = desk
        .node
        .create_ticket(Duration::from_secs(60), true, Role::Viewer)
        .unwrap();
    assert_eq!(info.role, Role::Viewer);
    let ticket: Ticket = info.ticket.parse().unwrap();
    assert_eq!(ticket.role, Role::Viewer);

    // A joiner that goes around its own node's check and asks the host to be a desktop is
    // refused by the host, and the ticket stays good.
    let greedy = node().await;
    let err = errand_pairing::protocol::join(
        greedy.node.endpoint(),
        &ticket,
        "greedy",
        Some(Role::Desktop),
        vec![],
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("this ticket admits a viewer, not a desktop"),
        "{err}"
    );
    assert_eq!(desk.node.devices().unwrap().len(), 1);

    // Its node refuses before dialling.
    let err = greedy
        .node
        .join(&info.ticket, Some("greedy"), Some(Role::Desktop))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("admits a viewer"), "{err}");
    assert!(greedy.node.space().is_none());

    // Joining without asking makes it what the ticket says; the host pins the same root.
    let joined = greedy
        .node
        .join(&info.ticket, Some("tablet"), None)
        .await
        .unwrap();
    assert_eq!(joined.role, Role::Viewer);
    assert_eq!(greedy.node.role(), Some(Role::Viewer));
    let me = greedy.node.id();
    let on_desk = desk.node.devices().unwrap();
    let entry = on_desk.iter().find(|d| d.id == me.to_string()).unwrap();
    assert_eq!(entry.role, Role::Viewer);
    assert_eq!(
        greedy.node.space(),
        Some(errand_pairing::membership::space_id(&desk.node.id()))
    );
}

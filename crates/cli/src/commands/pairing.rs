//! Pairing from the host's side: the ticket shown as a QR code, and the person at the
//! terminal asked before a device is admitted.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use errand_node::control::Request;
use errand_node::node::{TicketInfo, short};
use errand_pairing::protocol::PairingEvent;
use errand_sync::Role;

use crate::session::Session;

/// Asks the person at this terminal whether to admit a device. `None` when there is no
/// terminal to ask on.
pub(super) async fn confirm(name: &str, role: Role, code: &str) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    out!("Admit {name:?} as {role}? Check that it shows the code {code}. [y/N]");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    Some(matches!(answer, Ok(Ok(line)) if matches!(line.trim(), "y" | "Y" | "yes")))
}

pub(super) fn no_terminal(name: &str) -> String {
    format!(
        "cannot ask whether to admit {name:?}: no terminal; use --yes to admit a device holding a valid ticket"
    )
}

pub(super) fn show_ticket(
    info: &TicketInfo,
    qr_png: Option<&Path>,
    ticket_file: Option<&Path>,
    json: bool,
) -> Result<()> {
    if let Some(path) = qr_png {
        errand_pairing::qr::write_png(&info.ticket, path, 8)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = ticket_file {
        std::fs::write(path, format!("{}\n", info.ticket))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        out!("{}", serde_json::to_string(info)?);
    } else {
        out!("{}", errand_pairing::qr::terminal(&info.ticket)?);
        out!(
            "Scan the code with the phone, or run on the other device:\n  errand join {}",
            info.ticket
        );
        out!(
            "The ticket works once and expires in {} s.",
            info.expires_at.saturating_sub(now_unix())
        );
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) async fn pair(
    session: &mut Session,
    qr_png: Option<&Path>,
    ticket_file: Option<&Path>,
    ttl: u64,
    yes: bool,
    role: Role,
    json: bool,
) -> Result<ExitCode> {
    let info: TicketInfo = session
        .call(Request::Ticket {
            ttl_secs: ttl,
            auto_confirm: yes,
            role,
        })
        .await?;
    show_ticket(&info, qr_png, ticket_file, json)?;
    if !json {
        out!("waiting for a device to join as {role}…");
    }
    let mut n = 0;
    let mut unconfirmable = None;
    loop {
        // Wait out the ticket, plus the time a person may take to confirm.
        let wait = info.expires_at.saturating_sub(now_unix()) + 130;
        let ev: Option<PairingEvent> = session
            .call(Request::PairingEvent {
                ticket: info.id.clone(),
                n,
                timeout_secs: wait,
            })
            .await?;
        n += 1;
        let Some(ev) = ev else {
            bail!("the ticket expired and no device joined");
        };
        if json {
            out!("{}", serde_json::to_string(&ev)?);
        }
        match ev {
            PairingEvent::Requested {
                ticket,
                name,
                code,
                role,
                ..
            } => {
                if !json {
                    out!("{name:?} ({role}) is joining; verification code {code}");
                }
                if !yes {
                    let accept = confirm(&name, role, &code).await;
                    let _: bool = session
                        .call(Request::ConfirmPairing {
                            ticket,
                            accept: accept.unwrap_or(false),
                        })
                        .await?;
                    if accept.is_none() {
                        // Report it once the joiner has been told, below.
                        unconfirmable = Some(name);
                    }
                }
            }
            PairingEvent::Paired {
                name, device, role, ..
            } => {
                if !json {
                    out!("paired with {name} ({role}, {})", short(&device));
                }
                return Ok(ExitCode::SUCCESS);
            }
            PairingEvent::Refused { reason, .. } => match unconfirmable {
                Some(name) => bail!("{}", no_terminal(&name)),
                None => bail!("pairing refused: {reason}"),
            },
        }
    }
}

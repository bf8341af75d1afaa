//! Notifications: when a task this desktop runs ends, or needs someone, POST a short message to
//! every endpoint that a current member registered for that event (`errand notify add`: a
//! self-hosted ntfy topic, a UnifiedPush endpoint), retrying with backoff, and record each
//! delivery's outcome on the task, so the phone can tell "notified at 09:14" from "notification
//! failed: connection refused".
//!
//! By default a message carries a generic title, the event and the task id: no prompt, result
//! or file content leaves the devices unless the endpoint was registered with `--content`. The
//! endpoints are written by members, so they are reached like `/fetch` reaches the web: only
//! public addresses unless the policy allows private ones (`allow_private_network`, which a
//! self-hosted ntfy on the LAN needs).

use std::sync::Arc;
use std::time::Duration;

use errand_sync::schema::index;
use errand_sync::schema::thread::{self, Notice};
use errand_sync::schema::{DocId, now_millis};
use errand_sync::{DeviceId, Repo};
use tracing::warn;

use crate::runner::Authority;
use crate::tools::fetch::reach;

/// Waits before each attempt after the first: three attempts over about five seconds.
pub const RETRY_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// One attempt gives up after this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a task's text a `--content` message carries.
const MAX_CONTENT: usize = 200;
/// The most task ids a message about several tasks names.
const MAX_NAMED: usize = 4;

/// What happened to a task that someone may want to hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Done,
    Failed,
    /// It waits for an approval.
    Approval,
    /// It waits for an answer.
    Question,
    /// Runs of a schedule were missed; the task is the catch-up run.
    Missed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Done => "done",
            Event::Failed => "failed",
            Event::Approval => "approval",
            Event::Question => "question",
            Event::Missed => "missed",
        }
    }

    fn says(self) -> &'static str {
        match self {
            Event::Done => "is done",
            Event::Failed => "failed",
            Event::Approval => "waits for your approval",
            Event::Question => "has a question for you",
            Event::Missed => "catches up on missed scheduled runs",
        }
    }

    /// [`Event::says`] of several tasks.
    fn say(self) -> &'static str {
        match self {
            Event::Done => "are done",
            Event::Failed => "failed",
            Event::Approval => "wait for your approval",
            Event::Question => "have questions for you",
            Event::Missed => "catch up on missed scheduled runs",
        }
    }
}

/// The message for one event, as POSTed.
pub fn message(event: Event, task: &str, content: Option<&str>) -> String {
    message_of(event, &[task], content)
}

/// The message for an event that several tasks reached together: "3 tasks failed (1a2b3c4d,
/// 5e6f7a8b, 9c0d1e2f)", naming the first few.
fn message_of(event: Event, tasks: &[&str], content: Option<&str>) -> String {
    let short = |t: &&str| t.get(..8).unwrap_or(t).to_owned();
    let mut text = match tasks {
        [task] => format!("task {} {}", short(task), event.says()),
        _ => {
            let shown: Vec<String> = tasks.iter().take(MAX_NAMED).map(short).collect();
            let more = if tasks.len() > MAX_NAMED { ", …" } else { "" };
            format!(
                "{} tasks {} ({}{more})",
                tasks.len(),
                event.say(),
                shown.join(", ")
            )
        }
    };
    if let Some(content) = content.filter(|c| !c.trim().is_empty()) {
        let cut: String = content.trim().chars().take(MAX_CONTENT).collect();
        text.push_str(": ");
        text.push_str(&cut);
    }
    text
}

/// The endpoints registered in the index, and the index epoch they were read at.
type Registered = (u64, Vec<index::NotifyEntry>);

/// Sends notifications for the tasks this desktop runs.
#[derive(Debug, Clone)]
pub struct Notifier {
    repo: Arc<Repo>,
    authority: Arc<dyn Authority>,
    allow_private: bool,
    /// Deliveries under way, so that a stopping desktop can let them finish.
    pending: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    /// Every registered endpoint, kept by the index epoch it was read at: a burst of failed
    /// tasks would otherwise read them from the index once each, and a new thread (the
    /// index's usual change) does not move the epoch.
    registered: Arc<std::sync::Mutex<Option<Registered>>>,
}

impl Notifier {
    pub fn new(repo: Arc<Repo>, authority: Arc<dyn Authority>, allow_private: bool) -> Notifier {
        Notifier {
            repo,
            authority,
            allow_private,
            pending: Arc::default(),
            registered: Arc::default(),
        }
    }

    /// Waits up to `within` for the deliveries under way (a stopping desktop's last news, such
    /// as a task interrupted by the stop, should still go out).
    pub async fn flush(&self, within: Duration) {
        let mut pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(within, async {
            while pending.join_next().await.is_some() {}
        })
        .await;
    }

    /// The endpoints registered for `event` by current members.
    fn endpoints(&self, event: Event) -> Vec<index::NotifyEntry> {
        // Read before the index, so that a change landing meanwhile reads it again next time.
        let epoch = self.repo.index_epoch();
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        let all = match &*registered {
            Some((at, all)) if *at == epoch => all.clone(),
            _ => match self.repo.read(&DocId::index(), index::notify_entries) {
                Ok(all) => {
                    let all = all.unwrap_or_default();
                    *registered = Some((epoch, all.clone()));
                    all
                }
                Err(e) => {
                    warn!("cannot read where to notify: {e}");
                    Vec::new()
                }
            },
        };
        drop(registered);
        all.into_iter()
            .filter(|entry| {
                entry
                    .device
                    .parse::<DeviceId>()
                    .is_ok_and(|d| self.authority.name(&d).is_some())
                    && entry.events.iter().any(|e| e == event.as_str())
            })
            .collect()
    }

    /// Tells every endpoint registered for `missed` that a schedule missed `count` runs and
    /// runs none of them (it skips missed runs). There is no task to record the delivery on.
    pub fn notify_missed(&self, schedule: &str, count: u64) {
        let short = schedule.get(..8).unwrap_or(schedule);
        let text = format!("schedule {short} missed {count} scheduled runs");
        for entry in self.endpoints(Event::Missed) {
            let (allow_private, text) = (self.allow_private, text.clone());
            let schedule = schedule.to_owned();
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.try_join_next().is_some() {}
            pending.spawn(async move {
                let (delivered, outcome) =
                    post(&entry.url, allow_private, "missed", &schedule, &text).await;
                if !delivered {
                    warn!(%schedule, "a missed-runs notification failed: {outcome}");
                }
            });
        }
    }

    /// Tells every endpoint registered for `event` by a current member, in the background.
    /// `content` is what a `--content` endpoint may see (the prompt, a result, a question).
    pub fn notify(&self, doc: &DocId, task: &str, event: Event, content: Option<&str>) {
        self.notify_tasks(doc, &[task.to_owned()], event, content);
    }

    /// [`Notifier::notify`] for tasks of one thread that reached `event` together (a queue of
    /// tasks that could not start): one message names them all and one change records its
    /// delivery on each, so that a burst does not wake a phone once per task, nor run into
    /// the push service's rate limit (an ntfy server by default takes 60 requests from a
    /// client at once, then one every 5 seconds). `content`, when given, must hold for all
    /// of them.
    pub fn notify_tasks(&self, doc: &DocId, tasks: &[String], event: Event, content: Option<&str>) {
        if tasks.is_empty() {
            return;
        }
        let ids: Vec<&str> = tasks.iter().map(String::as_str).collect();
        for entry in self.endpoints(event) {
            let text = message_of(event, &ids, content.filter(|_| entry.content));
            let this = self.clone();
            let (doc, tasks) = (doc.clone(), tasks.to_vec());
            let task = tasks.join(",");
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.try_join_next().is_some() {}
            pending.spawn(async move {
                // What the notification tells of may have been written lazily (an outcome
                // decided before anything ran): a phone must not hear of what a crash here
                // could still take back.
                if let Err(e) = this.repo.flush() {
                    warn!(%task, "not notifying: cannot make the task's state durable: {e}");
                    return;
                }
                let (delivered, outcome) =
                    post(&entry.url, this.allow_private, event.as_str(), &task, &text).await;
                let notice = Notice {
                    device: entry.device.clone(),
                    event: event.as_str().to_owned(),
                    at: now_millis(),
                    delivered,
                    outcome,
                };
                if let Err(e) =
                    this.repo
                        .change(&doc, &format!("notification {}", event.as_str()), |tx| {
                            for task in &tasks {
                                thread::add_notice(tx, task, &notice)?;
                            }
                            Ok(())
                        })
                {
                    warn!(%task, "cannot record a notification: {e}");
                }
            });
        }
    }
}

/// POSTs `text` to `url` as ntfy's publish API takes it (the message as the body, `Title` and
/// `Tags` headers; `X-Errand-Task` carries `task`, the task's id or several, comma-separated),
/// retrying after [`RETRY_AFTER`]; returns whether it was taken and how it went (`HTTP 200`,
/// or why not). Private addresses only with `allow_private`.
pub async fn post(
    url: &str,
    allow_private: bool,
    event: &str,
    task: &str,
    text: &str,
) -> (bool, String) {
    let url = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => return (false, format!("{url} is not an http(s) URL")),
    };
    // reqwest is built without a TLS provider of its own: the process's one (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("errand/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        if let Err(reason) = reach::check_url(&url) {
            return (false, reason);
        }
        builder = builder.no_proxy().dns_resolver(Arc::new(reach::PublicOnly));
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return (false, e.to_string()),
    };
    let mut last = String::new();
    for attempt in 0..=RETRY_AFTER.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_AFTER[attempt - 1]).await;
        }
        let sent = client
            .post(url.clone())
            .header("Title", "errand")
            .header("Tags", event)
            .header("X-Errand-Event", event)
            .header("X-Errand-Task", task)
            .body(text.to_owned())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                return (true, format!("HTTP {}", r.status().as_u16()));
            }
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) => last = error_chain(&e),
        }
    }
    (
        false,
        format!("{last} (after {} attempts)", RETRY_AFTER.len() + 1),
    )
}

/// An error with its causes, on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_no_content_unless_asked() {
        assert_eq!(
            message(Event::Done, "0123456789abcdef", None),
            "task 01234567 is done"
        );
        assert_eq!(
            message(Event::Approval, "0123456789abcdef", Some("rm -rf ~/tmp")),
            "task 01234567 waits for your approval: rm -rf ~/tmp"
        );
        let five = [
            "0123456789",
            "1123456789",
            "2123456789",
            "3123456789",
            "4123456789",
        ];
        assert_eq!(
            message_of(Event::Failed, &five[..2], Some("no model")),
            "2 tasks failed (01234567, 11234567): no model"
        );
        assert_eq!(
            message_of(Event::Done, &five, None),
            "5 tasks are done (01234567, 11234567, 21234567, 31234567, …)"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            message(Event::Failed, "t", Some(&long)).len(),
            "task t failed: ".len() + MAX_CONTENT
        );
    }
}

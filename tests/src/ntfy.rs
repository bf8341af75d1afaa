//! A stand-in for a push service: a local HTTP server that speaks ntfy's publish API (`POST
//! /<topic>` with the message as the body, `Title` and `Tags` headers; it answers with the
//! message as JSON). The push service itself cannot run here; this is the one stand-in, like
//! the scripted model. It records what it receives, and can refuse everything (HTTP 500).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message as published.
#[derive(Clone, Debug)]
pub struct Published {
    pub topic: String,
    pub title: Option<String>,
    pub tags: Option<String>,
    pub message: String,
}

/// A running stand-in; it stops with the test process.
#[derive(Debug, Clone)]
pub struct Ntfy {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Published>>>,
    attempts: Arc<Mutex<usize>>,
}

impl Ntfy {
    /// Starts a server on 127.0.0.1 that accepts (`refuse == false`) or answers every publish
    /// with HTTP 500.
    pub fn start(refuse: bool) -> Ntfy {
        Self::start_observing(refuse, |_| {})
    }

    /// [`Ntfy::start`], calling `observe` on each publish as it arrives, before it is
    /// answered: to look at the sender's state at the moment it posts.
    pub fn start_observing(refuse: bool, observe: impl Fn(&Published) + Send + 'static) -> Ntfy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the ntfy stand-in");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (r, a) = (received.clone(), attempts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                if let Some(p) = read_publish(&mut stream) {
                    observe(&p);
                    *a.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    if refuse {
                        let _ = stream.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        continue;
                    }
                    let body = serde_json::json!({
                        "id": "stand-in",
                        "event": "message",
                        "topic": p.topic,
                        "message": p.message,
                    })
                    .to_string();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    r.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                }
            }
        });
        Ntfy {
            addr,
            received,
            attempts,
        }
    }

    /// The URL of a topic.
    pub fn url(&self, topic: &str) -> String {
        format!("http://{}/{topic}", self.addr)
    }

    /// Everything published so far.
    pub fn received(&self) -> Vec<Published> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many publish requests arrived (refused ones included).
    pub fn attempts(&self) -> usize {
        *self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for a message matching `check`.
    pub fn wait_for(&self, timeout: Duration, check: impl Fn(&Published) -> bool) -> Published {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.received().into_iter().find(|p| check(p)) {
                return p;
            }
            assert!(
                Instant::now() < end,
                "no such message within {timeout:?}; received {:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_publish(stream: &mut std::net::TcpStream) -> Option<Published> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?, parts.next()?);
    if method != "POST" && method != "PUT" {
        return None;
    }
    let topic = path.trim_start_matches('/').to_owned();
    let (mut title, mut tags, mut length) = (None, None, 0usize);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim().to_owned();
        match name.to_ascii_lowercase().as_str() {
            "title" => title = Some(value),
            "tags" => tags = Some(value),
            "content-length" => length = value.parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Published {
        topic,
        title,
        tags,
        message: String::from_utf8_lossy(&body).into_owned(),
    })
}

//! The fetch tool: one HTTP GET, with a timeout and a bound on the body.
//!
//! Text responses (by content type, or UTF-8 bodies with none) become the task's text, cut at
//! `max_bytes` with a note: the start of a long page is still useful. Other responses (images,
//! PDFs, archives) become a [`BlobOutput`] with their content type, and one larger than
//! `max_bytes` is an error, since a cut binary is useless. Only `max_bytes` (plus one chunk) is
//! ever read from the network, however large the response.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;

use crate::action::{BlobOutput, ToolOutput};
use crate::tools::ToolError;
use crate::tools::shell::whole_seconds;

pub mod reach;

/// reqwest is built with `rustls-no-provider` so that the whole workspace uses ring (as iroh
/// does) rather than also compiling aws-lc. reqwest panics when building a client if no
/// provider is installed, so install ring first. Installing fails only if a provider is
/// already installed, which is just as good.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Fetches `url` with an HTTP GET.
///
/// A non-2xx status is [`ToolError::Failed`] naming the status; taking longer than `timeout`
/// overall is [`ToolError::TimedOut`]. Unless `allow_private` (the policy's
/// `allow_private_network`), only public addresses are reached, at every redirect hop
/// ([`reach`]); system proxies are then not used either, since a proxy would resolve names where
/// we cannot check them.
pub async fn fetch(
    url: &str,
    timeout: Duration,
    max_bytes: usize,
    allow_private: bool,
) -> Result<ToolOutput, ToolError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("errand/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|err| ToolError::Failed(format!("fetch {url}: {err}")))?;
        reach::check_url(&parsed)
            .map_err(|reason| ToolError::Failed(format!("fetch {url}: {reason}")))?;
        builder = builder
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(reach::PublicOnly))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                let to = attempt.url().to_string();
                match reach::check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(format!("redirected to {to}: {reason}")),
                }
            }));
    }
    let client = builder
        .build()
        .map_err(|err| ToolError::Failed(format!("cannot set up HTTP: {}", chain(&err))))?;
    let request_error = |err: reqwest::Error| {
        if err.is_timeout() {
            ToolError::TimedOut(whole_seconds(timeout))
        } else {
            ToolError::Failed(format!("fetch {url}: {}", chain(&err)))
        }
    };

    let mut response = client.get(url).send().await.map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ToolError::Failed(format!("HTTP {status} from {url}")));
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let declared_text = content_type.as_deref().map(is_text_type);
    let content_length = response.content_length();
    let too_large = || {
        ToolError::Failed(format!(
            "{url}: the response ({}) is larger than the {max_bytes}-byte limit",
            content_type.as_deref().unwrap_or("no content type")
        ))
    };
    if declared_text == Some(false) && content_length.is_some_and(|len| len > max_bytes as u64) {
        return Err(too_large());
    }

    let mut body: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        let room = max_bytes - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }

    let is_text = declared_text.unwrap_or_else(|| looks_like_utf8(&body, truncated));
    if is_text {
        let mut text = decode_text(&body, truncated);
        if truncated {
            let total = match content_length {
                Some(len) => format!("{len} bytes"),
                None => format!("more than {max_bytes} bytes"),
            };
            text.push_str(&format!(
                "\n[truncated: the response is {total}; only the first {} are shown]",
                body.len()
            ));
        }
        return Ok(ToolOutput::text(text));
    }
    if truncated {
        return Err(too_large());
    }
    let mime = content_type
        .as_deref()
        .map(essence)
        .filter(|mime| !mime.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let name = response
        .url()
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .filter(|segment| !segment.is_empty())
        .unwrap_or("download")
        .to_owned();
    let summary = format!(
        "fetched {url}: {} bytes of {mime}, attached as {name}",
        body.len()
    );
    Ok(ToolOutput {
        text: summary,
        blobs: vec![BlobOutput {
            name,
            mime,
            bytes: body,
        }],
    })
}

/// The media type without parameters, lower-cased: `Text/HTML; charset=utf-8` → `text/html`.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a content type is text a person or a model can read.
fn is_text_type(content_type: &str) -> bool {
    let mime = essence(content_type);
    mime.starts_with("text/")
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-javascript"
                | "application/toml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/x-sh"
                | "application/x-www-form-urlencoded"
        )
}

/// Whether a body without a content type is UTF-8, allowing a character cut by truncation.
fn looks_like_utf8(body: &[u8], truncated: bool) -> bool {
    match std::str::from_utf8(body) {
        Ok(_) => true,
        Err(err) => truncated && err.error_len().is_none(),
    }
}

/// Text from a body: a character cut by truncation is dropped; other invalid bytes become
/// U+FFFD (the declared charset is not consulted: nearly everything is UTF-8 now).
fn decode_text(body: &[u8], truncated: bool) -> String {
    let end = match std::str::from_utf8(body) {
        Err(err) if truncated && err.error_len().is_none() => err.valid_up_to(),
        _ => body.len(),
    };
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// An error with its causes on one line; reqwest's own message alone ("error sending request")
/// hides the reason (connection refused, certificate, DNS).
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Reads one request's head; returns its request line.
    fn read_request(stream: &TcpStream) -> String {
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
        }
        first.trim_end().to_owned()
    }

    /// Serves one canned HTTP/1.1 response on 127.0.0.1, then closes. Returns the base URL and
    /// a handle yielding the request line received.
    fn serve_once(
        status: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&stream);
            stream.write_all(head.as_bytes()).unwrap();
            // The client may stop reading early (truncation); that is fine.
            let _ = stream.write_all(&body);
            request
        });
        (base, handle)
    }

    /// Without the policy's `allow_private_network`, loopback is refused before any
    /// connection is made, whether named by address or by a name that resolves to it.
    #[tokio::test]
    async fn loopback_is_refused_unless_the_policy_allows_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let err = fetch(&url, TIMEOUT, 1000, false).await.unwrap_err();
            assert!(
                err.to_string().contains("allow_private_network"),
                "{url}: {err}"
            );
        }
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the server was contacted"
        );
    }

    #[tokio::test]
    async fn text_body_becomes_text() {
        let (base, server) = serve_once(
            "200 OK",
            Some("text/plain; charset=utf-8"),
            b"hello\n".to_vec(),
        );
        let out = fetch(&format!("{base}/greeting?x=1"), TIMEOUT, 1000, true)
            .await
            .unwrap();
        assert_eq!(out, ToolOutput::text("hello\n"));
        assert_eq!(server.join().unwrap(), "GET /greeting?x=1 HTTP/1.1");
    }

    #[tokio::test]
    async fn json_and_untyped_utf8_are_text() {
        let (base, server) = serve_once("200 OK", Some("application/problem+json"), b"{}".to_vec());
        assert_eq!(fetch(&base, TIMEOUT, 1000, true).await.unwrap().text, "{}");
        server.join().unwrap();
        let (base, server) = serve_once("200 OK", None, "plain é".as_bytes().to_vec());
        assert_eq!(
            fetch(&base, TIMEOUT, 1000, true).await.unwrap().text,
            "plain é"
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn long_text_is_truncated_with_a_note() {
        let body = "é".repeat(100).into_bytes(); // 200 bytes, 2 per char
        let (base, server) = serve_once("200 OK", Some("text/html"), body);
        let out = fetch(&base, TIMEOUT, 11, true).await.unwrap();
        assert_eq!(
            out.text,
            format!(
                "{}\n[truncated: the response is 200 bytes; only the first 11 are shown]",
                "é".repeat(5)
            )
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn binary_body_becomes_a_blob() {
        let png = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 0xff];
        let (base, server) = serve_once("200 OK", Some("image/png"), png.clone());
        let url = format!("{base}/img/logo.png");
        let out = fetch(&url, TIMEOUT, 1000, true).await.unwrap();
        assert_eq!(
            out.blobs,
            vec![BlobOutput {
                name: "logo.png".into(),
                mime: "image/png".into(),
                bytes: png,
            }]
        );
        assert_eq!(
            out.text,
            format!("fetched {url}: 8 bytes of image/png, attached as logo.png")
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn oversized_binary_is_an_error() {
        let (base, server) = serve_once("200 OK", Some("application/pdf"), vec![0; 100]);
        let err = fetch(&base, TIMEOUT, 10, true).await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("the response (application/pdf) is larger than the 10-byte limit"),
            "{err}"
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn non_2xx_is_an_error_with_the_status() {
        let (base, server) = serve_once("404 Not Found", Some("text/plain"), b"nope".to_vec());
        let url = format!("{base}/missing");
        let err = fetch(&url, TIMEOUT, 1000, true).await.unwrap_err();
        assert!(matches!(err, ToolError::Failed(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("HTTP 404 Not Found from {url}"));
        server.join().unwrap();
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&stream);
            // Say nothing; return when the client gives up and closes.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        });
        let err = fetch(&base, Duration::from_millis(500), 1000, true)
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut(1)), "{err:?}");
        // The server returns once the abandoned connection is closed. Join off the runtime so
        // the client's connection task can run and close it.
        let joined = tokio::task::spawn_blocking(move || server.join());
        tokio::time::timeout(TIMEOUT, joined)
            .await
            .expect("the timed-out connection was not closed")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn connection_refused_is_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let err = fetch(&url, TIMEOUT, 1000, true).await.unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with(&format!("fetch {url}: ")), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }

    /// The TLS path needs the crypto provider: an https URL must produce an error, not a
    /// panic, when the peer does not speak TLS.
    #[tokio::test]
    async fn https_uses_the_installed_provider() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let err = fetch(&url, TIMEOUT, 1000, true).await.unwrap_err();
        assert!(matches!(err, ToolError::Failed(_)), "{err:?}");
        // The failure is the handshake, not setting up the client.
        assert!(
            err.to_string().starts_with(&format!("fetch {url}: ")),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn content_types() {
        assert!(is_text_type("Text/HTML; charset=utf-8"));
        assert!(is_text_type("application/json"));
        assert!(is_text_type("application/atom+xml"));
        assert!(!is_text_type("image/png"));
        assert!(!is_text_type("application/octet-stream"));
        assert_eq!(essence(" Image/PNG ; q=1"), "image/png");
        assert!(looks_like_utf8(&[0xc3], true));
        assert!(!looks_like_utf8(&[0xc3], false));
        assert!(!looks_like_utf8(&[0xff, b'a'], true));
    }
}

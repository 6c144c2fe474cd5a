//! A minimal HTTP/1.1 client for talking to our own gateway (devnet readiness, benchmarks):
//! one request per connection, plain and server-sent-event responses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn open(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> anyhow::Result<TcpStream> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("{base} is not an http:// URL"))?;
    let mut s = TcpStream::connect(authority).with_context(|| format!("connecting to {base}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.set_nodelay(true)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(s)
}

/// One request; returns the status and the (de-chunked) body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut raw = Vec::new();
    open(base, method, path, key, body)?
        .take(16 << 20)
        .read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("response without a header")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("response without a status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// What a streamed completion looked like from the client.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// From sending the request to the first content chunk.
    pub first_token: Duration,
    /// From sending the request to `[DONE]`.
    pub total: Duration,
    /// Completion tokens reported in the usage chunk.
    pub completion_tokens: u64,
    /// The text.
    pub text: String,
}

/// A streamed chat completion (the body must set `"stream": true` and include usage).
pub fn stream(base: &str, key: &str, path: &str, body: &str) -> anyhow::Result<Streamed> {
    let start = Instant::now();
    let s = open(base, "POST", path, key, Some(body))?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let mut first = None;
    let mut text = String::new();
    let mut tokens = 0;
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    if !status_line.contains(" 200 ") {
        let mut rest = String::new();
        let _ = reader.take(4096).read_to_string(&mut rest);
        bail!("{} {}", status_line.trim(), rest.trim());
    }
    while reader.read_line(&mut line)? > 0 {
        if let Some(data) = line.trim().strip_prefix("data: ") {
            if data == "[DONE]" {
                return Ok(Streamed {
                    first_token: first.unwrap_or_else(|| start.elapsed()),
                    total: start.elapsed(),
                    completion_tokens: tokens,
                    text,
                });
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if let Some(e) = v.get("error") {
                bail!("stream error: {e}");
            }
            let delta = &v["choices"][0];
            let piece = delta["delta"]["content"]
                .as_str()
                .or_else(|| delta["text"].as_str())
                .unwrap_or("");
            if !piece.is_empty() {
                first.get_or_insert_with(|| start.elapsed());
                text.push_str(piece);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
        line.clear();
    }
    bail!("the stream ended without [DONE]")
}

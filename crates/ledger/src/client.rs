//! A typed, blocking client for the ledger API over plain HTTP/1.1 (loopback or a trusted
//! network; no TLS). Responses are size-bounded and parsed defensively.

use crate::api::{AccountView, ErrorBody, StatusView, SubmitReceipt, TxLocation};
use crate::block::Block;
use crate::error::ClientError;
use crate::state::Channel;
use crate::store::BlockEvents;
use crate::tx::SignedTx;
use agora_core::{AccountId, Hash32};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// A client for one ledger node.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    prefix: String,
    timeout: Duration,
}

impl Client {
    /// A client for `url`, like `http://127.0.0.1:7420`.
    pub fn new(url: &str) -> Result<Client, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(url.into()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(ClientError::BadUrl(url.into()));
        }
        Ok(Client {
            authority: authority.into(),
            prefix: prefix.into(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets the per-request timeout (default 30 s).
    pub fn with_timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let addr = self
            .authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ClientError::BadUrl(self.authority.clone()))?;
        let timeout = self.timeout + extra;
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.prefix,
            self.authority,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req)?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_to_end(&mut raw)?;
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::TooLarge(MAX_RESPONSE_BYTES));
        }
        parse_response(&raw)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: Duration,
    ) -> Result<T, ClientError> {
        let (status, body) = self.request(method, path, body, extra)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body)
                .map_err(|e| ClientError::BadResponse(e.to_string()));
        }
        let err: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let (code, message) = err.map_or_else(
            || {
                (
                    String::new(),
                    String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                )
            },
            |e| (e.error.code, e.error.message),
        );
        if status == 422 {
            Err(ClientError::Rejected { code, message })
        } else {
            Err(ClientError::Http {
                status,
                message: if code.is_empty() {
                    message
                } else {
                    format!("{code}: {message}")
                },
            })
        }
    }

    fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        match self.call("GET", path, None, Duration::ZERO) {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Submits a transaction; returns once its block is durably committed.
    pub fn submit(&self, tx: &SignedTx) -> Result<SubmitReceipt, ClientError> {
        let body = serde_json::to_vec(tx).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.call("POST", "/v1/tx", Some(&body), Duration::ZERO)
    }

    /// Chain status.
    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.call("GET", "/v1/status", None, Duration::ZERO)
    }

    /// An account, or `None` if unknown.
    pub fn account(&self, id: &AccountId) -> Result<Option<AccountView>, ClientError> {
        self.get_opt(&format!("/v1/accounts/{id}"))
    }

    /// The next nonce of `id` (0 for an unknown account).
    pub fn next_nonce(&self, id: &AccountId) -> Result<u64, ClientError> {
        Ok(self.account(id)?.map_or(0, |a| a.nonce))
    }

    /// The audit plan of `provider`'s root for `epoch`, or `None` until the root and its
    /// selecting beacon (the next epoch's) exist.
    pub fn audit_plan(
        &self,
        provider: &AccountId,
        epoch: u64,
    ) -> Result<Option<crate::AuditPlan>, ClientError> {
        self.get_opt(&format!("/v1/roots/{provider}/{epoch}/plan"))
    }

    /// A channel, or `None` if unknown.
    pub fn channel(&self, id: &Hash32) -> Result<Option<Channel>, ClientError> {
        self.get_opt(&format!("/v1/channels/{id}"))
    }

    /// Where transaction `id` was committed, or `None`.
    pub fn tx(&self, id: &Hash32) -> Result<Option<TxLocation>, ClientError> {
        self.get_opt(&format!("/v1/txs/{id}"))
    }

    /// The block at `height`, or `None`.
    pub fn block(&self, height: u64) -> Result<Option<Block>, ClientError> {
        self.get_opt(&format!("/v1/blocks/{height}"))
    }

    /// Up to `limit` blocks from `from`.
    pub fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/blocks?from={from}&limit={limit}"),
            None,
            Duration::ZERO,
        )
    }

    /// Events of blocks from height `from`, waiting up to `wait` for one to appear.
    pub fn events(&self, from: u64, wait: Duration) -> Result<Vec<BlockEvents>, ClientError> {
        let ms = wait.as_millis().min(u128::from(u64::MAX)) as u64;
        self.call(
            "GET",
            &format!("/v1/events?from={from}&wait_ms={ms}"),
            None,
            wait,
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let bad = |m: &str| ClientError::BadResponse(m.into());
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = Some(v.parse().map_err(|_| bad("bad content-length"))?);
        }
    }
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..i]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies_and_refuses_truncation() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").ok();
        assert_eq!(r, Some((200, b"{}".to_vec())));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").ok();
        assert_eq!(r, Some((404, b"abcde".to_vec())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn url_must_be_plain_http_with_port() {
        assert!(Client::new("http://127.0.0.1:80").is_ok());
        assert!(Client::new("https://127.0.0.1:80").is_err());
        assert!(Client::new("http://localhost").is_err());
    }
}

//! A fake network, a real server on 127.0.0.1:0, and a tiny blocking HTTP/1.1 client.

use agora_gateway::{
    Backend, BackendError, Caller, Capabilities, FinishReason, Job, KeyStore, Limits, ModelInfo,
    PriceRange, Pricing, ReceiptRef, Started, StreamEvent, Usage,
};
use futures::future::BoxFuture;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stands in for the network in these tests only. The model name picks the behaviour.
#[derive(Default)]
pub struct FakeBackend {
    pub last_job: Mutex<Option<Job>>,
    /// Every job started, in order.
    pub jobs: Mutex<Vec<Job>>,
    pub last_caller: Mutex<Option<Caller>>,
    /// Set when a "slow" job notices its receiver was dropped.
    pub cancelled: Arc<AtomicBool>,
    /// What model "scripted" answers, piece by piece (each with log-probabilities when the
    /// job asks for them).
    pub script: Mutex<Vec<String>>,
}

pub fn receipts() -> Vec<ReceiptRef> {
    vec![
        ReceiptRef {
            provider: "aa".repeat(32),
            receipt: "bb".repeat(32),
            completion_tokens: 1,
            charged: "340282366920938463463374607431768211455".into(),
            signed: None,
        },
        ReceiptRef {
            provider: "cc".repeat(32),
            receipt: "dd".repeat(32),
            completion_tokens: 2,
            charged: "7".into(),
            signed: Some(serde_json::json!({"object": "receipt", "id": "dd".repeat(32)})),
        },
    ]
}

/// The usage object the gateway answers for the fake's `USAGE` and `receipts()`: the cost
/// is their charges summed (saturating), the provider and receipt those of the last one.
pub fn usage_json() -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
        "cost": u128::MAX.to_string(),
        "provider": "cc".repeat(32), "receipt_id": "dd".repeat(32),
    })
}

/// What one "paid" answer costs.
pub const FAKE_COST: u128 = 7;

pub const USAGE: Usage = Usage {
    prompt_tokens: 5,
    completion_tokens: 3,
    total_tokens: 8,
};

impl Backend for FakeBackend {
    fn models(&self) -> Vec<ModelInfo> {
        vec![
            ModelInfo {
                id: "tiny-chat".into(),
                model_id: "11".repeat(32),
                created: 1_700_000_000,
                owned_by: "agora".into(),
                context_length: 2048,
                providers: 3,
                quantization: Some("Q4_1".into()),
                capabilities: Capabilities::ALL,
                pricing: Pricing {
                    prompt: PriceRange::of(vec![300, 100, 200]),
                    completion: PriceRange::of(vec![600, 200, 400, 800]),
                },
            },
            ModelInfo {
                id: "org/model:q4".into(),
                model_id: "22".repeat(32),
                created: 1_700_000_001,
                owned_by: "org".into(),
                context_length: 4096,
                providers: 1,
                quantization: None,
                // A model whose offers serve plain text only.
                capabilities: Capabilities::default(),
                pricing: Pricing::default(),
            },
        ]
    }

    fn start(&self, caller: Caller, job: Job) -> BoxFuture<'static, Result<Started, BackendError>> {
        *self.last_job.lock().unwrap() = Some(job.clone());
        self.jobs.lock().unwrap().push(job.clone());
        *self.last_caller.lock().unwrap() = Some(caller);
        let cancelled = self.cancelled.clone();
        let script = self.script.lock().unwrap().clone();
        Box::pin(async move {
            let err = match job.model.as_str() {
                "no-credit" => Some(BackendError::InsufficientCredit(
                    "You exceeded your current quota: fund the key's account.".into(),
                )),
                "busy" => Some(BackendError::NoCapacity("No provider is free.".into())),
                "ctx" => Some(BackendError::ContextLengthExceeded(
                    "Too long for the model.".into(),
                )),
                "upstream" => Some(BackendError::Upstream("Providers failed.".into())),
                "internal" => Some(BackendError::Internal("Bug.".into())),
                "invalid" => Some(BackendError::InvalidRequest {
                    message: "Bad temperature for this model.".into(),
                    param: Some("temperature".into()),
                }),
                "tiny-chat" | "org/model:q4" | "scripted" | "mid-error" | "early-end" | "slow"
                | "paid" => None,
                "norouting" => Some(BackendError::NoMatchingProvider(
                    "No provider matches.".into(),
                )),
                other => Some(BackendError::UnknownModel(other.to_string())),
            };
            if let Some(e) = err {
                return Err(e);
            }
            // "paid": reserves FAKE_COST from the key's budget, as the broker does before
            // paying, holds it a moment, and settles it with the charge.
            let hold = if job.model == "paid" {
                match job
                    .budget
                    .as_ref()
                    .map(|b| b.reserve(FAKE_COST))
                    .transpose()
                {
                    Ok(h) => h,
                    Err(e) => return Err(BackendError::BudgetExceeded(e.to_string())),
                }
            } else {
                None
            };
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let model = job.model.clone();
            tokio::spawn(async move {
                match model.as_str() {
                    "mid-error" => {
                        let _ = tx.send(Ok(StreamEvent::Text("part".into()))).await;
                        let _ = tx
                            .send(Err(BackendError::Upstream("provider vanished".into())))
                            .await;
                    }
                    "scripted" => {
                        // A seeded job (each of n choices has its own seed) ends with its
                        // seed, so choices differ.
                        let tail = job.seed.map(|k| format!("#{k}"));
                        for t in script.into_iter().chain(tail) {
                            if job.top_logprobs.is_some() {
                                let _ = tx
                                    .send(Ok(StreamEvent::Logprob(crate::extras::logprob(&t))))
                                    .await;
                            }
                            let _ = tx.send(Ok(StreamEvent::Text(t))).await;
                        }
                        let _ = tx
                            .send(Ok(StreamEvent::Finished {
                                finish_reason: FinishReason::Stop,
                                usage: USAGE,
                                receipts: receipts(),
                            }))
                            .await;
                    }
                    "early-end" => {
                        let _ = tx.send(Ok(StreamEvent::Text("part".into()))).await;
                    }
                    "slow" => {
                        for _ in 0..100_000 {
                            if tx.send(Ok(StreamEvent::Text("tok ".into()))).await.is_err() {
                                cancelled.store(true, Ordering::SeqCst);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    "paid" => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if let Some(h) = hold {
                            h.settle(FAKE_COST);
                        }
                        let _ = tx.send(Ok(StreamEvent::Text("ok".into()))).await;
                        let _ = tx
                            .send(Ok(StreamEvent::Finished {
                                finish_reason: FinishReason::Stop,
                                usage: USAGE,
                                receipts: vec![receipts().remove(1)],
                            }))
                            .await;
                    }
                    _ => {
                        for t in ["Hello", "", ",", " world"] {
                            let _ = tx.send(Ok(StreamEvent::Text(t.into()))).await;
                        }
                        let finish_reason = if job.max_tokens <= 3 {
                            FinishReason::Length
                        } else {
                            FinishReason::Stop
                        };
                        let _ = tx
                            .send(Ok(StreamEvent::Finished {
                                finish_reason,
                                usage: USAGE,
                                receipts: receipts(),
                            }))
                            .await;
                    }
                }
            });
            Ok(Started {
                request_id: "req123".into(),
                model: job.model,
                prompt_tokens: 5,
                events: rx,
            })
        })
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<FakeBackend>,
    pub keys: Arc<KeyStore>,
    pub secret: String,
    pub _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        Server::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(&dir.path().join("keys.redb")).unwrap());
        let (secret, _) = keys.create("test").unwrap();
        let backend = Arc::new(FakeBackend::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let router = agora_gateway::router(backend.clone(), keys.clone(), limits);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                agora_gateway::serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Server {
            addr,
            backend,
            keys,
            secret,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// POSTs JSON with the server's key.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        let auth = self.auth();
        request(
            self.addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// GETs with the server's key.
    pub fn get(&self, path: &str) -> Resp {
        let auth = self.auth();
        request(self.addr, "GET", path, &[("Authorization", &auth)], b"")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// Asserts the OpenAI error shape and returns `error`.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{:?}",
            self.headers
        );
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].is_string(), "{v}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(e["type"].is_string(), "{v}");
        let obj = e.as_object().unwrap();
        assert!(obj.contains_key("param") && obj.contains_key("code"), "{v}");
        assert_eq!(obj.len(), 4, "{v}");
        e
    }

    /// The SSE `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        assert!(self
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        let text = self.text();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data line: {s:?}"))
                    .to_string()
            })
            .collect()
    }
}

/// Sends one request over a fresh connection (`Connection: close`) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    raw(addr, &head, body)
}

/// Writes `head` then `body` (from another thread, so a server that answers early cannot
/// dead-lock us) and reads the response to EOF.
pub fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head).unwrap();
    let mut w = s.try_clone().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            // A server that refused a huge body may reset the connection after answering.
            Err(e) if !buf.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    drop(s);
    let _ = writer.join();
    parse(&buf)
}

fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    if let Some((_, len)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

use crate::common::{raw, request, Server};
use serde_json::json;

#[test]
fn huge_body_is_413_in_json_shape() {
    let s = Server::start();
    let auth = s.auth();
    let body = vec![b'a'; 2 * 1024 * 1024];
    let r = request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        &body,
    );
    let e = r.error(413);
    assert_eq!(e["code"], "request_too_large");

    // Chunked, so the size is only known while reading.
    let mut head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    head.extend_from_slice(b"");
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend_from_slice(&vec![b' '; 64 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    raw(s.addr, &head, &chunked).error(413);
    // The server is still fine.
    assert_eq!(request(s.addr, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn bad_utf8_and_deep_nesting_do_not_crash() {
    let s = Server::start();
    let auth = s.auth();
    let h = [("Authorization", auth.as_str())];
    let mut body = br#"{"model": "tiny-chat", "messages": [{"role": "user", "content": ""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(br#""}]}"#);
    request(s.addr, "POST", "/v1/chat/completions", &h, &body).error(400);
    request(s.addr, "POST", "/v1/completions", &h, &[0xff; 100]).error(400);

    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    request(s.addr, "POST", "/v1/chat/completions", &h, deep.as_bytes()).error(400);
    let deep = format!(
        r#"{{"model": "tiny-chat", "messages": [{{"role": "user", "content": "x"}}], "x": {}{}}}"#,
        "{\"a\":".repeat(10_000),
        "1".to_string() + &"}".repeat(10_000)
    );
    request(s.addr, "POST", "/v1/chat/completions", &h, deep.as_bytes()).error(400);

    // A non-UTF-8 key header is a 401, not a crash.
    let head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n";
    raw(s.addr, head, b"").error(401);
    // Non-UTF-8 content in the path.
    let head = b"GET /v1/models/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    raw(s.addr, head, b"").error(401);
    let head = format!("GET /v1/models/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n");
    raw(s.addr, head.as_bytes(), b"").error(400);

    assert_eq!(
        s.post(
            "/v1/chat/completions",
            &json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "ok"}]})
        )
        .status,
        200
    );
}

#[test]
fn many_concurrent_streams() {
    let s = Server::start();
    let addr = s.addr;
    let auth = s.auth();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let body = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": true});
                let r = request(addr, "POST", "/v1/chat/completions", &[("Authorization", &auth)], body.to_string().as_bytes());
                assert_eq!(r.status, 200);
                assert_eq!(r.events().last().unwrap(), "[DONE]");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

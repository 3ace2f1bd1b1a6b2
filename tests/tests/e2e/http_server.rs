//! The HTTP server's own defences: a client that trickles its headers (slowloris) is cut off at
//! `server.header_read_timeout`, and does not block anyone else meanwhile.

use std::time::Duration;

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::{free_addr, http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let extra = ConfigExtra { server: "header_read_timeout = \"1s\"", ..ConfigExtra::default() };
    write_config(&config, addr, &data_dir, &extra);
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;

    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n").await.unwrap();

    // Others are served while the slow connection hangs.
    let health = http().get(format!("{}/healthz", broker.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The server ends the slow connection (possibly with a 408 first). The bound only stops the
    // test from hanging; it is below hyper's own 30 s default, so it fails if our 1 s setting
    // were not applied.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was still open after 15 s: header_read_timeout is not applied");
    let response = String::from_utf8_lossy(&received);
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 408"), "unexpected response: {response}");
}

//! The daemon's socket is an input like any other: oversized, malformed and non-gRPC requests
//! get an error (or a closed connection) and the daemon keeps serving everyone else.

use std::io::{Read, Write};
use std::time::Duration;

use mcp_ssh_proto::pb;
use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::{Sshd, login_user};
use tonic::codegen::http::uri::PathAndQuery;

/// `ProbeRequest` as a client with a broken encoder would send it: field 1 (a string) carrying
/// bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct BrokenProbe {
    #[prost(bytes = "vec", tag = "1")]
    host: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_should_be_refused_and_the_daemon_keep_serving() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;

    // Oversized: a 5 MiB command is over the 4 MiB request limit.
    let huge = run(&client, "box", &format!("echo {}", "x".repeat(5 << 20)), 0).await;
    assert!(
        matches!(
            huge.error_code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{:?}",
        huge.error
    );
    assert!(
        huge.error_message().contains("too large"),
        "{}",
        huge.error_message()
    );

    // Malformed protobuf.
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<BrokenProbe, pb::ProbeReply>::default();
    let broken = grpc
        .unary(
            tonic::Request::new(BrokenProbe {
                host: vec![0xff, 0xfe, 0x00],
            }),
            PathAndQuery::from_static("/mcpssh.v1.Hosts/Probe"),
            codec,
        )
        .await
        .expect_err("a request that does not decode must fail");
    assert!(
        broken.message().contains("UTF-8") || broken.message().contains("decode"),
        "{broken:?}"
    );

    // Not gRPC at all, straight onto the socket: the connection is closed.
    let socket = daemon.socket.clone();
    let garbage = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = stream.write_all(&[0xffu8; 70_000]);
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).map(|_| ())
    })
    .await
    .unwrap();
    // Closed, with a FIN or a reset; a timeout would mean the daemon kept it hanging.
    let closed = match &garbage {
        Ok(()) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    assert!(
        closed,
        "the daemon must close a garbage connection: {garbage:?}"
    );

    // Everyone else is still served, on the same connection and on new ones.
    assert_eq!(
        run(&client, "box", "echo ok", 0).await.stdout_text(),
        "ok\n"
    );
    let fresh = daemon.client().await;
    assert_eq!(run(&fresh, "box", "true", 0).await.code(), Some(0));
    assert_eq!(rpc::status(&fresh).await.hosts[0].channels_in_use, 0);
}

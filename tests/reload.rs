//! Live reload (SIGHUP): onboarding a peer while a long-lived stream runs, an invalid
//! manifest that changes nothing, a removed peer cut within 5 s, a replaced key.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::client::echo_exact;
use common::mesh::{ForwardSpec, TestMesh};
use common::metrics_text;
use common::servers::EchoServer;

const LINK_UP: Duration = Duration::from_secs(10);
const LOG: Duration = Duration::from_secs(10);
const ECHO: Duration = Duration::from_secs(10);

/// `meshctl ARGS...`: exit code, stdout, stderr.
fn meshctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("run meshctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sighup(mesh: &mut TestMesh, name: &str) {
    let pid = mesh
        .pid(name)
        .unwrap_or_else(|| panic!("{name} is not running"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {pid} failed");
}

/// Echoes one line on a held connection.
async fn ping(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line)
        .await
        .expect("write on the long-lived stream");
    let mut back = vec![0u8; line.len()];
    common::within(
        ECHO,
        "echo on the long-lived stream",
        s.read_exact(&mut back),
    )
    .await
    .expect("read on the long-lived stream");
    assert_eq!(back, line);
}

/// Polls until a connection to `addr` carries an echo; returns how long it took.
async fn until_echo(addr: SocketAddr, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if echo_exact(addr, b"new forward", Duration::from_secs(2))
            .await
            .is_ok()
        {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{addr} never carried an echo");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_a_peer_by_reload_keeps_a_long_lived_stream() {
    let echo = EchoServer::start().await;
    let extra_port = common::free_port();
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b", "c", "d"])
        .forward("b", "a/echo")
        .forward("c", "a/echo")
        .forward("d", "a/echo")
        .build();
    let full = mesh.spec().clone();
    // Before onboarding, a 3-peer mesh (a, b, d) runs a manifest without c.
    let mut before = full.clone();
    before.remove_peer("c");
    std::fs::remove_file(mesh.manifest_dir().join("c.toml")).expect("remove c.toml");
    before.write(&mesh.manifest_dir());
    mesh.start("a");
    mesh.start("b");
    mesh.start("d");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.wait_link_up("d", "a", LINK_UP).await;
    let mut long = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect long-lived stream");
    ping(&mut long, b"before onboarding\n").await;

    // c is onboarded (its file committed and pulled), and b gains a second entrance.
    let mut after = full.clone();
    after
        .peers
        .get_mut("b")
        .expect("b")
        .forwards
        .push(ForwardSpec {
            listen: SocketAddr::from(([127, 0, 0, 1], extra_port)),
            to: "a/echo".into(),
            public: false,
        });
    after.write(&mesh.manifest_dir());
    // c's own file comes from `meshctl add-peer` on c, with its forward appended.
    let c_file = mesh.manifest_dir().join("c.toml");
    std::fs::remove_file(&c_file).expect("remove c.toml");
    std::fs::remove_file(mesh.key_path("c")).expect("remove c's key");
    let manifest = mesh.manifest_dir();
    let key = mesh.key_path("c");
    let endpoint = mesh.mesh_addr("c").to_string();
    let (code, out, err) = meshctl(&[
        "add-peer",
        "c",
        "--endpoint",
        &endpoint,
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "add-peer failed:\n{out}\n{err}");
    let mut text = std::fs::read_to_string(&c_file).expect("read c.toml");
    text.push_str(&format!(
        "\n[[forwards]]\nlisten = \"{}\"\nto = \"a/echo\"\n",
        mesh.forward_addr("c", "a/echo")
    ));
    std::fs::write(&c_file, text).expect("append c's forward");

    let hup = Instant::now();
    sighup(&mut mesh, "a");
    sighup(&mut mesh, "d");
    let admin = mesh.admin_addr("b").to_string();
    let (code, out, err) = meshctl(&["reload", "--admin", &admin]);
    assert_eq!(code, 0, "meshctl reload failed:\n{out}\n{err}");
    assert!(out.contains("reloaded"), "{out}");
    let new_forward = until_echo(SocketAddr::from(([127, 0, 0, 1], extra_port)), hup).await;
    eprintln!("SIGHUP -> new forward accepting and carrying a stream: {new_forward:?}");
    mesh.wait_for_log("b", "config reloaded", LOG).await;
    mesh.wait_for_log("a", "config reloaded", LOG).await;
    mesh.wait_for_log("d", "config reloaded", LOG).await;

    mesh.start("c");
    mesh.wait_link_up("c", "a", LINK_UP).await;
    echo_exact(mesh.forward_addr("c", "a/echo"), b"hello from c", ECHO)
        .await
        .expect("c's forward works after onboarding");
    ping(&mut long, b"after onboarding\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifest_on_reload_changes_nothing() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let mut long = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect");
    ping(&mut long, b"before\n").await;

    let file = mesh.manifest_dir().join("a.toml");
    let good = std::fs::read_to_string(&file).expect("read a.toml");
    std::fs::write(&file, format!("{good}\nbogus_field = 1\n")).expect("break a.toml");
    let admin = mesh.admin_addr("a");
    let (code, out, err) = meshctl(&["reload", "--admin", &admin.to_string()]);
    assert_eq!(
        code, 1,
        "meshctl reload of an invalid manifest:\n{out}\n{err}"
    );
    assert!(
        err.contains("bogus_field") && err.contains("a.toml"),
        "{err}"
    );
    assert!(
        metrics_text(admin).contains("meshd_config_reloads_total{result=\"failure\"} 1"),
        "the reload failure was not counted"
    );
    sighup(&mut mesh, "b");
    let line = mesh
        .wait_for_log_line("a", &["reload failed", "bogus_field"], LOG)
        .await;
    assert!(line.contains("a.toml"), "the error names the file: {line}");
    mesh.wait_for_log_line("b", &["reload failed"], LOG).await;
    assert!(mesh.is_running("a") && mesh.is_running("b"));
    ping(&mut long, b"after a bad reload\n").await;
    echo_exact(mesh.forward_addr("b", "a/echo"), b"new stream", ECHO)
        .await
        .expect("new streams still work");
    assert!(
        mesh.find_log_line("a", &["config reloaded"]).is_none(),
        "a applied an invalid manifest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_peer_is_cut_and_its_entrances_unbound() {
    let echo = EchoServer::start().await;
    let echo2 = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b", "c"])
        .service("c", "echo2", echo2.addr(), &["b"])
        .forward("b", "a/echo")
        .forward("b", "c/echo2")
        .forward("c", "a/echo")
        .build();
    mesh.start_all();
    mesh.wait_link_up("c", "a", LINK_UP).await;
    mesh.wait_link_up("b", "c", LINK_UP).await;
    let to_c = mesh.forward_addr("b", "c/echo2");
    echo_exact(to_c, b"to c", ECHO).await.expect("b -> c works");

    let mut spec = mesh.spec().clone();
    spec.remove_peer("c");
    std::fs::remove_file(mesh.manifest_dir().join("c.toml")).expect("remove c.toml");
    spec.write(&mesh.manifest_dir());
    let hup = Instant::now();
    sighup(&mut mesh, "a");
    sighup(&mut mesh, "b");
    mesh.wait_for_log_line("a", &["link down", "peer=c"], Duration::from_secs(5))
        .await;
    let cut = hup.elapsed();
    mesh.wait_for_log_line("b", &["config reloaded"], LOG).await;
    // b's entrance to c is gone: connections are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(to_c).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "b still listens for c/echo2");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!("SIGHUP -> removed peer's inbound link closed: {cut:?}");
    assert!(cut <= Duration::from_secs(5));
    echo_exact(mesh.forward_addr("b", "a/echo"), b"b still works", ECHO)
        .await
        .expect("the remaining peer is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_key_old_refused_new_accepted() {
    use meshd::config::PeerName;
    use meshd::keys::{load_private_key, PublicKey};
    use meshd::proto::handshake::{initiate, PairParams};

    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let old_key = load_private_key(&mesh.key_path("b")).expect("old key");

    // `meshctl add-peer` on a fresh key: new key file, new public key in b.toml.
    let new_public = mesh.replace_key("b");
    let mut spec = mesh.spec().clone();
    spec.peers.get_mut("b").expect("b").public_key = new_public.to_base64();
    spec.write(&mesh.manifest_dir());
    sighup(&mut mesh, "a");
    sighup(&mut mesh, "b");
    mesh.wait_for_log("b", "config reloaded", LOG).await;
    mesh.wait_for_log("a", "config reloaded", LOG).await;
    echo_exact(mesh.forward_addr("b", "a/echo"), b"new key", ECHO)
        .await
        .expect("the new key is accepted");
    let ups = mesh
        .current_log("a")
        .lines()
        .filter(|l| l.contains("link up") && l.contains("peer=b"))
        .count();
    assert!(
        ups >= 2,
        "b's link was not re-established after the key change"
    );

    // A handshake with the old key is refused.
    let a_key = PublicKey::from_base64(&spec.peers["a"].public_key).expect("a's key");
    let (a, b) = (
        PeerName::new("a").expect("a"),
        PeerName::new("b").expect("b"),
    );
    let psk = meshd::daemon::pair_psk("t", None, &b, &a);
    let params = PairParams {
        mode: meshd::config::AuthMode::Noise,
        mesh_id: "t",
        dialer: &b,
        acceptor: &a,
        local_key: &old_key,
        remote_key: &a_key,
        psk: &psk,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let (_, first) = initiate(&params, now).expect("initiate");
    let mut s = TcpStream::connect(mesh.mesh_addr("a"))
        .await
        .expect("connect a");
    s.write_all(&first).await.expect("send msg1");
    let mut buf = [0u8; 64];
    let n = common::within(ECHO, "a to refuse the old key", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "a answered a handshake made with the replaced key");
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"wrong_key\""], LOG)
        .await;
}

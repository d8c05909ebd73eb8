//! Backup benchmark (issue 4): prints figures measured in one run on one
//! database of about `KOK_BENCH_DB_MIB` (default 1024) MiB; asserts nothing.
//!
//! - kok snapshot throughput as a ratio to `etcdctl snapshot save`;
//! - peak RSS of the process taking kok's snapshot (a child process that does
//!   only that, so the fill phase does not count);
//! - kok restore as a ratio to a bare `etcdctl snapshot restore` of the same
//!   file: in place (sha256/trailer checks, then the restore reads the same
//!   file: filesystem destinations without encryption) and with a copy
//!   (fetch with checks, then restore: S3 or encrypted artifacts).
//!
//! Run with `hack/bench backup` (release build).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use etcd_client::Client;
use kok_controllers::etcd::snapshot;
use kok_controllers::etcd::verify::{
    self, free_port, restore_data_dir, RestoreMember, ScratchEtcd, Tools,
};
use kok_controllers::storage::Store;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot-child") {
        return snapshot_child(&args[2], &args[3]).await;
    }
    let mib: usize = std::env::var("KOK_BENCH_DB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work =
        Path::new(&std::env::var("KOK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/kok-bench".into()))
            .to_path_buf();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let tools = Tools::from_env();

    // A source etcd with room for the database.
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let client_port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let mut etcd = std::process::Command::new(&tools.etcd)
        .args([
            "--name=src".to_string(),
            format!("--data-dir={}", work.join("src").display()),
            format!("--listen-client-urls={endpoint}"),
            format!("--advertise-client-urls={endpoint}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=src={peer}"),
            "--quota-backend-bytes=8589934592".to_string(),
        ])
        .stderr(std::fs::File::create(work.join("src.log")).unwrap())
        .spawn()
        .expect("starting etcd");
    let mut client = loop {
        if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let value = vec![b'k'; 512 * 1024];
    let fill = Instant::now();
    for i in 0..mib * 2 {
        client
            .put(format!("/bench/{i:06}"), value.clone(), None)
            .await
            .unwrap();
    }
    let db_size = client.status().await.unwrap().db_size();
    println!(
        "# kok backup benchmark: database {:.0} MiB ({} keys of 512 KiB, filled in {:.0}s)",
        db_size as f64 / 1048576.0,
        mib * 2,
        fill.elapsed().as_secs_f64()
    );

    // etcdctl snapshot save.
    let ctl_file = work.join("etcdctl.db");
    let t = Instant::now();
    let out = Command::new(etcdctl(&tools))
        .env("ETCDCTL_API", "3")
        .args([
            "snapshot",
            "save",
            ctl_file.to_str().unwrap(),
            &format!("--endpoints={endpoint}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctl_secs = t.elapsed().as_secs_f64();

    // kok's snapshot, in a child process whose peak RSS is its own.
    let store_dir = work.join("store");
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["snapshot-child", &endpoint, store_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kok_secs = t.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let mut fields = report.split_whitespace();
    let size: u64 = fields.next().unwrap().parse().unwrap();
    let sha256 = fields.next().unwrap().to_string();
    let hwm_kib: u64 = fields.next().unwrap().parse().unwrap();
    let _ = etcd.kill();
    let _ = etcd.wait();

    let mib_s = |bytes: u64, secs: f64| bytes as f64 / 1048576.0 / secs;
    println!(
        "snapshot: etcdctl {:.1}s ({:.0} MiB/s), kok {:.1}s ({:.0} MiB/s); throughput ratio kok/etcdctl = {:.2} (goal >= 0.9)",
        ctl_secs,
        mib_s(size, ctl_secs),
        kok_secs,
        mib_s(size, kok_secs),
        ctl_secs / kok_secs
    );
    println!(
        "peak RSS of the process taking kok's snapshot: {:.1} MiB (goal <= 64 MiB)",
        hwm_kib as f64 / 1024.0
    );

    // Restore: bare etcdctl vs kok (fetch with checks, then the same restore).
    let member = |peer: &str| format!("m={peer}");
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let initial = member(&peer);
    let t = Instant::now();
    let out = Command::new(etcdctl(&tools))
        .env("ETCDCTL_API", "3")
        .args([
            "snapshot",
            "restore",
            ctl_file.to_str().unwrap(),
            &format!("--data-dir={}", work.join("restore-ctl").display()),
            "--name=m",
            &format!("--initial-cluster={initial}"),
            &format!("--initial-advertise-peer-urls={peer}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctl_restore = t.elapsed().as_secs_f64();

    // What a restore Job does with a plain artifact on a filesystem
    // destination: check it where it lies, restore from it.
    let store = Store::filesystem(store_dir.to_str().unwrap()).unwrap();
    let in_place = store
        .plain_local_file("bench.db")
        .expect("a plain local artifact");
    let t = Instant::now();
    verify::restore_in_place(
        &tools,
        &in_place,
        &sha256,
        &work.join("restore-kok-in-place"),
        &RestoreMember {
            name: "m",
            peer_url: &peer,
            initial_cluster: &initial,
            cluster_token: "bench",
            bump_revision: None,
        },
    )
    .await
    .unwrap();
    let in_place_restore = t.elapsed().as_secs_f64();
    println!(
        "restore: etcdctl snapshot restore {:.1}s, kok in place (restore while sha256 is checked; filesystem, unencrypted) {:.1}s; time ratio kok/etcdctl = {:.2} (goal <= 1.2)",
        ctl_restore,
        in_place_restore,
        in_place_restore / ctl_restore
    );

    // A sealed or remote artifact is fetched into a copy first.
    let t = Instant::now();
    let fetched = work.join("fetched.db");
    verify::download(&store, "bench.db", &sha256, &fetched)
        .await
        .unwrap();
    restore_data_dir(
        &tools,
        &fetched,
        &work.join("restore-kok"),
        &RestoreMember {
            name: "m",
            peer_url: &peer,
            initial_cluster: &initial,
            cluster_token: "bench",
            bump_revision: None,
        },
    )
    .await
    .unwrap();
    let kok_restore = t.elapsed().as_secs_f64();
    println!(
        "restore: etcdctl snapshot restore {:.1}s, kok with a copy (fetch + sha256 + trailer + restore; S3 or encrypted) {:.1}s; time ratio kok/etcdctl = {:.2}",
        ctl_restore,
        kok_restore,
        kok_restore / ctl_restore
    );
    // The restored member serves (not timed).
    let (scratch, mut c) = ScratchEtcd::start(
        &tools,
        &work.join("restore-kok"),
        "m",
        &peer,
        &initial,
        free_port().unwrap(),
    )
    .await
    .unwrap();
    let keys = c
        .get(
            "/bench/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    scratch.stop().await;
    assert_eq!(
        keys as usize,
        mib * 2,
        "the restored database holds every key"
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn etcdctl(tools: &Tools) -> std::path::PathBuf {
    if tools.restore_is_etcdutl {
        std::env::var_os("KOK_ETCDCTL")
            .map(Into::into)
            .unwrap_or_else(|| "etcdctl".into())
    } else {
        tools.restore.clone()
    }
}

/// Takes one snapshot into a filesystem store and prints `size sha256 VmHWM_kib`.
async fn snapshot_child(endpoint: &str, dir: &str) {
    let store = Store::filesystem(dir).unwrap();
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let snap = snapshot::take(&mut client, &store, "bench.db")
        .await
        .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{} {} {hwm}", snap.size, snap.sha256);
}

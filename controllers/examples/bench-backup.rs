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
    self, free_port, restore_data_dir, Recorded, RestoreMember, ScratchEtcd, Tools,
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
    let etcd_sha256 = fields.next().unwrap().to_string();
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

    // Restore: a bare `snapshot restore` vs kok's. Rounds alternate so page
    // cache and writeback affect each the same; medians are printed, and the
    // parts of kok's in-place restore (the tool alone, the sha256 check alone)
    // are timed on the same file so the difference can be broken down.
    let member = |peer: &str| format!("m={peer}");
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let initial = member(&peer);
    let store = Store::filesystem(store_dir.to_str().unwrap()).unwrap();
    let in_place = store
        .plain_local_file("bench.db")
        .expect("a plain local artifact");
    let rounds: usize = std::env::var("KOK_BENCH_RESTORE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bench_member = RestoreMember {
        name: "m",
        peer_url: &peer,
        initial_cluster: &initial,
        cluster_token: "bench",
        bump_revision: None,
    };
    let (mut ctl_times, mut tool_times, mut check_times, mut in_place_times) =
        (vec![], vec![], vec![], vec![]);
    let mut trailer_times = vec![];
    let by_sha256 = Recorded {
        sha256: &sha256,
        etcd_sha256: None,
        size: None,
    };
    let by_trailer = Recorded {
        etcd_sha256: Some(&etcd_sha256),
        ..by_sha256
    };
    for round in 0..rounds {
        let dir = |what: &str| work.join(format!("restore-{what}-{round}"));
        // Each variant starts after the previous one's output is removed
        // and flushed (`sync`): else the writeback of the 1 GiB written
        // before slows whichever runs next. The order rotates per round.
        for k in 0..5 {
            let variant = (k + round) % 5;
            let _ = std::fs::remove_dir_all(dir("out"));
            Command::new("sync").status().unwrap();
            let t = Instant::now();
            match variant {
                // etcdctl, as an operator would run it by hand, on its own file.
                0 => {
                    let out = Command::new(etcdctl(&tools))
                        .env("ETCDCTL_API", "3")
                        .args([
                            "snapshot",
                            "restore",
                            ctl_file.to_str().unwrap(),
                            &format!("--data-dir={}", dir("out").display()),
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
                    ctl_times.push(t.elapsed().as_secs_f64());
                }
                // The tool kok runs, alone, on kok's artifact.
                1 => {
                    restore_data_dir(&tools, &in_place, &dir("out"), &bench_member)
                        .await
                        .unwrap();
                    tool_times.push(t.elapsed().as_secs_f64());
                }
                // The sha256 check alone.
                2 => {
                    verify::check_in_place(&in_place, &sha256).await.unwrap();
                    check_times.push(t.elapsed().as_secs_f64());
                }
                // What a restore Job did before etcd's trailer was recorded
                // (and still does for older backups): the restore while the
                // sha256 check reads the same file.
                3 => {
                    let r = &by_sha256;
                    verify::restore_in_place(&tools, &in_place, r, &dir("out"), &bench_member)
                        .await
                        .unwrap();
                    in_place_times.push(t.elapsed().as_secs_f64());
                }
                // What it does now: the recorded trailer checked, the file
                // read once, by the restore, which checks the database
                // against the trailer.
                _ => {
                    let r = &by_trailer;
                    verify::restore_in_place(&tools, &in_place, r, &dir("out"), &bench_member)
                        .await
                        .unwrap();
                    trailer_times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir("out"));
    }
    let ctl_restore = median(&mut ctl_times);
    let tool_restore = median(&mut tool_times);
    let check = median(&mut check_times);
    let in_place_restore = median(&mut in_place_times);
    let trailer_restore = median(&mut trailer_times);
    println!(
        "restore tool kok runs: {} (etcdutl: {})",
        tools.restore.display(),
        tools.restore_is_etcdutl
    );
    let all = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "restore, median of {rounds} (all runs): etcdctl snapshot restore {ctl_restore:.2}s ({}); the tool kok runs, alone {tool_restore:.2}s ({}); sha256 check alone {check:.2}s ({}); kok in place with the sha256 check alongside {in_place_restore:.2}s ({}); kok in place with the recorded trailer {trailer_restore:.2}s ({})",
        all(&ctl_times),
        all(&tool_times),
        all(&check_times),
        all(&in_place_times),
        all(&trailer_times)
    );
    println!(
        "restore: kok in place (recorded trailer) / etcdctl = {:.2} (goal <= 1.2); with the sha256 check alongside (older backups) / etcdctl = {:.2}; kok in place (recorded trailer) / its tool alone = {:.2}",
        trailer_restore / ctl_restore,
        in_place_restore / ctl_restore,
        trailer_restore / tool_restore
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

/// Takes one snapshot into a filesystem store and prints `size sha256 etcd_sha256 VmHWM_kib`.
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
    println!("{} {} {} {hwm}", snap.size, snap.sha256, snap.etcd_sha256);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

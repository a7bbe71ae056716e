//! Micro-benchmark of the spool's group commit, against the raw fsync it is built on.
//!
//! Appends batches of 1, 16, 64 and 256 messages of ~1 KiB with 3 dedupe keys each
//! (`synchronous=FULL`: one WAL fsync per commit) and prints msgs/s and per-commit latency as a
//! Markdown table. Runs in `$SPOOL_BENCH_DIR` or under the target dir (never tmpfs: an fsync
//! there costs nothing). `SPOOL_BENCH_SECS` sets the seconds per row (default 3).
//!
//! `cargo bench --bench spool_store`

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use dingtalk_streamd::spool::{NewMessage, Store, StoreOptions};

const BATCH_SIZES: [usize; 4] = [1, 16, 64, 256];
const BODY_BYTES: usize = 1024;
const FSYNC_SAMPLES: usize = 1000;

fn main() {
    let root = std::env::var_os("SPOOL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spool-bench"));
    let secs: u64 = std::env::var("SPOOL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if let Err(e) = run(&root, Duration::from_secs(secs)) {
        eprintln!("spool bench failed in {}: {e}", root.display());
        std::process::exit(1);
    }
}

fn run(root: &Path, per_row: Duration) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(root)?;
    println!("directory: {} ({})", root.display(), fs_name(root));
    println!("body ~{BODY_BYTES} B, 3 dedupe keys per message, {per_row:?} per row\n");
    println!("| case | msgs/s | commits/s | p50 per commit | p99 per commit |");
    println!("|---|---:|---:|---:|---:|");

    let fsync = fsync_latencies(root)?;
    println!(
        "| raw 4 KiB append + `sync_data` | – | {:.0} | {} | {} |",
        1.0 / mean(&fsync).as_secs_f64(),
        fmt(pct(&fsync, 50)),
        fmt(pct(&fsync, 99))
    );

    for batch in BATCH_SIZES {
        let dir = root.join(format!("batch-{batch}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut store = Store::open(&dir, StoreOptions::default())?;
        let mut next = 0u64;
        let mut lat = Vec::new();
        let mut msgs = 0usize;
        for _ in 0..3 {
            store.append_batch(&make_batch(&mut next, batch), SystemTime::now())?;
        }
        let start = Instant::now();
        while start.elapsed() < per_row || lat.len() < 50 {
            let messages = make_batch(&mut next, batch);
            let t = Instant::now();
            store.append_batch(&messages, SystemTime::now())?;
            lat.push(t.elapsed());
            msgs += batch;
        }
        let total = start.elapsed().as_secs_f64();
        println!(
            "| batch {batch} | {:.0} | {:.0} | {} | {} |",
            msgs as f64 / total,
            lat.len() as f64 / total,
            fmt(pct(&lat, 50)),
            fmt(pct(&lat, 99))
        );
        drop(store);
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Latency of appending 4 KiB to a file and `sync_data`, the floor under every commit.
fn fsync_latencies(root: &Path) -> std::io::Result<Vec<Duration>> {
    let path = root.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xabu8; 4096];
    let mut out = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        out.push(t.elapsed());
    }
    drop(file);
    fs::remove_file(&path)?;
    Ok(out)
}

/// A batch shaped like bot messages: ~1 KiB of JSON, keys `m:`, `b:` and `e:` all fresh.
fn make_batch(next: &mut u64, n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| {
            *next += 1;
            let id = *next;
            let head = format!(
                r#"{{"type":"CALLBACK","topic":"/v1.0/im/bot/messages/get","message_id":"212b9d7c_{id:016x}","connection":"c1","headers":{{"appId":"bench"}},"data":{{"msgId":"msg{id:020}","text":{{"content":""#
            );
            let pad = BODY_BYTES.saturating_sub(head.len() + 4);
            NewMessage {
                dedupe_keys: vec![
                    format!("m:212b9d7c_{id:016x}"),
                    format!("b:msg{id:020}"),
                    format!("e:evt{id:020}"),
                ],
                body: format!("{head}{}\"}}}}}}", "x".repeat(pad)),
                topic: "/v1.0/im/bot/messages/get".into(),
                ..Default::default()
            }
        })
        .collect()
}

fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let idx = (sorted.len().saturating_sub(1) * p) / 100;
    sorted.get(idx).copied().unwrap_or_default()
}

fn mean(samples: &[Duration]) -> Duration {
    let n = u32::try_from(samples.len().max(1)).unwrap_or(u32::MAX);
    samples.iter().sum::<Duration>() / n
}

fn fmt(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The filesystem type of `path`, as `stat -f` would name it.
fn fs_name(path: &Path) -> String {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
        statfs,
    };
    match statfs(path) {
        Ok(st) => {
            let t = st.filesystem_type();
            let name = if t == EXT4_SUPER_MAGIC {
                "ext2/ext3/ext4"
            } else if t == XFS_SUPER_MAGIC {
                "xfs"
            } else if t == BTRFS_SUPER_MAGIC {
                "btrfs"
            } else if t == OVERLAYFS_SUPER_MAGIC {
                "overlayfs"
            } else if t == TMPFS_MAGIC {
                "tmpfs (fsync is free here: numbers are not meaningful)"
            } else {
                "other"
            };
            format!("{name}, magic {:#x}", t.0)
        }
        Err(e) => format!("unknown filesystem: {e}"),
    }
}

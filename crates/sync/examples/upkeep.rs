//! What one round of upkeep costs when many small threads have gone quiet: a repo in a
//! temporary directory gets `N` threads (default 1,000) of two changes each, then
//! `Repo::tidy` runs as if two minutes had passed. Prints the time it took, how many
//! documents it folded and dropped, the fsyncs it asked for and the bytes this process wrote
//! meanwhile (Linux's `/proc/self/io`).
//!
//! `cargo run --release -p errand-sync --example upkeep [N]`

use std::sync::Arc;
use std::time::Instant;

use errand_sync::authorship::FixedAuthors;
use errand_sync::ids::SpaceId;
use errand_sync::repo::{IDLE_AFTER, Repo};
use errand_sync::schema::{DocId, thread};
use errand_sync::store::Store;

/// Bytes this process has caused to be written to storage so far.
fn written() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000,
    };
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(&dir.path().join("db.redb"))?);
    let repo = Repo::new(
        store,
        iroh::SecretKey::generate(),
        Arc::new(FixedAuthors::anyone(errand_sync::Role::Desktop)),
    );
    repo.set_space(SpaceId([3; 16]))?;
    for i in 0..n {
        let doc = DocId::new_thread();
        let task = format!("{i:016x}");
        let new = thread::NewTask {
            id: &task,
            prompt: "p",
            target: "t",
            created: 1,
        };
        repo.create(&doc, "thread created", |tx| {
            thread::create(tx, doc.as_str(), "t")
        })?;
        repo.change(&doc, "task queued", |tx| thread::add_task(tx, &new))?;
    }
    let (fsyncs, before) = (repo.fsyncs(), written());
    let t0 = Instant::now();
    let tidied = repo.tidy(Instant::now() + IDLE_AFTER)?;
    let took = t0.elapsed();
    let bytes = written()
        .zip(before)
        .map_or("unknown".to_owned(), |(a, b)| {
            format!("{} KiB", (a - b) / 1024)
        });
    println!(
        "upkeep over {n} quiet threads, {} of them in memory: {:.1} ms, {} folded, {} dropped, {} \
         fsyncs, {bytes} written",
        tidied.dropped,
        took.as_secs_f64() * 1e3,
        tidied.compacted,
        tidied.dropped,
        repo.fsyncs() - fsyncs,
    );
    Ok(())
}

//! The bench's report: a table with each goal met or missed, or one JSON object (`--json`).

use super::*;

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok { "meets goal" } else { "MISSES goal" }
}

pub(super) fn stats_json(s: &Stats) -> Json {
    json!({
        "samples": s.n,
        "median_ms": s.median,
        "p99_ms": s.p99,
        "mean_ms": s.mean,
        "min_ms": s.min,
        "max_ms": s.max,
    })
}

pub(super) fn report_json(
    props: &[Propagation],
    syncs: &[InitialSync],
    parts: &[Breakdown],
    trips: &[RoundTrip],
    mcp: &[RoundTrip],
) -> Json {
    let propagation: Vec<Json> = props
        .iter()
        .map(|p| {
            let mut goals = serde_json::Map::new();
            if p.tasks == 1_000 {
                goals.insert("median_ms_max".into(), json!(GOAL_MEDIAN_MS));
                goals.insert("p99_ms_max".into(), json!(GOAL_P99_MS));
                goals.insert(
                    "latency_met".into(),
                    json!(p.latency.median <= GOAL_MEDIAN_MS && p.latency.p99 <= GOAL_P99_MS),
                );
            }
            goals.insert("bytes_per_task_max".into(), json!(GOAL_BYTES_PER_TASK));
            goals.insert(
                "bytes_met".into(),
                json!(p.bytes_per_task <= GOAL_BYTES_PER_TASK),
            );
            json!({
                "tasks_in_thread": p.tasks,
                "warmup_iterations": WARMUP,
                "latency": stats_json(&p.latency),
                "bytes_per_task": p.bytes_per_task,
                "datagrams_per_task": p.datagrams_per_task,
                "stream_frames_per_task": p.stream_frames_per_task,
                "change_bytes": p.change_bytes,
                "phone_commit": stats_json(&p.commit),
                "setup_ms": p.setup_ms,
                "goals": goals,
            })
        })
        .collect();
    let initial: Vec<Json> = syncs
        .iter()
        .map(|s| {
            let mut goals = serde_json::Map::new();
            if s.tasks == 10_000 {
                goals.insert("complete_median_ms_max".into(), json!(GOAL_INITIAL_10K_MS));
                goals.insert(
                    "met".into(),
                    json!(s.complete.median <= GOAL_INITIAL_10K_MS),
                );
            }
            json!({
                "tasks": s.tasks,
                "runs": s.runs,
                "until_complete": stats_json(&s.complete),
                "until_quiet": stats_json(&s.quiet),
                "bytes_median": s.bytes_median,
                "bytes_min": s.bytes_min,
                "bytes_max": s.bytes_max,
                "goals": goals,
            })
        })
        .collect();
    json!({
        "bench": "errand-bench",
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average_1min_at_end": load_average(),
        "bytes_on_the_wire": BYTES_MEANING,
        "propagation": propagation,
        "initial_sync": initial,
        "in_process_breakdown": parts.iter().map(|b| json!({
            "tasks": b.tasks,
            "phone_change": stats_json(&b.change),
            "phone_generate": stats_json(&b.generate),
            "desktop_receive": stats_json(&b.receive),
            "ack_round": stats_json(&b.ack),
            "redb_durable_commit": stats_json(&b.redb_commit),
            "initial_desktop_generate_ms": b.initial_generate_ms,
            "initial_message_bytes": b.initial_message_bytes,
            "initial_phone_receive_ms": b.initial_receive_ms,
            "initial_rest_ms": b.initial_rest_ms,
            "initial_stored_bytes": b.stored_bytes,
            "initial_stored_chunks": b.stored_chunks,
            "snapshot_bytes": b.snapshot_bytes,
            "doc_ids_scan": stats_json(&b.doc_ids),
        })).collect::<Vec<_>>(),
        "round_trip": trips.iter().map(|t| json!({
            "prompt": t.prompt,
            "finished_tasks_in_thread": t.tasks,
            "warmup_iterations": WARMUP,
            "latency": stats_json(&t.latency),
            "phone_to_desktop": stats_json(&t.to_desktop),
            "executor": stats_json(&t.executor),
            "executor_claim": stats_json(&t.claim),
            "executor_progress": stats_json(&t.progress),
            "executor_sh_and_done": stats_json(&t.finish),
            "desktop_to_phone": stats_json(&t.back),
            "executor_commits_per_task": t.executor_commits,
            "phone_merges_per_task": t.phone_merges,
            "bytes_per_task": t.bytes_per_task,
            "datagrams_per_task": t.datagrams_per_task,
            "read_all_tasks": stats_json(&t.read_all),
            "scan_status_and_target": stats_json(&t.scan_status),
            "shell_tool_alone": stats_json(&t.shell),
            "setup_ms": t.setup_ms,
            "goals": {
                "median_ms_max": GOAL_ROUND_TRIP_MEDIAN_MS,
                "met": t.latency.median <= GOAL_ROUND_TRIP_MEDIAN_MS,
            },
        })).collect::<Vec<_>>(),
        "mcp_round_trip": mcp.iter().map(|t| json!({
            "prompt": t.prompt,
            "latency": stats_json(&t.latency),
            "executor": stats_json(&t.executor),
            "bytes_per_task": t.bytes_per_task,
        })).collect::<Vec<_>>(),
        "mcp_extra_median_ms": match mcp {
            [sh, call] => json!({
                "value": call.latency.median - sh.latency.median,
                "max": GOAL_MCP_EXTRA_MS,
                "met": call.latency.median - sh.latency.median <= GOAL_MCP_EXTRA_MS,
            }),
            _ => Json::Null,
        },
    })
}

pub(super) fn report_table(
    props: &[Propagation],
    syncs: &[InitialSync],
    parts: &[Breakdown],
    trips: &[RoundTrip],
    mcp: &[RoundTrip],
) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = load_average().map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
    println!(
        "errand-bench: real redb files, iroh endpoints on 127.0.0.1 (relays off), {cpus} CPUs, \
         load average {load} at the end"
    );
    println!("bytes on the wire: {BYTES_MEANING}");
    // A section left out with --only prints nothing.
    if !props.is_empty() {
        println!();
        table_a(props);
    }
    if !syncs.is_empty() {
        println!();
        table_b(syncs);
    }
    if !parts.is_empty() {
        println!();
        table_c(parts);
    }
    if !trips.is_empty() {
        println!();
        table_d(trips);
    }
    if let [sh, call] = mcp {
        println!();
        println!(
            "(e) round trip of a trivial connector call beside `/sh true`, thread of 0 tasks, as (d)"
        );
        for t in mcp {
            let l = &t.latency;
            println!(
                "    {:<40} {:>4} iters  median {:>7.3}ms  p99 {:>7.3}ms  executor median {:>7.3}ms",
                t.prompt, l.n, l.median, l.p99, t.executor.median
            );
        }
        let extra = call.latency.median - sh.latency.median;
        println!(
            "    /mcp adds {extra:.3} ms to the median (goal: at most {GOAL_MCP_EXTRA_MS} ms): {}",
            verdict(extra <= GOAL_MCP_EXTRA_MS)
        );
    }
}

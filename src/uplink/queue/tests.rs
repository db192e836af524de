//! Tests against real SQLite files in temporary directories.
//!
//! Three tests re-run this test binary as a child process (`kill -9`, `RLIMIT_FSIZE`, and the
//! throughput check, which wants `/proc/self/io` to itself); the child side is an ordinary
//! `#[test]` that returns at once unless its environment variable is set, so it passes
//! trivially in a normal run.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::sqlite::testing::{
    acks_until_kill9, child_test, corrupt_files, garbage, run_under_fsize_limit, truncate_to_half,
    Tmpfs,
};

// ---- helpers ----------------------------------------------------------------------------

fn run_child(short: &str, env: &str, value: &Path) -> Command {
    child_test(module_path!(), short, env, value)
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn wait(rx: oneshot::Receiver<AppendResult>) -> AppendResult {
    rx.blocking_recv().expect("the writer dropped a reply")
}

/// Appends and expects every message stored; returns the ids.
fn append_ok(q: &Queue, msgs: Vec<NewMessage>) -> Vec<u64> {
    wait(q.append(msgs))
        .expect("append")
        .into_iter()
        .map(|r| r.expect("message stored"))
        .collect()
}

/// Waits until everything sent before (acks and expiry included) is committed.
fn barrier(q: &Queue) {
    assert_eq!(wait(q.append(Vec::new())).expect("barrier"), Vec::new());
}

fn read_all(q: &Queue) -> Vec<Stored> {
    block_on(q.read_after(0, usize::MAX)).expect("read")
}

fn ids(rows: &[Stored]) -> Vec<u64> {
    rows.iter().map(|r| r.id).collect()
}

const T0: u64 = 1_700_000_000_000;

/// Message number `n`: topic of 8 bytes, so `size() == 8 + payload_len`.
fn msg(n: u64, payload_len: usize) -> NewMessage {
    NewMessage {
        topic: format!("t/{:06}", n % 1_000_000),
        payload: Bytes::from(vec![(n % 251) as u8; payload_len]),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        received_at_ms: T0 + n,
    }
}

fn bounds(max_bytes: u64, when_full: WhenFull) -> Bounds {
    Bounds {
        max_bytes,
        max_age: Duration::MAX,
        when_full,
    }
}

fn roomy() -> Bounds {
    bounds(1 << 40, WhenFull::DropOldest)
}

// ---- 1. order and ids -------------------------------------------------------------------

#[test]
fn appends_are_read_back_in_order_across_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, opened) = Queue::open(&path, roomy()).expect("open new");
    assert_eq!(
        opened,
        Opened {
            moved_aside: None,
            depth: 0,
            bytes: 0,
            oldest_received_at_ms: None,
            expired: 0
        }
    );

    let mut special = msg(3, 5);
    special.qos = 2;
    special.retain = true;
    special.properties = Bytes::from_static(&[0x23, 0x00, 0x05]);
    special.topic = "sites/line3/devices/boiler/temperature".into();
    let first = append_ok(&q, vec![msg(1, 10), msg(2, 0), special.clone()]);
    assert_eq!(first, vec![1, 2, 3]);
    let second = append_ok(&q, vec![msg(4, 10)]);
    assert_eq!(second, vec![4]);

    let rows = read_all(&q);
    assert_eq!(ids(&rows), vec![1, 2, 3, 4]);
    let s = &rows[2];
    assert_eq!(
        (&s.topic, &s.payload, s.qos, s.retain, &s.properties),
        (
            &special.topic,
            &special.payload,
            2,
            true,
            &special.properties
        )
    );
    assert_eq!(s.received_at_ms, T0 + 3);
    // Paging: read_after(last, n) continues where the previous page ended.
    let page = block_on(q.read_after(1, 2)).expect("page");
    assert_eq!(ids(&page), vec![2, 3]);
    assert!(block_on(q.read_after(4, 10)).expect("past end").is_empty());

    let stats = q.stats();
    let bytes = 18 + 8 + special.size() + 18;
    assert_eq!((stats.depth, stats.bytes, stats.appended), (4, bytes, 4));
    assert_eq!(stats.oldest_received_at_ms, Some(T0 + 1));
    q.close().expect("close");

    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!((opened.depth, opened.bytes), (4, bytes));
    assert_eq!(opened.oldest_received_at_ms, Some(T0 + 1));
    let again = read_all(&q);
    assert_eq!(again, rows, "replay after reopen is identical, in order");
    assert_eq!(q.stats().depth, 4, "gauges are right right after open");
    q.close().expect("close");
}

#[test]
fn ids_are_never_reused_after_deletes_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");
    append_ok(&q, (0..10).map(|n| msg(n, 4)).collect());
    // Delete the newest rows too: without AUTOINCREMENT, SQLite would hand out 10 again.
    q.ack_through(10);
    barrier(&q);
    assert_eq!(q.stats().depth, 0);
    assert_eq!(q.stats().acked, 10);
    assert_eq!(append_ok(&q, vec![msg(10, 4)]), vec![11]);
    q.ack_through(11);
    q.close().expect("close");

    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!(opened.depth, 0, "the ack was committed at close");
    assert_eq!(append_ok(&q, vec![msg(11, 4), msg(12, 4)]), vec![12, 13]);
    assert_eq!(ids(&read_all(&q)), vec![12, 13]);
    q.close().expect("close");
}

#[test]
fn ack_through_deletes_only_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = Queue::open(&dir.path().join("uplink.db"), roomy()).expect("open");
    append_ok(&q, (0..6).map(|n| msg(n, 2)).collect());
    q.ack_through(0); // nothing
    q.ack_through(3);
    q.ack_through(2); // already gone: nothing
    barrier(&q);
    assert_eq!(ids(&read_all(&q)), vec![4, 5, 6]);
    let s = q.stats();
    assert_eq!((s.acked, s.depth, s.bytes), (3, 3, 30));
    assert_eq!(s.oldest_received_at_ms, Some(T0 + 3));
    q.close().expect("close");
}

#[test]
fn an_ack_inside_a_batch_survives_a_restart_and_nothing_acked_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");
    // One append, one transaction: one batch of ids 1..=6.
    append_ok(&q, (0..6).map(|n| msg(n, 2)).collect());
    q.ack_through(4);
    barrier(&q);
    assert_eq!(ids(&read_all(&q)), vec![5, 6]);
    assert_eq!(block_on(q.read_after(2, 1)).expect("read")[0].id, 5);
    q.close().expect("close");
    // What another process sees, and what a restart finds: the watermark was committed.
    let conn = rusqlite::Connection::open(&path).expect("outside connection");
    let t = super::disk::totals(&conn).expect("totals");
    assert_eq!(
        (t.messages, t.bytes, t.first_id, t.last_id),
        (2, 20, Some(5), Some(6))
    );
    drop(conn);
    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!((opened.depth, opened.bytes), (2, 20));
    assert_eq!(opened.oldest_received_at_ms, Some(T0 + 4));
    let rows = read_all(&q);
    assert_eq!(ids(&rows), vec![5, 6]);
    assert_eq!(
        rows[0],
        Stored {
            id: 5,
            topic: "t/000004".into(),
            payload: Bytes::from(vec![4u8; 2]),
            qos: 1,
            retain: false,
            properties: Bytes::new(),
            received_at_ms: T0 + 4,
        }
    );
    q.ack_through(6);
    assert_eq!(append_ok(&q, vec![msg(7, 2)]), vec![7]);
    q.close().expect("close");
}

#[test]
fn a_queue_of_schema_2_is_migrated_with_its_messages_and_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    {
        // A file as the build before batches left it: one row per message, ids by
        // AUTOINCREMENT (the high-water mark 41 is above the last row left, 40).
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                qos INTEGER NOT NULL, retain INTEGER NOT NULL, properties BLOB NOT NULL,
                received_at_ms INTEGER NOT NULL, size INTEGER NOT NULL);
             CREATE INDEX messages_by_age ON messages (received_at_ms);
             CREATE TABLE drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
             INSERT INTO drops VALUES ('full', 7);
             INSERT INTO messages VALUES (38, 'a/1', X'7B7D', 1, 1, X'', 1700000000000, 5);
             INSERT INTO messages VALUES (40, 'a/2', X'3432', 2, 0, X'0102', 1700000000001, 7);
             INSERT INTO messages VALUES (41, 'gone', X'', 1, 0, X'', 1700000000002, 4);
             DELETE FROM messages WHERE id = 41;
             PRAGMA user_version = 2;",
        )
        .expect("schema 2");
    }
    let (q, opened) = Queue::open(&path, roomy()).expect("open migrates");
    assert_eq!((opened.depth, opened.bytes), (2, 12));
    let rows = read_all(&q);
    assert_eq!(ids(&rows), vec![38, 40]);
    assert_eq!(
        (rows[0].topic.as_str(), &rows[0].payload[..], rows[0].retain),
        ("a/1", &b"{}"[..], true)
    );
    assert_eq!((rows[1].qos, &rows[1].properties[..]), (2, &[1u8, 2][..]));
    assert_eq!(
        append_ok(&q, vec![msg(0, 1)]),
        vec![42],
        "ids are never reused"
    );
    assert_eq!(
        block_on(q.query_int("PRAGMA user_version")).expect("version"),
        SCHEMA_VERSION
    );
    assert_eq!(
        block_on(q.query_int("SELECT count FROM drops WHERE reason = 'full'")).expect("drops"),
        7
    );
    q.close().expect("close");
}

#[test]
fn the_writer_connection_is_wal_with_synchronous_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = Queue::open(&dir.path().join("uplink.db"), roomy()).expect("open");
    // synchronous is per connection: FULL = 2, checked on the writer's own connection.
    assert_eq!(
        block_on(q.query_int("PRAGMA synchronous")).expect("pragma"),
        2
    );
    let mode = block_on(
        q.query_int("SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"),
    )
    .expect("journal mode");
    assert_eq!(mode, 1);
    q.close().expect("close");
}

#[test]
fn closed_queue_fails_everything_with_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = Queue::open(&dir.path().join("uplink.db"), roomy()).expect("open");
    let other = q.clone();
    q.close().expect("close");
    let err = wait(other.append(vec![msg(1, 1)])).expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err:?}");
    let err = block_on(other.append_wait(vec![msg(1, 1)]))
        .blocking_recv()
        .expect("reply")
        .expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err:?}");
    let err = block_on(other.read_after(0, 1)).expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err:?}");
    other.ack_through(1); // logged, harmless
    other.close().expect("closing twice is harmless");
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .expect("future schema");
    }
    let err = Queue::open(&path, roomy()).expect_err("must refuse");
    assert!(
        matches!(err, QueueError::UnsupportedSchema { found: 99, .. }),
        "{err:?}"
    );
    assert!(corrupt_files(dir.path()).is_empty());
}

#[test]
fn a_change_by_another_process_is_counted_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");
    // Two appends, two transactions, two batches: 1-3 and 4-5.
    append_ok(&q, (0..3).map(|n| msg(n, 10)).collect());
    append_ok(&q, (3..5).map(|n| msg(n, 10)).collect());
    // What `tidegate queue purge` would do beside the running daemon.
    let conn = rusqlite::Connection::open(&path).expect("outside connection");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    let purged = super::disk::purge_chunk(&conn, 3, 100, true).expect("outside delete");
    conn.execute_batch("COMMIT").expect("commit");
    assert_eq!(purged, (1, 3));
    drop(conn);
    append_ok(&q, vec![msg(5, 10)]);
    let s = q.stats();
    assert_eq!((s.depth, s.bytes), (3, 54));
    assert_eq!(s.oldest_received_at_ms, Some(T0 + 3));
    q.close().expect("close");
}

// ---- 2. group commit --------------------------------------------------------------------

#[test]
fn group_commit_puts_20000_appends_in_few_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");
    let receivers: Vec<_> = (0..20_000).map(|n| q.append(vec![msg(n, 100)])).collect();
    let mut got = Vec::with_capacity(receivers.len());
    for rx in receivers {
        got.extend(
            wait(rx)
                .expect("append")
                .into_iter()
                .map(|r| r.expect("ok")),
        );
    }
    assert_eq!(got, (1..=20_000).collect::<Vec<u64>>(), "ids in call order");
    let stats = q.stats();
    assert_eq!(stats.appended, 20_000, "{stats:?}");
    assert_eq!(stats.overloaded + stats.write_failures, 0, "{stats:?}");
    // 20,000 separate appends, at most 2,000 messages a transaction: ideally 10; each commit
    // fsyncs, so with one transaction per append this would be 20,000.
    assert!(stats.commits <= 200, "not grouped: {stats:?}");
    eprintln!(
        "group commit: 20000 single-message appends in {} transactions",
        stats.commits
    );
    q.close().expect("close");

    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!(opened.depth, 20_000);
    let rows = read_all(&q);
    assert_eq!(ids(&rows), (1..=20_000).collect::<Vec<u64>>());
    for r in &rows {
        assert_eq!(r.payload, msg(r.id - 1, 100).payload);
    }
    q.close().expect("close");
}

#[test]
fn overload_fails_fast_and_append_wait_waits_for_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        max_pending_bytes: 1_000,
        ..QueueOptions::default()
    };
    let (q, _) = Queue::open_with(&dir.path().join("uplink.db"), roomy(), options).expect("open");
    // Each costs 8 + 200 + 64 = 272: the fourth does not fit while three are pending (the
    // writer may already have taken some, so keep going until one is refused).
    let mut receivers = Vec::new();
    let mut refused = false;
    for n in 0..1_000 {
        let mut rx = q.append(vec![msg(n, 200)]);
        if let Ok(Err(e)) = rx.try_recv() {
            assert_eq!(e.kind(), ErrorKind::Overloaded, "{e:?}");
            refused = true;
            break;
        }
        receivers.push(rx);
    }
    assert!(refused, "the pending budget was never exhausted");
    assert_eq!(q.stats().overloaded, 1);
    for rx in receivers {
        wait(rx).expect("accepted appends are stored");
    }
    // append_wait never refuses: 300 appends through a budget of three.
    block_on(async {
        let mut rxs = Vec::new();
        for n in 0..300 {
            rxs.push(q.append_wait(vec![msg(n, 200)]).await);
        }
        for rx in rxs {
            rx.await.expect("reply").expect("stored");
        }
    });
    assert_eq!(q.stats().overloaded, 1);
    q.close().expect("close");
}

// ---- 3. bounds --------------------------------------------------------------------------

#[test]
fn drop_oldest_makes_room_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    // Each message is 8 + 92 = 100 bytes; room for 10.
    let b = bounds(1_000, WhenFull::DropOldest);
    let (q, _) = Queue::open(&path, b.clone()).expect("open");
    append_ok(&q, (0..10).map(|n| msg(n, 92)).collect());
    assert_eq!((q.stats().depth, q.stats().bytes), (10, 1_000));

    assert_eq!(append_ok(&q, vec![msg(10, 92)]), vec![11]);
    let s = q.stats();
    assert_eq!((s.depth, s.bytes, s.dropped_full), (10, 1_000, 1));
    assert_eq!(s.oldest_received_at_ms, Some(T0 + 1));
    assert_eq!(ids(&read_all(&q)), (2..=11).collect::<Vec<u64>>());

    // A bigger message needs several old ones to go: 350 bytes -> 4 rows of 100 (freed 400).
    append_ok(&q, vec![msg(11, 342)]);
    let s = q.stats();
    assert_eq!((s.depth, s.bytes, s.dropped_full), (7, 950, 5));
    assert_eq!(ids(&read_all(&q)), vec![6, 7, 8, 9, 10, 11, 12]);

    // One batch larger than the bound: its own first rows are dropped too; newest win.
    let ids_in = append_ok(&q, (100..115).map(|n| msg(n, 92)).collect());
    assert_eq!(ids_in, (13..28).collect::<Vec<u64>>(), "all answered Ok");
    let s = q.stats();
    assert_eq!((s.depth, s.bytes), (10, 1_000));
    assert_eq!(s.dropped_full, 5 + 7 + 5);
    assert_eq!(ids(&read_all(&q)), (18..28).collect::<Vec<u64>>());

    // Too large on its own: refused, nothing dropped for it.
    let r = wait(q.append(vec![msg(200, 993)])).expect("append");
    assert_eq!(r, vec![Err(Rejected::TooLarge)]);
    let s = q.stats();
    assert_eq!((s.depth, s.rejected, s.dropped_full), (10, 1, 17));
    q.close().expect("close");

    let (q, opened) = Queue::open(&path, b).expect("reopen");
    assert_eq!((opened.depth, opened.bytes), (10, 1_000));
    q.close().expect("close");
}

#[test]
fn reject_new_refuses_and_leaves_the_queue_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = Queue::open(
        &dir.path().join("uplink.db"),
        bounds(1_000, WhenFull::RejectNew),
    )
    .expect("open");
    append_ok(&q, (0..9).map(|n| msg(n, 92)).collect());
    let before = read_all(&q);

    // Per message, in order: 100 fits, 101 does not, a small one still does after that.
    let r = wait(q.append(vec![msg(9, 92), msg(10, 93), msg(11, 0)])).expect("append");
    assert_eq!(r, vec![Ok(10), Err(Rejected::Full), Err(Rejected::Full)]);
    let s = q.stats();
    assert_eq!(
        (s.depth, s.bytes, s.rejected, s.dropped_full),
        (10, 1_000, 2, 0)
    );
    let after = read_all(&q);
    assert_eq!(&after[..9], &before[..], "existing messages untouched");

    // An ack earlier in the same batch makes room for a later append.
    q.ack_through(1);
    let r = wait(q.append(vec![msg(12, 92), msg(13, 0)])).expect("append");
    assert_eq!(r, vec![Ok(11), Err(Rejected::Full)]);

    // Invalid messages are refused whatever the room.
    let mut bad = msg(14, 1);
    bad.qos = 3;
    let mut late = msg(15, 1);
    late.received_at_ms = u64::MAX;
    let r = wait(q.append(vec![bad, late])).expect("append");
    assert_eq!(r, vec![Err(Rejected::Invalid), Err(Rejected::Invalid)]);
    assert_eq!(q.stats().rejected, 5);
    q.close().expect("close");
}

#[test]
fn expiry_drops_old_messages_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let b = Bounds {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(60),
        when_full: WhenFull::DropOldest,
    };
    let (q, _) = Queue::open(&path, b.clone()).expect("open");
    // received_at_ms not in id order: expiry goes by age, wherever the batch sits. One
    // append per message, so one batch per message.
    let ages_s = [600u64, 10, 120, 30, 61, 0];
    let now = crate::clock::now_ms();
    for (i, age) in ages_s.iter().enumerate() {
        append_ok(
            &q,
            vec![NewMessage {
                received_at_ms: now - age * 1_000,
                ..msg(i as u64, 10)
            }],
        );
    }
    assert_eq!(q.stats().oldest_received_at_ms, Some(now - 600_000));
    q.expire(now);
    barrier(&q);
    let s = q.stats();
    assert_eq!((s.dropped_expired, s.depth, s.bytes), (3, 3, 54));
    // The oldest is that of the first batch left (id 2, 10 s); only a clock set back makes
    // a later one older (id 4, 30 s).
    assert_eq!(s.oldest_received_at_ms, Some(now - 10_000));
    assert_eq!(ids(&read_all(&q)), vec![2, 4, 6]);
    // A clock that is behind expires nothing.
    q.expire(now - 3_600_000);
    barrier(&q);
    assert_eq!(q.stats().dropped_expired, 3);
    // The unit of expiry is a batch (the messages of one transaction, received within
    // milliseconds of each other unless the clock was stepped): one that still holds a
    // fresh message stays whole.
    let old_one = NewMessage {
        received_at_ms: now - 600_000,
        ..msg(7, 10)
    };
    let fresh = NewMessage {
        received_at_ms: now,
        ..msg(8, 10)
    };
    assert_eq!(append_ok(&q, vec![old_one, fresh]), vec![7, 8]);
    q.expire(now);
    barrier(&q);
    assert_eq!((q.stats().dropped_expired, q.stats().depth), (3, 5));
    q.close().expect("close");

    // At open, with the system clock: a 10-minute-old message goes, fresh ones stay.
    let (q, _) = Queue::open(&path, b.clone()).expect("reopen");
    append_ok(
        &q,
        vec![NewMessage {
            received_at_ms: crate::clock::now_ms() - 600_000,
            ..msg(9, 10)
        }],
    );
    q.close().expect("close");
    let (q, opened) = Queue::open(&path, b).expect("reopen 2");
    assert_eq!((opened.expired, opened.depth), (1, 5));
    assert_eq!(q.stats().dropped_expired, 1);
    q.close().expect("close");
}

// ---- 4. corruption ----------------------------------------------------------------------

fn assert_recovered(dir: &Path, path: &Path, opened: &Opened, q: Queue) {
    let moved = opened.moved_aside.clone().expect("moved_aside must be set");
    assert!(moved.exists(), "{} must exist", moved.display());
    assert_eq!(corrupt_files(dir), vec![moved.clone()]);
    assert!(moved
        .file_name()
        .expect("name")
        .to_string_lossy()
        .starts_with("uplink.db.corrupt-"));
    assert_eq!((opened.depth, opened.bytes), (0, 0));

    // The new queue works and keeps what is written to it; ids start again at 1.
    assert_eq!(append_ok(&q, vec![msg(1, 4), msg(2, 4)]), vec![1, 2]);
    q.close().expect("close");
    let (q, opened) = Queue::open(path, roomy()).expect("reopen");
    assert_eq!(opened.moved_aside, None);
    assert_eq!(ids(&read_all(&q)), vec![1, 2]);
    q.close().expect("close");
}

#[test]
fn a_file_of_garbage_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let garbage = garbage(65_536);
    std::fs::write(&path, &garbage).expect("write garbage");
    std::fs::write(dir.path().join("uplink.db-wal"), b"stale wal").expect("stale wal");

    let (q, opened) = Queue::open(&path, roomy()).expect("open must recover");
    let moved = opened.moved_aside.clone().expect("moved");
    assert_eq!(std::fs::read(&moved).expect("read moved"), garbage);
    // The stale WAL is gone from the new database's path: moved along, or (as here, where
    // SQLite opened it) checkpointed and deleted by SQLite when the failed connection closed.
    let wal = std::fs::read(dir.path().join("uplink.db-wal")).unwrap_or_default();
    assert_ne!(wal, b"stale wal");
    assert_recovered(dir.path(), &path, &opened, q);
}

#[test]
fn a_truncated_database_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");
    append_ok(&q, (0..300).map(|n| msg(n, 2_000)).collect());
    q.close().expect("close");
    assert!(
        !dir.path().join("uplink.db-wal").exists()
            || std::fs::metadata(dir.path().join("uplink.db-wal"))
                .expect("wal")
                .len()
                == 0,
        "close must checkpoint the WAL away"
    );
    let half = truncate_to_half(&path);

    let (q, opened) = Queue::open(&path, roomy()).expect("open must recover");
    let moved = opened.moved_aside.clone().expect("moved");
    assert_eq!(std::fs::metadata(&moved).expect("meta").len(), half);
    assert_recovered(dir.path(), &path, &opened, q);
}

// ---- 5. kill -9 -------------------------------------------------------------------------

const KILL9_ENV: &str = "TIDEGATE_UPLINKQ_TEST_KILL9_DB";
const KILL9_BATCH: u64 = 10;

/// The `victim` message number `seq`, identifiable after the crash.
fn victim(seq: u64) -> NewMessage {
    NewMessage {
        topic: "victim".into(),
        payload: Bytes::from(format!("{seq:08}:{}", "v".repeat(180))),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        received_at_ms: T0 + seq,
    }
}

/// Child side of `acknowledged_appends_survive_kill_9`: appends numbered messages ten at a
/// time, waits for each commit and prints every acknowledged `seq id`. Does nothing unless
/// the variable is set.
#[test]
fn kill9_child_writer() {
    let Some(path) = std::env::var_os(KILL9_ENV) else {
        return;
    };
    let (q, _) = Queue::open(Path::new(&path), roomy()).expect("child open");
    // Background noise so the writer is busy with larger transactions when the kill lands.
    let noise = q.clone();
    std::thread::spawn(move || {
        for i in 0u64.. {
            // Fire and forget: nobody waits for the noise (nor minds an Overloaded).
            drop(noise.append(vec![NewMessage {
                topic: "noise".into(),
                ..msg(i, 300)
            }]));
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(120); // stop by itself if orphaned
    let mut seq = 0;
    while Instant::now() < deadline {
        let ids = append_ok(&q, (seq..seq + KILL9_BATCH).map(victim).collect());
        for (s, id) in (seq..).zip(ids) {
            writeln!(out, "ack {s} {id}").expect("stdout");
        }
        out.flush().expect("flush");
        seq += KILL9_BATCH;
    }
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    let stderr_path = dir.path().join("child.stderr");
    let child = run_child("kill9_child_writer", KILL9_ENV, &path);
    let acked: Vec<(u64, u64)> = acks_until_kill9(child, &stderr_path, 2_000, |s| {
        let (seq, id) = s.split_once(' ')?;
        Some((seq.parse().ok()?, id.trim().parse().ok()?))
    });
    let (highest_seq, _) = *acked.iter().max().expect("acks");

    let (q, opened) = Queue::open(&path, roomy()).expect("reopen after kill -9");
    assert_eq!(opened.moved_aside, None);
    let rows = read_all(&q);
    assert_eq!(opened.depth, rows.len() as u64);
    // Every acknowledged message is there, with the id it was acknowledged with.
    let by_id: std::collections::HashMap<u64, &Stored> = rows.iter().map(|r| (r.id, r)).collect();
    for (seq, id) in &acked {
        let row = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acked id {id} lost"));
        assert_eq!(row.payload, victim(*seq).payload, "id {id}");
    }
    // In order, without gaps: the victim rows are exactly seq 0..n in id order, n > highest.
    let seqs: Vec<u64> = rows
        .iter()
        .filter(|r| r.topic == "victim")
        .map(|r| {
            let text = std::str::from_utf8(&r.payload).expect("utf-8");
            text[..8].parse().expect("seq")
        })
        .collect();
    assert!(
        seqs.len() as u64 > highest_seq,
        "lost acknowledged appends: {} rows, highest acked seq {highest_seq}",
        seqs.len()
    );
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(seqs.len() as u64 % KILL9_BATCH, 0, "an append was torn");
    eprintln!(
        "kill -9: {} acked, {} victim rows and {} rows in all after reopen",
        acked.len(),
        seqs.len(),
        rows.len()
    );
    q.close().expect("close");
}

// ---- 6. write failure and recovery ------------------------------------------------------

const FSIZE_ENV: &str = "TIDEGATE_UPLINKQ_TEST_FSIZE_DB";
const FSIZE_MARKER: &str = "FSIZE-CHILD-OK";

/// Child side of `a_write_past_ulimit_f_fails_its_batch_and_later_writes_succeed`; runs under
/// `ulimit -f` (RLIMIT_FSIZE, 1-2 MiB) with SIGXFSZ ignored, so growing a file past the limit
/// fails the write(2) with EFBIG instead of killing the process.
#[test]
fn fsize_child_writer() {
    let Some(path) = std::env::var_os(FSIZE_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let (q, _) = Queue::open(&path, roomy()).expect("child open");
    assert_eq!(
        append_ok(&q, (0..5).map(|n| msg(n, 64)).collect()),
        vec![1, 2, 3, 4, 5]
    );

    // 8 MiB in one append: far past the limit.
    let err = wait(q.append((100..164).map(|n| msg(n, 128 * 1024)).collect()))
        .expect_err("an append past RLIMIT_FSIZE must fail");
    assert!(
        matches!(err.kind(), ErrorKind::Io | ErrorKind::DiskFull),
        "{err:?}"
    );
    let s = q.stats();
    assert_eq!((s.write_failures, s.failed_messages), (1, 64), "{s:?}");
    assert_eq!((s.depth, s.appended), (5, 5), "gauges unchanged: {s:?}");

    // The thread still serves reads and appends, and the ids go on without a gap.
    assert_eq!(read_all(&q).len(), 5);
    assert_eq!(
        append_ok(&q, (5..10).map(|n| msg(n, 64)).collect()),
        vec![6, 7, 8, 9, 10]
    );
    q.close().expect("close");
    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!(opened.depth, 10);
    assert_eq!(ids(&read_all(&q)), (1..=10).collect::<Vec<u64>>());
    q.close().expect("close");
    println!("{FSIZE_MARKER} {}", err.kind());
}

#[test]
fn a_write_past_ulimit_f_fails_its_batch_and_later_writes_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uplink.db");
    run_under_fsize_limit(
        module_path!(),
        "fsize_child_writer",
        FSIZE_ENV,
        &path,
        FSIZE_MARKER,
    );
}

/// A real ENOSPC: the queue on a 2 MiB tmpfs that the test fills up, then frees. Needs
/// `mount` (root or CAP_SYS_ADMIN); where that is not allowed it prints why and returns —
/// unless CI=true, where it fails. The `ulimit -f` test covers the same path without mount.
#[test]
fn disk_full_fails_appends_until_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(tmpfs) = Tmpfs::mount(dir.path(), "disk_full_fails_appends_until_space_returns")
    else {
        return;
    };
    let mnt = tmpfs.path().to_path_buf();
    let path = mnt.join("uplink.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open on tmpfs");
    assert_eq!(append_ok(&q, vec![msg(0, 64)]), vec![1]);

    // Fill the file system to the last byte.
    let filler_path = mnt.join("filler");
    let mut filler = std::fs::File::create(&filler_path).expect("filler");
    for chunk in [65_536usize, 4_096, 1] {
        while filler.write_all(&vec![0xAA; chunk]).is_ok() {}
    }
    let _ = filler.sync_all();

    let fat =
        |from: u64| -> Vec<NewMessage> { (from..from + 20).map(|n| msg(n, 8 * 1024)).collect() };
    let err = wait(q.append(fat(1))).expect_err("an append on a full disk must fail");
    assert_eq!(err.kind(), ErrorKind::DiskFull, "{err:?}");
    let err = wait(q.append(fat(1))).expect_err("still full");
    assert_eq!(err.kind(), ErrorKind::DiskFull, "{err:?}");
    let s = q.stats();
    assert_eq!((s.write_failures, s.failed_messages), (2, 40), "{s:?}");
    assert_eq!((s.depth, s.appended), (1, 1), "{s:?}");
    // Still serving: the committed message reads back, acks queue up harmlessly.
    assert_eq!(ids(&read_all(&q)), vec![1]);

    drop(filler);
    std::fs::remove_file(&filler_path).expect("free space");
    let got = append_ok(&q, fat(1));
    assert_eq!(
        got,
        (2..22).collect::<Vec<u64>>(),
        "ids go on without a gap"
    );
    assert_eq!(q.stats().depth, 21);
    q.close().expect("close");

    let (q, opened) = Queue::open(&path, roomy()).expect("reopen");
    assert_eq!(opened.depth, 21);
    assert_eq!(ids(&read_all(&q)), (1..22).collect::<Vec<u64>>());
    q.close().expect("close");
}

// ---- 7. throughput (printed, not asserted) ----------------------------------------------

const BENCH_ENV: &str = "TIDEGATE_UPLINKQ_TEST_BENCH_DIR";
const BENCH_MESSAGES: u64 = 100_000;

/// `(wchar, write_bytes)` of this process: bytes handed to write(2), and bytes sent to the
/// block device.
fn proc_io() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("wchar:")?, field("write_bytes:")?))
}

fn bench_message(n: u64) -> NewMessage {
    NewMessage {
        topic: format!("sites/line3/devices/d{:03}/t", n % 100),
        payload: Bytes::from(vec![b'x'; 100]),
        ..msg(n, 0)
    }
}

/// Child side of `throughput_is_printed`, alone in its process so `/proc/self/io` is its own.
#[test]
fn bench_child() {
    let Some(dir) = std::env::var_os(BENCH_ENV) else {
        return;
    };
    let path = Path::new(&dir).join("bench.db");
    let (q, _) = Queue::open(&path, roomy()).expect("open");

    // Load: one single-message append per message, as many devices publishing at once.
    let io0 = proc_io();
    let started = Instant::now();
    block_on(async {
        let mut rxs = Vec::with_capacity(BENCH_MESSAGES as usize);
        for n in 0..BENCH_MESSAGES {
            rxs.push(q.append_wait(vec![bench_message(n)]).await);
        }
        for rx in rxs {
            rx.await.expect("reply").expect("append");
        }
    });
    let elapsed = started.elapsed();
    let io1 = proc_io();
    let s = q.stats();
    let n = BENCH_MESSAGES as f64;
    println!(
        "BENCH loaded: {} single-message appends of 100-byte payloads in {:.2} s = {:.0} msg/s; \
         {} commits ({:.0} msg/commit); last commit {} us",
        BENCH_MESSAGES,
        elapsed.as_secs_f64(),
        n / elapsed.as_secs_f64(),
        s.commits,
        n / s.commits as f64,
        s.last_commit_latency.as_micros()
    );
    if let (Some((w0, b0)), Some((w1, b1))) = (io0, io1) {
        println!(
            "BENCH loaded: written per message: {:.0} bytes via write(2), {:.0} bytes to the block device",
            (w1 - w0) as f64 / n,
            (b1 - b0) as f64 / n
        );
    }
    q.close().expect("close");
    let db = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "BENCH at rest: database {} bytes after close = {:.0} bytes per message (message size {})",
        db,
        db as f64 / n,
        bench_message(0).size()
    );

    // Trickle: one append at a time, each waited for, so every message is its own commit.
    let (q, _) = Queue::open(&path, roomy()).expect("reopen");
    let trickle = 500u64;
    let io0 = proc_io();
    let started = Instant::now();
    for n in 0..trickle {
        append_ok(&q, vec![bench_message(n)]);
    }
    let elapsed = started.elapsed();
    let io1 = proc_io();
    println!(
        "BENCH trickle: {trickle} appends one commit each in {:.2} s = {:.0} msg/s ({:.2} ms per commit)",
        elapsed.as_secs_f64(),
        trickle as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1_000.0 / trickle as f64
    );
    if let (Some((w0, b0)), Some((w1, b1))) = (io0, io1) {
        println!(
            "BENCH trickle: written per message: {:.0} bytes via write(2), {:.0} bytes to the block device",
            (w1 - w0) as f64 / trickle as f64,
            (b1 - b0) as f64 / trickle as f64
        );
    }
    q.close().expect("close");
}

#[test]
fn throughput_is_printed() {
    // On the same file system as the other tests' temp dirs; /tmp is a real disk here, a
    // tmpfs /tmp would make fsync free and the numbers meaningless.
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run_child("bench_child", BENCH_ENV, dir.path())
        .output()
        .expect("run bench child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench child failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let profile = if cfg!(debug_assertions) {
        "debug build: SQLite unoptimised"
    } else {
        "release build"
    };
    eprintln!("throughput ({profile}):");
    // The harness prints "test ... " before the child's first line, on the same line.
    for line in stdout
        .lines()
        .filter_map(|l| l.find("BENCH").map(|i| &l[i..]))
    {
        eprintln!("  {line}");
    }
}

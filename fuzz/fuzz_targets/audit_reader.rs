//! The agent's on-disk readers: the audit log's chain verification and the reader that
//! finds where to continue the chain (agent/src/audit.rs), and the grant journal's replay
//! (agent/src/journal.rs). The input is a file's contents.
//!
//! Properties: any contents give a result or an error, never a panic, a hang or an
//! allocation beyond the file's size. A log that verifies is a gapless chain whose head is
//! its last record, which is also where the writer continues; verifying it as two files (a
//! rotation at any line) gives the same verdict. Journal replay is idempotent: replaying
//! the part kept after cutting a torn tail gives the same grants and nothing more to cut.
#![no_main]

use jitgate_agent::audit::{Chain, GENESIS, last_good};
use jitgate_agent::journal::Replay;
use libfuzzer_sys::fuzz_target;

fn audit(data: &[u8]) {
    let mut one = Chain::new();
    let verdict = one.feed("audit.log", data).map(|()| one.finish(1));
    let (good_end, last) = last_good(data);
    assert!(good_end <= data.len());
    if let Ok(v) = &verdict {
        match (v.first_seq, v.last_seq) {
            (Some(first), Some(last_seq)) => {
                assert_eq!(last_seq - first + 1, v.records, "{v:?}");
            }
            (None, None) => {
                assert_eq!(v.records, 0);
                assert_eq!(v.head, GENESIS);
            }
            _ => panic!("half-set seq range: {v:?}"),
        }
        // Every line verified, so the writer continues from the last one (when it ends in
        // a newline; a torn last line is cut by the writer, though it verifies).
        if data.ends_with(b"\n") {
            assert_eq!(good_end, data.len());
            assert_eq!(
                last.map(|l| l.hash),
                (v.records > 0).then(|| v.head.clone())
            );
        }
    }
    // The same lines split over two files, as after a rotation.
    if let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let cut = nl + 1;
        let mut two = Chain::new();
        let split = two
            .feed("audit.log.1", &data[..cut])
            .and_then(|()| two.feed("audit.log", &data[cut..]))
            .map(|()| two.finish(1));
        assert_eq!(split.is_ok(), verdict.is_ok(), "{split:?} vs {verdict:?}");
        if let (Ok(a), Ok(b)) = (&split, &verdict) {
            assert_eq!(a, b);
        }
    }
}

fn journal(data: &[u8]) {
    let (replay, good_end) = Replay::read(data).expect("reading a slice cannot fail");
    assert!(good_end as usize <= data.len());
    assert_eq!(replay.truncated_bytes, data.len() as u64 - good_end);
    let kept = &data[..good_end as usize];
    let (again, end) = Replay::read(kept).expect("reading a slice cannot fail");
    assert_eq!(end, good_end);
    assert_eq!(again.truncated_bytes, 0);
    assert_eq!(again.grants, replay.grants);
    assert_eq!(again.corrupt_records, replay.corrupt_records);
}

fuzz_target!(|data: &[u8]| {
    audit(data);
    journal(data);
});

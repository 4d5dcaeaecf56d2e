//! The grant journal: the crash-safe record of the grant table.
//!
//! An append-only file of lines `CRC32 JSON\\n`. A grant is acknowledged only after its
//! record is fsynced. On start the journal is replayed; a torn last record (a crash during
//! the write) is detected by its CRC or missing newline and cut off, with no earlier record
//! lost. After replay the journal is compacted to the replay high-water mark and the live
//! grants and bookings (write, fsync, rename).

use crate::grant::{GrantId, GrantRecord};
use crate::schedule::Booking;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const FILE: &str = "grants.journal";

/// Why a grant left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    Expired,
    Revoked,
    /// Replaced by reconciliation with the controller.
    Reconciled,
    /// A booking that could not be put into the maps at its start.
    OpenFailed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A grant in the maps (for a booking: it opened).
    Grant(GrantRecord),
    Remove {
        id: GrantId,
        reason: RemoveReason,
    },
    /// A booked grant waiting for its start, not in the maps. An agent that predates
    /// bookings skips the record as unreadable: it never opens it early.
    Scheduled(Booking),
    /// The replay high-water mark rose to `seq`: made durable with the grant records of the
    /// same batch (one fsync), not by rewriting `channel.json` for every grant. Replay takes
    /// the highest; an agent that predates it skips the record as unreadable.
    HighWater {
        seq: u64,
    },
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub grants: BTreeMap<GrantId, GrantRecord>,
    /// Bookings that had not opened.
    pub scheduled: BTreeMap<GrantId, Booking>,
    /// Bytes cut off the end (a torn last record).
    pub truncated_bytes: u64,
    /// Records in the middle that failed their check and were skipped.
    pub corrupt_records: usize,
    /// The highest replay high-water mark recorded (0: none).
    pub high_water: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

fn encode(r: &Record) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(r).map_err(io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode(line: &[u8]) -> Option<Record> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    if line.get(8) != Some(&b' ') {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

impl Replay {
    /// Replays journal lines from `r`. Returns what they leave in the table and the end of
    /// the last good record (what follows it is a torn tail, counted in `truncated_bytes`).
    /// Separate from [`Journal::open`] so that it can be tested and fuzzed without files.
    pub fn read(mut reader: impl BufRead) -> io::Result<(Replay, u64)> {
        let mut replay = Replay::default();
        let mut offset = 0u64;
        let mut good_end = 0u64;
        let mut pending_bad = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            let complete = buf.last() == Some(&b'\n');
            match decode(buf.strip_suffix(b"\n").unwrap_or(&buf)).filter(|_| complete) {
                Some(rec) => {
                    replay.corrupt_records += pending_bad;
                    pending_bad = 0;
                    good_end = offset;
                    match rec {
                        Record::Grant(g) => {
                            replay.scheduled.remove(&g.id);
                            replay.grants.insert(g.id, g);
                        }
                        Record::Remove { id, .. } => {
                            replay.grants.remove(&id);
                            replay.scheduled.remove(&id);
                        }
                        Record::Scheduled(b) => {
                            replay.scheduled.insert(b.grant.id, b);
                        }
                        Record::HighWater { seq } => {
                            replay.high_water = replay.high_water.max(seq);
                        }
                    }
                }
                None => pending_bad += 1,
            }
        }
        replay.truncated_bytes = offset - good_end;
        Ok((replay, good_end))
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, replays it, repairs a torn tail and
    /// compacts it.
    pub fn open(dir: &Path) -> io::Result<(Journal, Replay)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut replay = Replay::default();
        if path.exists() {
            let f = File::open(&path)?;
            let len = f.metadata()?.len();
            let good_end;
            (replay, good_end) = Replay::read(BufReader::new(f))?;
            // Bad records after the last good one are a torn tail: cut them off.
            if good_end < len {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_end)?;
                f.sync_all()?;
            }
        }
        let mut j = Journal {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
        };
        j.compact(
            (replay.high_water > 0)
                .then_some(Record::HighWater {
                    seq: replay.high_water,
                })
                .into_iter()
                .chain(replay.grants.values().cloned().map(Record::Grant))
                .chain(replay.scheduled.values().cloned().map(Record::Scheduled)),
        )?;
        Ok((j, replay))
    }

    /// Appends records and makes them durable (one fsync for the whole batch).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            buf.extend(encode(r)?);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Rewrites the journal to exactly `live` (the high-water mark, grant and booking
    /// records), atomically.
    pub fn compact(&mut self, live: impl IntoIterator<Item = Record>) -> io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            for r in live {
                f.write_all(&encode(&r)?)?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // Appends go to the new file from here on, whatever the directory's fsync says:
        // otherwise a failed fsync would leave them going to the unlinked old one.
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.file.seek(SeekFrom::End(0))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grant::Origin;

    /// A grant record numbered `n` (also used by the writer's tests).
    pub(crate) fn grant(n: u8) -> GrantRecord {
        GrantRecord {
            id: GrantId::from_bytes([n; 16]),
            protocol: jitgate_common::Protocol::Tcp,
            port: jitgate_common::Port::new(22).unwrap(),
            source: "203.0.113.0/24".parse().unwrap(),
            start: time::OffsetDateTime::UNIX_EPOCH,
            end: time::OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
            requester: "root".into(),
            justification: "test".into(),
            origin: Origin::Local,
            boot_id: std::sync::Arc::from("b"),
            expires_boot_ns: 42,
            // Records with and without a limit (absent from older journals).
            max_connections: jitgate_common::MaxConnections::new(u32::from(n) % 3),
        }
    }

    #[test]
    fn replay_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, r) = Journal::open(dir.path()).unwrap();
            assert!(r.grants.is_empty());
            j.append(&[Record::Grant(grant(1)), Record::Grant(grant(2))])
                .unwrap();
            j.append(&[Record::Remove {
                id: grant(1).id,
                reason: RemoveReason::Revoked,
            }])
            .unwrap();
            j.append(&[Record::Grant(grant(3))]).unwrap();
        }
        // Tear the last record in half.
        let path = dir.path().join(FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 20).unwrap();
        drop(f);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            r.grants.keys().copied().collect::<Vec<_>>(),
            vec![grant(2).id]
        );
        assert!(r.truncated_bytes > 0);
        // After compaction the journal holds exactly the live grant.
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(r.grants.values().next(), Some(&grant(2)));
    }

    #[test]
    fn a_booking_replays_as_scheduled_until_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let booking = |n| Booking {
            grant: grant(n),
            opens_boot_ns: 7,
            seq: 1,
        };
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.append(&[
                Record::Scheduled(booking(1)),
                Record::Scheduled(booking(2)),
                Record::Scheduled(booking(3)),
            ])
            .unwrap();
            // 1 opens; 2 is revoked before its start; 3 still waits.
            j.append(&[
                Record::Grant(grant(1)),
                Record::Remove {
                    id: grant(2).id,
                    reason: RemoveReason::Revoked,
                },
            ])
            .unwrap();
        }
        for _ in 0..2 {
            // Twice: the compacted journal says the same.
            let (_, r) = Journal::open(dir.path()).unwrap();
            assert_eq!(
                r.grants.keys().copied().collect::<Vec<_>>(),
                vec![grant(1).id]
            );
            assert_eq!(
                r.scheduled.values().cloned().collect::<Vec<_>>(),
                vec![booking(3)]
            );
        }
    }

    #[test]
    fn the_highest_high_water_mark_survives_replay_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, r) = Journal::open(dir.path()).unwrap();
            assert_eq!(r.high_water, 0);
            j.append(&[Record::HighWater { seq: 7 }, Record::Grant(grant(1))])
                .unwrap();
            // Out of order (two batches raced): the highest counts, not the last.
            j.append(&[Record::HighWater { seq: 9 }]).unwrap();
            j.append(&[Record::HighWater { seq: 8 }]).unwrap();
        }
        for _ in 0..2 {
            // Twice: the compacted journal keeps it.
            let (_, r) = Journal::open(dir.path()).unwrap();
            assert_eq!(r.high_water, 9);
            assert_eq!(r.grants.len(), 1);
        }
    }

    #[test]
    fn flipped_byte_in_the_middle_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.append(&[Record::Grant(grant(1))]).unwrap();
            j.append(&[Record::Grant(grant(2))]).unwrap();
        }
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.corrupt_records, 1);
        assert_eq!(r.grants.len(), 1);
    }
}
